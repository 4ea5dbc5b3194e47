"""Sequence classification: a fresh classification head on an encoder or a decoder, trained with
the model's own cross-entropy; the prediction is the argmax class id."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from pefteval.device import autocast, model_device, to_model_device
from pefteval.kinds.base import TaskKind
from pefteval.models import ModelSource, load_for_classification
from pefteval.probe import Probe, make_probe
from pefteval.tasks.base import Example
from pefteval.train import Encoded, collate


def encode(examples: Sequence[Example], tokenizer: Any, max_length: int) -> Encoded:
    if not examples:
        return Encoded([], [])
    texts_a = [x.text_a for x in examples]
    texts_b = [x.text_b for x in examples] if examples[0].text_b is not None else None
    enc = tokenizer(texts_a, texts_b, truncation=True, max_length=max_length)
    keys = [k for k in ("input_ids", "token_type_ids", "attention_mask") if k in enc]
    features = [{k: enc[k][i] for k in keys} for i in range(len(examples))]
    return Encoded(features, [x.label for x in examples])


@torch.no_grad()
def predict(model: nn.Module, data: Encoded, pad_id: int, batch_size: int = 128, precision: str = "bf16") -> list[int]:
    """Predicted label ids, in input order. Batches group similar lengths to save padding."""
    model.eval()
    order = sorted(range(len(data)), key=lambda i: len(data.features[i]["input_ids"]))
    preds = [0] * len(data)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = to_model_device(collate([data.features[i] for i in idx], pad_id), model)
        with autocast(precision, model_device(model).type):
            logits = model(**batch).logits
        for i, p in zip(idx, logits.float().argmax(-1).tolist()):
            preds[i] = p
    return preds


class SequenceClassification(TaskKind):
    name = "classification"
    head = "classification"

    def load_model(self, source: ModelSource, config: Any) -> nn.Module:
        model, self.tokenizer, self.is_decoder = load_for_classification(source, self.task.num_labels,
                                                                         list(self.task.label_names), config,
                                                                         **self.load_options())
        return model

    def encode_train(self, examples: Sequence[Example]) -> Encoded:
        return encode(examples, self.tokenizer, self.hp.max_seq_length)

    def predict(self, model: nn.Module, examples: Sequence[Example]) -> list[int]:
        return predict(model, encode(examples, self.tokenizer, self.hp.max_seq_length), self.pad_id,
                       self.hp.eval_batch_size, self.hp.precision)

    def probe(self, examples: Sequence[Example], n: int) -> Probe | None:
        data = encode(examples[:n], self.tokenizer, self.hp.max_seq_length)
        return make_probe(data.features, self.pad_id, data.labels, n)
