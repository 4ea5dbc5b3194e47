"""The judge's sanity check, run with every judging: can this judge tell good answers from bad ones?

On the first ``sanity_questions`` questions of ``reference_answer/gpt-4.jsonl`` (file order), with
the general ``single-v1`` prompt on turn 1, the judge rates (a) the GPT-4 reference answer, (b) an
empty answer and (c) an off-topic answer: the reference answer of the next question in the file.
Verdict (``RULE``): "can tell" when the references' mean rating exceeds the empty answers' mean
and the off-topic answers' mean by at least ``MARGIN`` (1 point of 10) each, and at least half of
the reference answers got a parsable rating; otherwise "cannot tell", and the judge's MT-Bench
scores should not be trusted.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pefteval.errors import DataError
from pefteval.judging.grading import Graded
from pefteval.judging.identity import cache_key
from pefteval.judging.prompts import UNRATED, JudgeRequest, user_prompt
from pefteval.tasks.mt_bench import JudgePrompt, MTBenchQuestion

CHECK_PROMPT = "single-v1"
KINDS = ("reference", "empty", "off_topic")
MARGIN = 1.0
CAN_TELL, CANNOT_TELL = "can tell", "cannot tell"
RULE = (f"'{CAN_TELL}' when the mean rating of the GPT-4 reference answers exceeds the mean rating of the empty "
        f"answers and that of the off-topic answers (another question's reference answer) by at least {MARGIN:g} "
        f"point (of 10) each, and at least half of the reference answers got a parsable rating; otherwise "
        f"'{CANNOT_TELL}' (the judge's scores should not be trusted). All rated with the '{CHECK_PROMPT}' prompt on "
        "turn 1; unrated answers count in no mean.")


@dataclass(frozen=True)
class CheckItem:
    """One rating of the check: ``kind`` of answer to question ``question_id``, taken from the
    reference answer of ``answer_from`` (None for the empty answer)."""

    question_id: int
    kind: str
    answer_from: int | None
    request: JudgeRequest


def check_items(questions: Sequence[MTBenchQuestion], references: Mapping[int, Sequence[str]],
                prompts: Mapping[str, JudgePrompt], n: int, identity: dict[str, Any]) -> tuple[list[CheckItem], str]:
    """The check's ratings for the first ``n`` reference answers (at most as many as there are), and
    a note when fewer than ``n`` could be used. ``identity`` is the judge's, with the check's prompt."""
    by_id = {q.question_id: q for q in questions}
    refs = [qid for qid in references if qid in by_id and references[qid]]
    if len(refs) < 2:
        raise DataError("the judge's sanity check needs at least two questions with GPT-4 reference answers "
                        "(reference_answer/gpt-4.jsonl); FastChat's file has 30")
    note = ""
    if n > len(refs):
        note = f"sanity check: {n} questions asked for, {len(refs)} have reference answers; using {len(refs)}"
        n = len(refs)
    prompt = prompts[CHECK_PROMPT]
    items = []
    for i, qid in enumerate(refs[:n]):
        other = refs[(i + 1) % len(refs)]
        answers = {"reference": (qid, references[qid][0]), "empty": (None, ""),
                   "off_topic": (other, references[other][0])}
        for kind in KINDS:
            source, text = answers[kind]
            user = user_prompt(prompt, by_id[qid], [text], 1)
            request = JudgeRequest(f"judge-check:{kind}", qid, by_id[qid].category, 1, CHECK_PROMPT,
                                   prompt.system_prompt, user, cache_key(identity, prompt.system_prompt, user))
            items.append(CheckItem(qid, kind, source, request))
    return items, note


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def verdict(ratings: Mapping[str, Sequence[float | None]]) -> dict[str, Any]:
    """The check's means, unrated counts and verdict from each kind's ratings (None: unrated)."""
    rated = {k: [float(s) for s in ratings.get(k, ()) if s is not None and math.isfinite(s)] for k in KINDS}
    means = {k: _mean(rated[k]) for k in KINDS}
    unrated = {k: len(ratings.get(k, ())) - len(rated[k]) for k in KINDS}
    n_refs = len(ratings.get("reference", ()))
    enough = n_refs > 0 and 2 * len(rated["reference"]) >= n_refs
    ref = means["reference"]
    gaps = {k: (None if ref is None or means[k] is None else ref - means[k]) for k in ("empty", "off_topic")}
    tells = enough and all(g is not None and g >= MARGIN for g in gaps.values())
    return {"means": means, "unrated": unrated, "gaps": gaps, "verdict": CAN_TELL if tells else CANNOT_TELL,
            "can_tell": tells}


INCOMPLETE = "incomplete"


def check_result(identity: dict[str, Any], items: Sequence[CheckItem], graded: Mapping[str, Graded | dict[str, Any]],
                 tstamp: float, note: str = "") -> dict[str, Any]:
    """The judge_check file's content: the judge, every rating made (``graded``: cache key -> a Graded
    or an earlier item of the file), the means, unrated counts, the verdict and the rule. While some
    item is not rated yet (a judging stopped part way) ``complete`` is False and the verdict "incomplete"."""
    rows, ratings = [], {k: [] for k in KINDS}
    for item in items:
        g = graded.get(item.request.cache_key)
        if g is None:
            continue
        judgment, score, attempts = ((g.judgment, g.score, g.attempts) if isinstance(g, Graded)
                                     else (g["judgment"], g["score"], g["attempts"]))
        rows.append({"question_id": item.question_id, "kind": item.kind, "answer_from": item.answer_from,
                     "prompt": item.request.prompt_name, "user_prompt": item.request.user, "judgment": judgment,
                     "score": score, "attempts": attempts, "cache_key": item.request.cache_key})
        ratings[item.kind].append(None if score == UNRATED else score)
    result = {"judge": identity, "questions": list(dict.fromkeys(i.question_id for i in items)), "items": rows,
              **verdict(ratings), "rule": RULE, "complete": len(rows) == len(items), "tstamp": tstamp}
    if not result["complete"]:
        result.update(verdict=INCOMPLETE, can_tell=False)
    if note:
        result["note"] = note
    return result


def cached_items(previous: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """cache key -> item of an earlier check file (for judging only what is new)."""
    if not previous or not isinstance(previous.get("items"), list):
        return {}
    return {row["cache_key"]: row for row in previous["items"]
            if isinstance(row, dict) and isinstance(row.get("cache_key"), str)
            and {"judgment", "score", "attempts"} <= row.keys()}


def check_line(verdict_of: dict[str, Any], say: Callable[[str], None]) -> None:
    """One line saying the check's outcome."""
    means = verdict_of["means"]
    shown = ", ".join(f"{k} {'-' if means[k] is None else f'{means[k]:.2f}'}" for k in KINDS)
    say(f"judge sanity check: {verdict_of['verdict']} good from bad answers (mean ratings: {shown})"
        + ("" if verdict_of["can_tell"] else "; its MT-Bench scores should not be trusted"))
