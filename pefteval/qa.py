"""Question answering for both model kinds.

Extractive (encoders): the standard SQuAD preprocessing. Question and context are
tokenised together; a context longer than the window is split into overlapping
windows (``doc_stride`` tokens of overlap); each token keeps its character offsets
into the context. A training window whose context part does not hold the whole
answer is labelled with the [CLS] position (start = end = 0), as in BERT's SQuAD
recipe. At prediction time every window proposes its ``n_best`` start and end
logits; a span is valid when both ends lie in the context, start <= end and it is at
most ``max_answer_length`` tokens long; the best valid span over all windows of a
question (start logit + end logit) is mapped back to the context's characters.

Generative (decoders): the prompt holds the context and the question (in the
tokenizer's chat template when it has one, the same in training and evaluation);
the model learns the answer text followed by end-of-sequence, with the loss on the
answer tokens only. Answers are generated greedily in left-padded batches with a
KV cache and a ``max_new_tokens`` cap, so a runaway output cannot stall evaluation.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pefteval.tasks import QAExample
from pefteval.train import Encoded, _autocast, collate

# --- extractive ----------------------------------------------------------------------------


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
        batch = collate([windows.features[i] for i in idx], tokenizer.pad_token_id)
        with _autocast(precision):
            out = model(**batch)
        start_logits = out.start_logits.float().numpy()
        end_logits = out.end_logits.float().numpy()
        for row, i in enumerate(idx):
            n = len(windows.features[i]["input_ids"])
            span = best_span(start_logits[row, :n], end_logits[row, :n], windows.offsets[i], n_best,
                             max_answer_length)
            j = windows.example_index[i]
            if span is not None and (best[j] is None or span[0] > best[j][0]):
                best[j] = span
    return [examples[j].context[b[1]:b[2]] if b else "" for j, b in enumerate(best)]


# --- generative ----------------------------------------------------------------------------

PROMPT = "Answer the question with a short span copied from the context.\n\nContext: {context}\n\nQuestion: {question}"
PLAIN_SUFFIX = "\nAnswer:"


def render_prompt(tokenizer: Any, example: QAExample, context: str | None = None) -> str:
    text = PROMPT.format(context=context if context is not None else example.context,
                         question=example.question.strip())
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
    return text + PLAIN_SUFFIX


def _answer_suffix(tokenizer: Any) -> str:
    # chat templates start the assistant turn on a fresh line; a plain prompt ends in "Answer:"
    return "" if getattr(tokenizer, "chat_template", None) else " "


def _fit_context(tokenizer: Any, example: QAExample, budget: int) -> str:
    """The context cut to ``budget`` tokens, around the first answer (training only needs that part)."""
    enc = tokenizer(example.context, add_special_tokens=False, return_offsets_mapping=True)
    offs = enc["offset_mapping"]
    if len(offs) <= budget:
        return example.context
    answer_tok = next((t for t, (a, b) in enumerate(offs) if b > example.answer_starts[0]), 0)
    first = max(0, min(answer_tok - budget // 2, len(offs) - budget))
    return example.context[offs[first][0]:offs[first + budget - 1][1]]


def prepare_generative_train(examples: Sequence[QAExample], tokenizer: Any, max_length: int) -> Encoded:
    """Prompt + answer + end-of-sequence; labels are -100 on the prompt, so only answer tokens count."""
    features = []
    eos = tokenizer.eos_token_id
    for x in examples:
        answer_ids = tokenizer(_answer_suffix(tokenizer) + x.answers[0], add_special_tokens=False)["input_ids"]
        prompt_ids = tokenizer(render_prompt(tokenizer, x), add_special_tokens=False)["input_ids"]
        overflow = len(prompt_ids) + len(answer_ids) + 1 - max_length
        if overflow > 0:
            n_context = len(tokenizer(x.context, add_special_tokens=False)["input_ids"])
            context = _fit_context(tokenizer, x, max(16, n_context - overflow - 8))
            prompt_ids = tokenizer(render_prompt(tokenizer, x, context), add_special_tokens=False)["input_ids"]
        ids = (prompt_ids + answer_ids + [eos])[:max_length]
        labels = ([-100] * len(prompt_ids) + answer_ids + [eos])[:max_length]
        features.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    return Encoded(features, [])


@torch.no_grad()
def generate_answers(model: nn.Module, tokenizer: Any, prompts: Sequence[str], batch_size: int = 16,
                     max_new_tokens: int = 32, precision: str = "bf16",
                     max_prompt_tokens: int | None = None, first_line: bool = True) -> list[str]:
    """Greedy answers for prompts, in left-padded batches (similar lengths together), cut at
    end-of-sequence or ``max_new_tokens`` and, with ``first_line``, at the first line break."""
    model.eval()
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    if max_prompt_tokens is not None:
        encoded = [ids[-max_prompt_tokens:] for ids in encoded]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    out = [""] * len(encoded)
    pad = tokenizer.pad_token_id
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        width = max(len(encoded[i]) for i in idx)
        input_ids = torch.tensor([[pad] * (width - len(encoded[i])) + encoded[i] for i in idx])
        mask = torch.tensor([[0] * (width - len(encoded[i])) + [1] * len(encoded[i]) for i in idx])
        with _autocast(precision):
            generated = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                       do_sample=False, num_beams=1, pad_token_id=pad,
                                       eos_token_id=tokenizer.eos_token_id, use_cache=True)
        for row, i in enumerate(idx):
            text = tokenizer.decode(generated[row, width:], skip_special_tokens=True)
            out[i] = clean_generated(text) if first_line else text.strip()
    return out


def clean_generated(text: str) -> str:
    text = text.strip()
    text = text.split("\n", 1)[0].strip()
    return text.removeprefix("Answer:").strip()


# --- one interface for evaluation and attacks ------------------------------------------------


@dataclass
class QAPredictor:
    """A trained QA model: ``predict`` answers a list of questions in batches."""

    model: nn.Module
    tokenizer: Any
    is_decoder: bool
    hp: dict[str, Any]
    model_id: str = ""

    def predict(self, examples: list[QAExample]) -> list[str]:
        hp = self.hp
        if self.is_decoder:
            prompts = [render_prompt(self.tokenizer, x) for x in examples]
            return generate_answers(self.model, self.tokenizer, prompts, hp["eval_batch_size"],
                                    hp.get("max_new_tokens", 32), hp["precision"])
        return predict_extractive(self.model, examples, self.tokenizer, hp["max_seq_length"], hp["doc_stride"],
                                  hp["eval_batch_size"], hp["precision"], max_answer_length=hp["max_answer_length"])


def load_qa_model(name: str) -> tuple[nn.Module, Any, bool]:
    """An encoder with a fresh span head (start/end logits), or a decoder LM as it is."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForQuestionAnswering
    from transformers.utils import logging as hf_logging

    from pefteval.models import is_decoder_config, load_tokenizer, resolve_model

    source = resolve_model(name)
    tokenizer = load_tokenizer(source)
    config = AutoConfig.from_pretrained(source.path, gguf_file=source.gguf_file, trust_remote_code=False)
    decoder = is_decoder_config(config)
    if config.pad_token_id is None:
        config.pad_token_id = tokenizer.pad_token_id
    cls = AutoModelForCausalLM if decoder else AutoModelForQuestionAnswering
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialised qa_outputs" report is expected
    try:
        model = cls.from_pretrained(source.path, config=config, gguf_file=source.gguf_file, trust_remote_code=False,
                                    use_safetensors=None if source.gguf_file else True)
    finally:
        hf_logging.set_verbosity(verbosity)
    if decoder:
        tokenizer.padding_side = "left"
    return model, tokenizer, decoder


def load_run_predictor(run_dir: str | Path) -> QAPredictor:
    """Rebuild a trained QA model from a trial's run directory (trial.json + trainable.safetensors)."""
    from pydantic import TypeAdapter
    from safetensors.torch import load_file

    from pefteval.config import MethodConfig
    from pefteval.errors import UserError
    from pefteval.methods import apply_method, load_trainable_state

    run_dir = Path(run_dir)
    trial_file, weights = run_dir / "trial.json", run_dir / "trainable.safetensors"
    if not trial_file.is_file() or not weights.is_file():
        raise UserError(f"{run_dir} is not a finished trial's run directory with saved weights (needs trial.json and "
                        "trainable.safetensors; runs of save_weights: false cannot be reloaded)")
    config = json.loads(trial_file.read_text())
    from pefteval.tasks import get_task

    if get_task(config["task"]).kind != "qa":
        raise UserError(f"{run_dir} trained task {config['task']}, not a QA task")
    method = TypeAdapter(MethodConfig).validate_python({**config["method"], "name": config["method_label"]})
    model, tokenizer, decoder = load_qa_model(config["model"])
    applied = apply_method(model, method, 1, decoder, task_kind="qa")
    load_trainable_state(applied.model, load_file(str(weights)))
    return QAPredictor(applied.model, tokenizer, decoder, config["training"], model_id=config.get("key") or
                       run_dir.name)
