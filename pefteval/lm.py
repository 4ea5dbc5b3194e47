"""Prompt -> target training data for decoder LMs (generation tasks).

The prompt is wrapped in the tokenizer's chat template when it has one (the same in training
and evaluation), else followed by a line break. The model learns the target followed by
end-of-sequence; labels are -100 on the prompt, so the loss is on the target tokens only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pefteval.train import Encoded


def chat_prompt(tokenizer: Any, text: str) -> str:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
    return text + "\n"


def prepare_lm_train(examples: Sequence[Any], tokenizer: Any, max_length: int,
                     min_target_tokens: int = 16) -> tuple[Encoded, int]:
    """Features of (prompt, target) examples and the number left out because their prompt alone
    leaves fewer than ``min_target_tokens`` of ``max_length``; a long target is cut at the end
    (then it has no end-of-sequence token to learn)."""
    features, skipped = [], 0
    eos = tokenizer.eos_token_id
    for x in examples:
        prompt_ids = tokenizer(chat_prompt(tokenizer, x.prompt), add_special_tokens=False)["input_ids"]
        if len(prompt_ids) > max_length - min_target_tokens:
            skipped += 1
            continue
        target_ids = tokenizer(x.target, add_special_tokens=False)["input_ids"] + [eos]
        ids = (prompt_ids + target_ids)[:max_length]
        labels = ([-100] * len(prompt_ids) + target_ids)[:max_length]
        features.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    return Encoded(features, []), skipped
