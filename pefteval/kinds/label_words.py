"""Label-word scoring: prompt-based few-shot classification with a decoder LM (the model-facing
half; the data half, patterns and k-shot samples, is ``pefteval.tasks.fewshot``).

Each query becomes a prompt: one demonstration per class, drawn from the k-shot
training sample, then the query with its label slot empty. The class scores are the
LM's next-token logits at the last prompt token, restricted to the label words'
token ids. Training minimises cross-entropy over those scores (``fewshot_loss``), so
the LM head itself is the classifier and no parameters are added; this is what FFT,
LoRA and other PEFT methods are compared on in Table 7 / Figure 2.

The prompts are raw LM patterns, as in LM-BFF. A tokenizer's chat template (e.g.
SmolLM2-Instruct's) is deliberately not applied: the pattern text is the whole input,
the same for every model, and the scored position is the end of that text.

Padding. Each feature records ``score_index``, the scored token's index within its
own (unpadded) sequence. In a padded batch the position is the row's first real
token plus ``score_index``, which holds for right and left padding alike; with left
padding, ``position_ids`` are derived from the attention mask so that every row sees
the same positions as it would unpadded.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pefteval.device import autocast, model_device
from pefteval.errors import UserError
from pefteval.files import atomic_write_json
from pefteval.kinds.base import TaskKind
from pefteval.models import ModelSource, is_decoder_config, load_lm_or_span
from pefteval.probe import Probe, make_probe
from pefteval.tasks.base import Example
from pefteval.tasks.fewshot import (
    FewShotSpec,
    build_prompt,
    check_label_words,
    clean,
    draw_demonstrations,
    group_by_class,
    query_rng,
)
from pefteval.train import Encoded


@dataclass
class FewShotEncoded(Encoded):
    """Tokenised prompts. Each feature holds ``input_ids``, ``attention_mask``, ``score_index``
    (the last prompt token, whose next-token distribution is scored) and ``class_label``;
    ``labels`` repeats the class ids for the accuracy helpers."""

    label_token_ids: list[int] = field(default_factory=list)
    demos_truncated: int = 0  # prompts whose demonstration texts were shortened to fit max_length
    queries_truncated: int = 0  # prompts whose query text had to be shortened too (demonstrations already empty)


def special_prefix(tokenizer: Any) -> list[int]:
    """The special tokens the tokenizer puts before a text (LLaMA's BOS; none for SmolLM2).
    Tokens it appends (an EOS or [SEP]) are left out: the label word must follow the prompt."""
    plain = tokenizer("a b", add_special_tokens=False)["input_ids"]
    full = tokenizer("a b")["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return list(full[:start])
    return []


def _cap(lengths: Sequence[int], excess: int) -> int:
    """The largest per-text token cap that removes at least ``excess`` tokens (0 if none does)."""
    for cap in range(max(lengths) - 1, -1, -1):
        if sum(max(0, n - cap) for n in lengths) >= excess:
            return cap
    return 0


def _cut(tokenizer: Any, text: str, n_tokens: int) -> str:
    """The longest start of ``text`` that is ``n_tokens`` tokens long (tokenised on its own)."""
    if n_tokens <= 0:
        return ""
    if getattr(tokenizer, "is_fast", False):
        offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        return text if n_tokens >= len(offsets) else text[: offsets[n_tokens - 1][1]]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return text if n_tokens >= len(ids) else tokenizer.decode(ids[:n_tokens])


def _shorten(tokenizer: Any, targets: list[Example], render: Callable[[list[Example]], str],
             budget: int) -> tuple[list[Example], list[int]]:
    """Cut the texts of ``targets``, longest first, until ``render(targets)`` fits ``budget``
    tokens or every text is empty. Each round caps all texts at one token count chosen to
    remove the excess (so short texts stay whole and long ones are cut to the same length),
    then re-tokenises the whole prompt, since tokens can merge differently at the cut."""
    def tokens(examples: list[Example]) -> list[int]:
        return tokenizer(render(examples), add_special_tokens=False)["input_ids"]

    slots = [(i, name) for i, x in enumerate(targets) for name in ("text_a", "text_b") if getattr(x, name)]
    texts = {slot: clean(getattr(targets[slot[0]], slot[1])) for slot in slots}
    lengths = {slot: len(tokenizer(texts[slot], add_special_tokens=False)["input_ids"]) for slot in slots}
    current = list(targets)
    ids = tokens(current)
    while len(ids) > budget and any(lengths.values()):
        cap = _cap(list(lengths.values()), len(ids) - budget)
        lengths = {slot: min(n, cap) for slot, n in lengths.items()}
        current = list(targets)
        for (i, name), n in lengths.items():
            current[i] = replace(current[i], **{name: _cut(tokenizer, texts[(i, name)], n)})
        ids = tokens(current)
    return current, ids


def encode_fewshot(examples: Sequence[Example], spec: FewShotSpec, tokenizer: Any, demos_pool: Sequence[Example],
                   seed: int, max_length: int) -> FewShotEncoded:
    """Prompts for ``examples`` with demonstrations from ``demos_pool`` (the k-shot training sample).

    Each query gets one demonstration per class, in class-id order, drawn by a generator
    fixed by ``seed`` and the query's text, never the query itself. For training, encode
    again with another seed each epoch to see new demonstration sets (as LM-BFF samples
    them per step); for evaluation keep one seed.

    Over ``max_length`` tokens, the demonstrations' texts are cut from their ends, the
    longest first (all texts capped at the same token count, chosen to remove the excess),
    so the pattern words, the label words and the query stay whole. Only if the prompt
    is still too long with every demonstration text empty is the query's text cut the
    same way; the counts are in ``demos_truncated`` / ``queries_truncated``. The chat
    template is not applied (see the module docstring)."""
    label_ids = check_label_words(tokenizer, spec)
    if not examples:
        return FewShotEncoded([], [], label_ids)
    groups = group_by_class(demos_pool, spec.num_labels)
    prefix = special_prefix(tokenizer)
    budget = max_length - len(prefix)
    demos = [draw_demonstrations(groups, q, query_rng(seed, q)) for q in examples]
    prompts = [build_prompt(spec, q, d) for q, d in zip(examples, demos)]
    all_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    out = FewShotEncoded([], [], label_ids)
    for query, demo, ids in zip(examples, demos, all_ids):
        if len(ids) > budget:
            out.demos_truncated += 1
            demo, ids = _shorten(tokenizer, demo, lambda ds, q=query: build_prompt(spec, q, ds), budget)
            if len(ids) > budget:
                out.queries_truncated += 1
                _, ids = _shorten(tokenizer, [query], lambda qs, ds=demo: build_prompt(spec, qs[0], ds), budget)
            if len(ids) > budget:
                raise UserError(f"{spec.name}: max_length {max_length} is too small for the pattern alone "
                                f"({len(ids) + len(prefix)} tokens with every text empty); raise max_length")
        ids = prefix + list(ids)
        out.features.append({"input_ids": ids, "attention_mask": [1] * len(ids), "score_index": len(ids) - 1,
                             "class_label": query.label})
        out.labels.append(query.label)
    return out


def collate_fewshot(features: Sequence[dict[str, Any]], pad_id: int, padding_side: str = "right") -> dict[str, Any]:
    """Pad a batch on either side; ``score_index`` and ``class_label`` are stacked as they are."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    width = max(len(f["input_ids"]) for f in features)

    def pad(seq: list[int], fill: int) -> list[int]:
        extra = [fill] * (width - len(seq))
        return extra + seq if padding_side == "left" else seq + extra

    return {
        "input_ids": torch.tensor([pad(f["input_ids"], pad_id) for f in features], dtype=torch.long),
        "attention_mask": torch.tensor([pad(f["attention_mask"], 0) for f in features], dtype=torch.long),
        "score_index": torch.tensor([f["score_index"] for f in features], dtype=torch.long),
        "class_label": torch.tensor([f["class_label"] for f in features], dtype=torch.long),
    }


def _keeps_logits(model: nn.Module) -> bool:
    """Whether logits can be computed for chosen positions only (``logits_to_keep``). Not for
    prompt-learning adapters that prepend virtual tokens to the input (prompt tuning,
    P-tuning): their outputs are longer than the input. Prefix tuning only adds to the cache."""
    peft_config = getattr(model, "peft_config", None)
    if peft_config:
        active = peft_config.get(getattr(model, "active_adapter", None)) if isinstance(peft_config, dict) else None
        if active is None:
            return False
        if getattr(active, "is_prompt_learning", False) and str(getattr(active, "peft_type", "")).split(".")[-1] \
                not in ("PREFIX_TUNING", "CARTRIDGE"):
            return False
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return "logits_to_keep" in inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return False


def label_word_logits(model: nn.Module, batch: dict[str, torch.Tensor], label_token_ids: Sequence[int]) -> torch.Tensor:
    """LM logits of the label words at each row's scored position: [batch, n_classes].

    The position is the row's first real token plus its ``score_index``, so right- and
    left-padded batches both work; with left padding, position ids count from each row's
    first real token. Only the scored positions go through the LM head when the model
    supports it (``logits_to_keep``), which matters for large vocabularies. A batch from
    ``pefteval.train.collate`` (right padding) works as well. Under peft prompt tuning the
    virtual tokens are skipped, but peft drops position ids there, so left padding is then
    only approximate: pad on the right for it."""
    device = model_device(model)
    input_ids = batch["input_ids"].to(device)
    mask = batch["attention_mask"].to(device)
    first = mask.long().argmax(-1)
    positions = first + batch["score_index"].to(device)
    if bool((positions >= input_ids.shape[1]).any()) or bool((mask.gather(1, positions[:, None]) == 0).any()):
        raise ValueError("score_index points past a row's real tokens; was the batch padded after encoding?")
    kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": mask}
    if bool((first > 0).any()):  # left padding
        kwargs["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0)
    rows = torch.arange(len(positions), device=device)
    if _keeps_logits(model):
        keep, inverse = torch.unique(positions, return_inverse=True)
        logits = model(**kwargs, logits_to_keep=keep).logits[rows, inverse]
    else:
        logits = model(**kwargs).logits
        logits = logits[rows, positions + (logits.shape[1] - input_ids.shape[1])]  # virtual tokens come first
    return logits[:, torch.as_tensor(list(label_token_ids), device=device)]


def fewshot_loss(model: nn.Module, batch: dict[str, torch.Tensor], label_token_ids: Sequence[int]) -> torch.Tensor:
    """Cross-entropy of the class labels over the label-word logits (a softmax over the label
    words only, as in LM-BFF); this is what prompt-based fine-tuning minimises."""
    logits = label_word_logits(model, batch, label_token_ids)
    return F.cross_entropy(logits.float(), batch["class_label"].to(logits.device))


@torch.no_grad()
def predict_encoded(model: nn.Module, data: FewShotEncoded, pad_id: int, batch_size: int = 8,
                    precision: str = "fp32", padding_side: str = "right") -> list[int]:
    """Argmax over the label words for every prompt, in input order; batches group similar lengths."""
    model.eval()
    device = model_device(model)
    order = sorted(range(len(data)), key=lambda i: len(data.features[i]["input_ids"]))
    preds = [0] * len(data)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = collate_fewshot([data.features[i] for i in idx], pad_id, padding_side)
        with autocast(precision, device.type):
            logits = label_word_logits(model, batch, data.label_token_ids)
        for i, p in zip(idx, logits.float().argmax(-1).tolist()):
            preds[i] = p
    return preds


class LabelWords(TaskKind):
    """k training examples per class drawn by the seed (the task's k-shot splits); every input is
    one demonstration per class followed by the query; the loss is cross-entropy over the label
    words' logits at the label position and the prediction is their argmax (no new head)."""

    name = "label_words"
    head = "lm"

    def __init__(self, task: Any, training: Any, seed: int, data: Any = None):
        super().__init__(task, training, seed, data)
        self.spec = task.fewshot
        self.demos: list[Example] = []
        self._encoded: dict[tuple[Example, ...], FewShotEncoded] = {}
        self.truncated = 0

    @property
    def pad_id(self) -> int:
        tok = self.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    @property
    def paper_lora_targets(self) -> bool:
        return True

    def load_model(self, source: ModelSource, config: Any) -> nn.Module:
        if not is_decoder_config(config):
            raise UserError(f"prompt-based few-shot (data.k_shot) scores label words with a decoder language model; "
                            f"{source.name} is an encoder (drop k_shot to fine-tune it with a classification head)")
        model, self.tokenizer, self.is_decoder = load_lm_or_span(source, config, **self.load_options())
        self.tokenizer.padding_side = "right"
        return model

    def _encode(self, examples: Sequence[Example]) -> FewShotEncoded:
        """Each distinct set is encoded once (validation is scored every epoch)."""
        key = tuple(examples)
        if key not in self._encoded:
            enc = encode_fewshot(examples, self.spec, self.tokenizer, self.demos, self.seed, self.hp.max_seq_length)
            self.truncated += enc.demos_truncated
            self._encoded[key] = enc
        return self._encoded[key]

    def encode_train(self, examples: Sequence[Example]) -> Encoded:
        self.demos = list(examples)  # the demonstrations of every prompt come from the k-shot sample
        train = self._encode(examples)
        label_ids = train.label_token_ids
        self.loss = lambda model, batch: fewshot_loss(model, batch, label_ids)
        return train

    def predict(self, model: nn.Module, examples: Sequence[Example]) -> list[int]:
        return predict_encoded(model, self._encode(examples), self.pad_id, self.hp.eval_batch_size, self.hp.precision)

    def probe(self, examples: Sequence[Example], n: int) -> Probe | None:
        data = self._encode(examples)
        return make_probe(data.features, self.pad_id, None, n, loss="label_words", label_ids=list(data.label_token_ids))

    def save(self, run_dir: Path) -> None:
        names = self.task.label_names
        atomic_write_json(run_dir / "train_sample.json", [{"text": x.text_a, "text_b": x.text_b, "label": x.label,
                                                           "label_name": names[x.label]} for x in self.demos])

    def record_fields(self) -> dict[str, Any]:
        if self.truncated:
            self.notes.append(f"{self.spec.display}: demonstrations shortened in {self.truncated} prompt(s) to fit "
                              f"max_seq_length {self.hp.max_seq_length}")
        return super().record_fields()
