"""Generative answers: a decoder LM learns the target text after the prompt and answers by greedy
decoding, for generation tasks (GSM8K, SQL, ViGGO) and generative reading comprehension alike.

The prompt is the task's text, wrapped in the tokenizer's chat template when it has one (the same
in training and evaluation), else followed by the task's plain suffix. The model learns the
target followed by end-of-sequence; labels are -100 on the prompt, so the loss is on the target
tokens only. Answers are generated greedily in left-padded batches with a KV cache and a
``max_new_tokens`` cap, so a runaway output cannot stall evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from pefteval.device import autocast, model_device
from pefteval.errors import UserError
from pefteval.kinds.base import TaskKind
from pefteval.models import ModelSource, is_decoder_config, load_lm_or_span
from pefteval.probe import Probe, make_probe
from pefteval.tasks.base import Prompting
from pefteval.train import Encoded

MIN_TARGET_TOKENS = 16  # a prompt must leave this much of max_seq_length for the target


def chat_prompt(tokenizer: Any, text: str, plain_suffix: str = "\n") -> str:
    """The user text as the model reads it: in the chat template, else followed by ``plain_suffix``."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
    return text + plain_suffix


def encode_prompt_target(examples: Sequence[Any], tokenizer: Any, max_length: int,
                         prompting: Prompting) -> tuple[Encoded, int]:
    """Features of (prompt, target) pairs and how many were left out. A pair longer than
    ``max_length`` has its prompt cut by ``prompting.shorten`` when the task has one; otherwise
    an example whose prompt alone leaves fewer than ``MIN_TARGET_TOKENS`` is left out, and a long
    target is cut at the end (then it has no end-of-sequence token to learn)."""
    features, skipped = [], 0
    eos = tokenizer.eos_token_id
    answer_prefix = "" if getattr(tokenizer, "chat_template", None) else prompting.answer_prefix
    for x in examples:
        target_ids = tokenizer(answer_prefix + prompting.target(x), add_special_tokens=False)["input_ids"] + [eos]
        prompt_ids = tokenizer(chat_prompt(tokenizer, prompting.render(x), prompting.plain_suffix),
                               add_special_tokens=False)["input_ids"]
        overflow = len(prompt_ids) + len(target_ids) - max_length
        if prompting.shorten is None:
            if len(prompt_ids) > max_length - MIN_TARGET_TOKENS:
                skipped += 1
                continue
        elif overflow > 0:
            text = prompting.shorten(x, tokenizer, overflow)
            prompt_ids = tokenizer(chat_prompt(tokenizer, text, prompting.plain_suffix),
                                   add_special_tokens=False)["input_ids"]
        ids = (prompt_ids + target_ids)[:max_length]
        labels = ([-100] * len(prompt_ids) + target_ids)[:max_length]
        features.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    return Encoded(features, []), skipped


@torch.no_grad()
def generate_answers(model: nn.Module, tokenizer: Any, prompts: Sequence[str], batch_size: int = 16,
                     max_new_tokens: int = 32, precision: str = "bf16",
                     max_prompt_tokens: int | None = None, temperature: float = 0.0,
                     seed: int = 0, counts: list[int] | None = None) -> list[str]:
    """Answers for prompts, in left-padded batches (similar lengths together), cut at
    end-of-sequence or ``max_new_tokens``, stripped of surrounding white space. Greedy unless
    ``temperature`` is above 1e-4 (FastChat's rule); then sampled, the generator seeded from
    ``seed`` and the batch's position before each batch, so a rerun draws the same answers.
    ``counts``, when given, receives each answer's number of generated tokens."""
    model.eval()
    sample = temperature >= 1e-4
    options: dict[str, Any] = {"do_sample": True, "temperature": temperature} if sample else {"do_sample": False}
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    if max_prompt_tokens is not None:
        encoded = [ids[-max_prompt_tokens:] for ids in encoded]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    out = [""] * len(encoded)
    pad = tokenizer.pad_token_id
    device = model_device(model)
    lengths = [0] * len(encoded)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        if sample:
            torch.manual_seed(seed * 100_003 + start)
        width = max(len(encoded[i]) for i in idx)
        input_ids = torch.tensor([[pad] * (width - len(encoded[i])) + encoded[i] for i in idx], device=device)
        mask = torch.tensor([[0] * (width - len(encoded[i])) + [1] * len(encoded[i]) for i in idx], device=device)
        with autocast(precision, device.type):
            generated = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                       num_beams=1, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id,
                                       use_cache=True, **options)
        for row, i in enumerate(idx):
            new_tokens = generated[row, width:]
            ids = new_tokens.tolist()  # tokens up to and with the first end-of-sequence (the rest is padding)
            lengths[i] = ids.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in ids else len(ids)
            text = tokenizer.decode(new_tokens, skip_special_tokens=True)
            out[i] = text.strip()
    if counts is not None:
        counts[:] = lengths
    return out


class GenerativeAnswer(TaskKind):
    name = "generative"
    head = "lm"

    @property
    def prompting(self) -> Prompting:
        return self.task.prompting

    @property
    def paper_lora_targets(self) -> bool:
        return self.prompting.paper_lora_targets

    def load_model(self, source: ModelSource, config: Any) -> nn.Module:
        if not is_decoder_config(config):
            raise UserError(f"task {self.task.name} generates text and needs a decoder language model (e.g. "
                            f"smollm2-135m or a LLaMA hub id); {source.name} is an encoder")
        model, self.tokenizer, self.is_decoder = load_lm_or_span(source, config, **self.load_options())
        return model

    def encode_pairs(self, examples: Sequence[Any], max_len: int) -> tuple[Encoded, int]:
        """Training features of ``examples`` and how many were left out (a kind's own encoding)."""
        return encode_prompt_target(examples, self.tokenizer, max_len, self.prompting)

    def encode_train(self, examples: Sequence[Any]) -> Encoded:
        max_len = self.hp.max_seq_length
        train, skipped = self.encode_pairs(examples, max_len)
        self.left_out = skipped
        if skipped:
            self.notes.append(f"{self.task.name}: {skipped} training example(s) left out, their prompt alone "
                              f"exceeds max_seq_length {max_len}")
        if len(train) == 0:
            raise UserError(f"task {self.task.name}: no training example fits max_seq_length {max_len}; raise it")
        return train

    def predict(self, model: nn.Module, examples: Sequence[Any]) -> list[str]:
        prompts = [chat_prompt(self.tokenizer, self.prompting.render(x), self.prompting.plain_suffix)
                   for x in examples]
        texts = generate_answers(model, self.tokenizer, prompts, self.hp.eval_batch_size, self.hp.max_new_tokens,
                                 self.hp.precision)
        return [self.prompting.parse(t) for t in texts]

    def probe(self, examples: Sequence[Any], n: int) -> Probe | None:
        data, _ = encode_prompt_target(examples[:n], self.tokenizer, self.hp.max_seq_length, self.prompting)
        return make_probe(data.features, self.pad_id, None, n)

    def record_fields(self) -> dict[str, Any]:
        fields = super().record_fields()
        if self.task.kind == "qa":
            fields["qa_mode"] = "generative"
        return fields
