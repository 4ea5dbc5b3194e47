"""The grading loop every backend shares: judge a chunk, read each rating, judge again what has
none, and hand the chunk's results on to be written.

A *generator* is any callable ``generate(requests, retry) -> texts``, one judgment text per
request in order: the local model (``local.LocalJudge``), an OpenAI-compatible endpoint
(``endpoint.EndpointJudge``) or, in tests, a plain function. ``retry`` is True for the second
attempt at judgments whose first text held no parsable rating: the endpoint sends the identical
request again; the local judge, greedy and so bound to repeat itself, samples instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from pefteval.judging.prompts import UNRATED, JudgeRequest, parse_rating

Generator = Callable[[Sequence[JudgeRequest], bool], Sequence[str]]
ATTEMPTS = 2  # a judgment without a parsable rating is judged once more, then filed as unrated (-1)


@dataclass(frozen=True)
class Graded:
    """A finished judgment: the text that decided it, its score (UNRATED, -1, when no attempt held a
    rating) and how many attempts it took."""

    request: JudgeRequest
    judgment: str
    score: float
    attempts: int

    @property
    def rated(self) -> bool:
        return self.score != UNRATED


def _texts(generate: Generator, requests: Sequence[JudgeRequest], retry: bool) -> list[str]:
    texts = list(generate(requests, retry))
    if len(texts) != len(requests) or not all(isinstance(t, str) for t in texts):
        raise TypeError(f"a judgment generator must return one string per request: got {len(texts)} item(s) "
                        f"for {len(requests)} request(s)")
    return texts


def grade(requests: Sequence[JudgeRequest], generate: Generator, chunk_size: int) -> Iterator[list[Graded]]:
    """The judgments of ``requests``, ``chunk_size`` at a time (each chunk's unrated ones retried
    before it is yielded), so that the caller can write each chunk as it is done."""
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    for start in range(0, len(requests), chunk_size):
        chunk = list(requests[start:start + chunk_size])
        texts = _texts(generate, chunk, retry=False)
        scores = [parse_rating(t) for t in texts]
        attempts = [1] * len(chunk)
        again = [i for i, s in enumerate(scores) if s is None]
        if again:
            for i, text in zip(again, _texts(generate, [chunk[i] for i in again], retry=True)):
                texts[i], scores[i], attempts[i] = text, parse_rating(text), 2
        yield [Graded(r, t, UNRATED if s is None else s, a) for r, t, s, a in zip(chunk, texts, scores, attempts)]
