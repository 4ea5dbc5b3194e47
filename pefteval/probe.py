"""The fixed validation batch the model-based analyses evaluate (Theorem 2's inputs, Theorem
4's validation loss), saved by training as ``probe.safetensors`` so that analyses need neither
the data nor the tokenizer, and every method is measured on the same examples."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from pefteval.files import save_tensors
from pefteval.train import collate

TARGET_KEYS = ("labels", "start_positions", "end_positions", "class_label", "score_index")


@dataclass
class Probe:
    tensors: dict[str, torch.Tensor]
    loss: str = "model"  # "model": the model's own loss; "label_words": few-shot label-word cross-entropy
    label_ids: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.tensors["input_ids"].shape[0])

    def to(self, device: torch.device) -> Probe:
        """The probe's tensors on ``device`` (where the model is)."""
        return Probe({k: v.to(device) for k, v in self.tensors.items()}, self.loss, self.label_ids)

    def head(self, n: int) -> Probe:
        return Probe({k: v[:n] for k, v in self.tensors.items()}, self.loss, self.label_ids)

    def inputs(self) -> dict[str, torch.Tensor]:
        """What the model reads (no targets)."""
        return {k: v for k, v in self.tensors.items() if k not in TARGET_KEYS}

    def save(self, path: Path) -> None:
        meta = {"loss": self.loss, "label_ids": json.dumps(self.label_ids)}
        save_tensors(self.tensors, path, metadata=meta)

    @classmethod
    def load(cls, path: Path) -> Probe:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        return cls(tensors, meta.get("loss", "model"), json.loads(meta.get("label_ids", "[]")))


def make_probe(features: list[dict[str, Any]], pad_id: int, labels: list[int] | None = None, n: int = 16,
               loss: str = "model", label_ids: list[int] | None = None) -> Probe | None:
    """The first ``n`` validation features, padded as in training; None when there are none."""
    if not features:
        return None
    batch = collate(features[:n], pad_id)
    if labels:
        batch["labels"] = torch.tensor(labels[:n], dtype=torch.long)
    return Probe(batch, loss, list(label_ids or []))
