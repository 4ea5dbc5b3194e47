"""The ``local`` judge backend: a decoder LM in this process (an alias, directory or hub id, loaded
as trials load theirs), on ``judge.device`` with ``judge.precision`` autocast.

Each judgment reads the judge prompt's system message and the filled-in template through the
tokenizer's chat template (a model without one reads system + blank line + user + newline). Prompts
are generated in left-padded batches of ``judge.batch_size`` with a KV cache, greedily, capped at
``judge.max_new_tokens``, and each row stops as soon as its text holds a ``[[x]]`` rating: FastChat
reads the first match, so nothing after it can change the score, and most of the time is saved.
A retry (a judgment without a parsable rating) samples at temperature 0.7 from a fixed seed, since
greedy decoding would only repeat itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from pefteval.config import JudgeConfig
from pefteval.device import autocast, resolve_device
from pefteval.errors import UserError
from pefteval.judging.prompts import RATING, JudgeRequest
from pefteval.models import load_lm_or_span, resolve_model

RETRY_TEMPERATURE = 0.7
RETRY_SEED = 1234
MIN_NEW_TOKENS = 16  # a prompt must leave the judge this much of its context to answer in
# what a judgment is when the prompt does not fit the judge's context (FastChat's API_ERROR_OUTPUT
# is "$ERROR$"): it holds no rating, so it is filed as unrated
TOO_LONG = ("$ERROR$: the prompt ({tokens} tokens) leaves the judge fewer than {min_new} tokens of its {context}-token "
            "context to answer in")


def render(tokenizer: Any, system: str, user: str) -> str:
    """The judge's input text: [system, user] in the chat template, else system, a blank line, user, newline."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "system", "content": system}, {"role": "user", "content": user}],
                                             tokenize=False, add_generation_prompt=True)
    return system + "\n\n" + user + "\n"


def bracket_token_ids(tokenizer: Any) -> frozenset[int]:
    """Ids of the tokens whose text holds ']': only after one of these can a row's text newly hold a
    complete ``[[x]]``, so only then is the row decoded and matched."""
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    return frozenset(i for i, t in enumerate(tokens) if t is not None and "]" in t)


class RatingStop(StoppingCriteria):
    """Stops each row of a batch, on its own, once its generated text (after the prompt's ``width``
    tokens) holds a ``[[x]]`` rating; a per-row bool tensor, as transformers' generate takes it."""

    def __init__(self, tokenizer: Any, width: int, rows: int, bracket_ids: frozenset[int]):
        self.tokenizer = tokenizer
        self.width = width
        self.bracket_ids = bracket_ids
        self.done = [False] * rows

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        last = input_ids[:, -1].tolist()
        for row, token in enumerate(last):
            if not self.done[row] and token in self.bracket_ids:
                text = self.tokenizer.decode(input_ids[row, self.width:], skip_special_tokens=True)
                self.done[row] = RATING.search(text) is not None
        return torch.tensor(self.done, dtype=torch.bool, device=input_ids.device)


class LocalJudge:
    """A judgment generator (``grading.Generator``) running the judge model here."""

    def __init__(self, judge: JudgeConfig, say: Callable[[str], None] = print):
        self.judge = judge
        source = resolve_model(judge.model)
        model, tokenizer, decoder = load_lm_or_span(source)
        if not decoder:
            raise UserError(f"judge model {judge.model!r} is an encoder; a judge writes its verdict, so it must be a "
                            "decoder language model (e.g. smollm2-135m, or a hub id of an instruction-tuned LLM)")
        self.device = resolve_device(judge.device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "left"
        self.pad = tokenizer.pad_token_id
        eos = {tokenizer.eos_token_id}
        configured = getattr(self.model.generation_config, "eos_token_id", None)
        eos |= set(configured) if isinstance(configured, (list, tuple)) else {configured}
        self.eos = sorted(e for e in eos if e is not None)
        self.context = getattr(self.model.config, "max_position_embeddings", None)
        self.bracket_ids = bracket_token_ids(tokenizer)
        self.chunk_size = judge.batch_size
        if not getattr(tokenizer, "chat_template", None):
            say(f"judge model {judge.model!r} has no chat template: it reads system prompt, blank line, user prompt")

    def close(self) -> None:
        self.model = None

    @torch.no_grad()
    def __call__(self, requests: Sequence[JudgeRequest], retry: bool) -> list[str]:
        encoded = [self.tokenizer(render(self.tokenizer, r.system, r.user), add_special_tokens=False)["input_ids"]
                   for r in requests]
        out = [""] * len(requests)
        fits = []
        for i, ids in enumerate(encoded):
            if self.context is not None and len(ids) + MIN_NEW_TOKENS > self.context:
                out[i] = TOO_LONG.format(tokens=len(ids), min_new=MIN_NEW_TOKENS, context=self.context)
            else:
                fits.append(i)
        order = sorted(fits, key=lambda i: len(encoded[i]))
        for start in range(0, len(order), self.judge.batch_size):
            idx = order[start:start + self.judge.batch_size]
            for i, text in zip(idx, self._generate([encoded[i] for i in idx], retry)):
                out[i] = text
        return out

    def _generate(self, encoded: list[list[int]], retry: bool) -> list[str]:
        width = max(len(ids) for ids in encoded)
        input_ids = torch.tensor([[self.pad] * (width - len(ids)) + ids for ids in encoded], device=self.device)
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in encoded], device=self.device)
        max_new = self.judge.max_new_tokens
        if self.context is not None:
            max_new = max(1, min(max_new, self.context - width))
        stop = RatingStop(self.tokenizer, width, len(encoded), self.bracket_ids)
        sampling = ({"do_sample": True, "temperature": RETRY_TEMPERATURE, "top_k": 0, "top_p": 1.0} if retry
                    else {"do_sample": False, "temperature": None, "top_k": None, "top_p": None})
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), autocast(self.judge.precision, self.device.type):
            torch.manual_seed(RETRY_SEED)
            generated = self.model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new,
                                            num_beams=1, pad_token_id=self.pad, eos_token_id=self.eos,
                                            use_cache=True, stopping_criteria=StoppingCriteriaList([stop]),
                                            **sampling)
        return [self.tokenizer.decode(generated[row, width:], skip_special_tokens=True).strip()
                for row in range(len(encoded))]
