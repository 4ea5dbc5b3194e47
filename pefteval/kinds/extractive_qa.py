"""Extractive question answering: an encoder with a fresh span head (start/end logits).

The standard SQuAD preprocessing. Question and context are tokenised together; a context longer
than the window is split into overlapping windows (``doc_stride`` tokens of overlap); each token
keeps its character offsets into the context. A training window whose context part does not hold
the whole answer is labelled with the [CLS] position (start = end = 0), as in BERT's SQuAD
recipe. At prediction time every window proposes its ``n_best`` start and end logits; a span is
valid when both ends lie in the context, start <= end and it is at most ``max_answer_length``
tokens long; the best valid span over all windows of a question (start logit + end logit) is
mapped back to the context's characters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from pefteval.device import autocast, model_device, to_model_device
from pefteval.kinds.base import TaskKind
from pefteval.models import ModelSource, load_lm_or_span
from pefteval.probe import Probe, make_probe
from pefteval.tasks.base import QAExample
from pefteval.train import Encoded, collate


@dataclass
class QAWindows:
    """Tokenised windows of a list of questions; ``example_index`` maps a window to its question."""

    features: list[dict[str, list[int]]]
    example_index: list[int]
    offsets: list[list[tuple[int, int] | None]]  # None outside the context

    def __len__(self) -> int:
        return len(self.features)


def _question_first(tokenizer: Any) -> bool:
    return tokenizer.padding_side == "right"


def tokenize_windows(examples: Sequence[QAExample], tokenizer: Any, max_length: int,
                     doc_stride: int) -> tuple[Any, bool]:
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError("extractive QA needs a fast tokenizer (character offsets)")
    q_first = _question_first(tokenizer)
    questions = [x.question.lstrip() for x in examples]  # leading spaces waste window room
    contexts = [x.context for x in examples]
    enc = tokenizer(
        questions if q_first else contexts, contexts if q_first else questions,
        truncation="only_second" if q_first else "only_first", max_length=max_length,
        stride=min(doc_stride, max_length // 2), return_overflowing_tokens=True, return_offsets_mapping=True,
    )
    return enc, q_first


def _feature(enc: Any, i: int) -> dict[str, list[int]]:
    return {k: enc[k][i] for k in ("input_ids", "token_type_ids", "attention_mask") if k in enc}


def prepare_train_windows(examples: Sequence[QAExample], tokenizer: Any, max_length: int,
                          doc_stride: int) -> Encoded:
    """Training windows with start/end token positions of the first gold answer (0 = [CLS] if
    the window does not contain it)."""
    if not examples:
        return Encoded([], [])
    enc, q_first = tokenize_windows(examples, tokenizer, max_length, doc_stride)
    context_id = 1 if q_first else 0
    features = []
    for i, offsets in enumerate(enc["offset_mapping"]):
        example = examples[enc["overflow_to_sample_mapping"][i]]
        start_char = example.answer_starts[0]
        end_char = start_char + len(example.answers[0])
        seq_ids = enc.sequence_ids(i)
        ctx = [t for t, s in enumerate(seq_ids) if s == context_id]
        start_tok = end_tok = 0
        if ctx and offsets[ctx[0]][0] <= start_char and offsets[ctx[-1]][1] >= end_char:
            start_tok = next(t for t in ctx if offsets[t][1] > start_char)
            end_tok = next(t for t in reversed(ctx) if offsets[t][0] < end_char)
        features.append({**_feature(enc, i), "start_positions": start_tok, "end_positions": end_tok})
    return Encoded(features, [])


def prepare_eval_windows(examples: Sequence[QAExample], tokenizer: Any, max_length: int,
                         doc_stride: int) -> QAWindows:
    if not examples:
        return QAWindows([], [], [])
    enc, q_first = tokenize_windows(examples, tokenizer, max_length, doc_stride)
    context_id = 1 if q_first else 0
    features, index, offsets = [], [], []
    for i, offs in enumerate(enc["offset_mapping"]):
        seq_ids = enc.sequence_ids(i)
        features.append(_feature(enc, i))
        index.append(enc["overflow_to_sample_mapping"][i])
        offsets.append([tuple(o) if s == context_id else None for o, s in zip(offs, seq_ids)])
    return QAWindows(features, index, offsets)


def best_span(start_logits: np.ndarray, end_logits: np.ndarray, offsets: list[tuple[int, int] | None],
              n_best: int = 20, max_answer_length: int = 30) -> tuple[float, int, int] | None:
    """(score, start char, end char) of the best valid span of one window, or None."""
    starts = np.argsort(start_logits)[::-1][:n_best]
    ends = np.argsort(end_logits)[::-1][:n_best]
    best = None
    for s in starts:
        if s >= len(offsets) or offsets[s] is None:
            continue
        for e in ends:
            if e >= len(offsets) or offsets[e] is None or e < s or e - s + 1 > max_answer_length:
                continue
            score = float(start_logits[s] + end_logits[e])
            if best is None or score > best[0]:
                best = (score, offsets[s][0], offsets[e][1])
    return best


@torch.no_grad()
def predict_extractive(model: nn.Module, examples: Sequence[QAExample], tokenizer: Any, max_length: int,
                       doc_stride: int, batch_size: int = 64, precision: str = "bf16", n_best: int = 20,
                       max_answer_length: int = 30) -> list[str]:
    """The predicted answer text of each question (empty if no valid span was found)."""
    windows = prepare_eval_windows(examples, tokenizer, max_length, doc_stride)
    model.eval()
    best: list[tuple[float, int, int] | None] = [None] * len(examples)
    order = sorted(range(len(windows)), key=lambda i: len(windows.features[i]["input_ids"]))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = to_model_device(collate([windows.features[i] for i in idx], tokenizer.pad_token_id), model)
        with autocast(precision, model_device(model).type):
            out = model(**batch)
        start_logits = out.start_logits.float().cpu().numpy()
        end_logits = out.end_logits.float().cpu().numpy()
        for row, i in enumerate(idx):
            n = len(windows.features[i]["input_ids"])
            span = best_span(start_logits[row, :n], end_logits[row, :n], windows.offsets[i], n_best,
                             max_answer_length)
            j = windows.example_index[i]
            if span is not None and (best[j] is None or span[0] > best[j][0]):
                best[j] = span
    return [examples[j].context[b[1]:b[2]] if b else "" for j, b in enumerate(best)]


class SpanExtraction(TaskKind):
    name = "extractive_qa"
    head = "span"
    qa_mode = "extractive"

    def load_model(self, source: ModelSource, config: Any) -> nn.Module:
        # select_kind gives this kind encoders only, which load_lm_or_span gives a fresh span head
        model, self.tokenizer, self.is_decoder = load_lm_or_span(source, config, **self.load_options())
        return model

    def encode_train(self, examples: Sequence[QAExample]) -> Encoded:
        return prepare_train_windows(examples, self.tokenizer, self.hp.max_seq_length, self.hp.doc_stride)

    def predict(self, model: nn.Module, examples: Sequence[QAExample]) -> list[str]:
        hp = self.hp
        return predict_extractive(model, examples, self.tokenizer, hp.max_seq_length, hp.doc_stride,
                                  hp.eval_batch_size, hp.precision, max_answer_length=hp.max_answer_length)

    def probe(self, examples: Sequence[QAExample], n: int) -> Probe | None:
        data = prepare_train_windows(examples[:n], self.tokenizer, self.hp.max_seq_length, self.hp.doc_stride)
        return make_probe(data.features, self.pad_id, None, n)
