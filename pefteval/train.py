"""The training recipe: read top to bottom.

AdamW (weight decay 0 by default), linear warmup then linear decay, gradient
clipping, bf16 autocast on CPU with fp32 master weights, dynamic padding (each
batch is padded to its longest example), evaluation on the validation split after
every epoch, and the best epoch's trainable weights kept. Against
``transformers.Trainer`` at its defaults (fp32, random batches) this trains 3.5-3.9x
faster on MiniLM; most of the gain comes from bf16 and length-grouped batches, and
against a Trainer given the same two settings the loop is 1.05-1.37x faster
(benchmarks/train_throughput.py --matched). The plain loop is kept because it is short,
reads top to bottom, and hooks AdaLoRA's rank allocation in at the right place.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import get_linear_schedule_with_warmup

from pefteval.config import TrainingConfig
from pefteval.errors import TrainingDiverged
from pefteval.methods import load_trainable_state, trainable_state

ProgressFn = Callable[[dict[str, Any]], None]


@dataclass
class Encoded:
    """Tokenised examples, unpadded."""

    features: list[dict[str, Any]]
    labels: list[int]  # class ids for classification; empty when the targets live in the features

    def __len__(self) -> int:
        return len(self.features)


def collate(features: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad sequences to the batch's longest; scalar targets (start/end positions) are stacked."""
    width = max(len(f["input_ids"]) for f in features)
    batch: dict[str, torch.Tensor] = {}
    for key, first in features[0].items():
        if not isinstance(first, list):
            batch[key] = torch.tensor([f[key] for f in features], dtype=torch.long)
            continue
        fill = pad_id if key == "input_ids" else -100 if key == "labels" else 0
        batch[key] = torch.tensor([f[key] + [fill] * (width - len(f[key])) for f in features], dtype=torch.long)
    return batch


def autocast(precision: str, device: str = "cpu"):
    """bf16 autocast when ``precision`` is bf16 (weights stay fp32), else a no-op context."""
    return torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16")


@dataclass
class TrainResult:
    curve: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_validation: float = float("-inf")
    train_seconds: float = 0.0
    examples_seen: int = 0


def batch_order(data: Encoded, batch_size: int, group_by_length: bool, rng: torch.Generator) -> list[list[int]]:
    """Shuffled batches of example indices. With group_by_length, examples are sorted by
    length inside random mega-batches of 50 batches (as HF Trainer's group_by_length), which
    cuts padding; batch order stays random."""
    order = torch.randperm(len(data), generator=rng).tolist()
    if not group_by_length:
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    mega = batch_size * 50
    batches = []
    for start in range(0, len(order), mega):
        chunk = sorted(order[start:start + mega], key=lambda i: len(data.features[i]["input_ids"]))
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    shuffle = torch.randperm(len(batches), generator=rng).tolist()
    return [batches[i] for i in shuffle]


def steps_per_epoch(n_examples: int, batch_size: int) -> int:
    return max(1, math.ceil(n_examples / batch_size))


def train_model(
    model: nn.Module,
    train: Encoded,
    validate: Callable[[nn.Module], float],
    hp: TrainingConfig,
    seed: int,
    pad_id: int,
    on_step: Callable[[int], None] | None = None,
    progress: ProgressFn | None = None,
    metric: str = "accuracy",
    loss_fn: Callable[[nn.Module, dict[str, Any]], torch.Tensor] | None = None,
) -> TrainResult:
    """Train in place; on return the model holds the weights of its best validation epoch.

    ``validate(model)`` scores the model on the validation split after every epoch (higher is
    better: the task's selection metric), named by ``metric`` in the curve. ``loss_fn(model,
    batch)`` replaces the model's own loss (e.g. label-word cross-entropy for prompt-based
    few-shot classification)."""
    torch.manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    # the fused kernel is ~5x faster than the default foreach AdamW on CPU
    optimizer = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay, fused=True)
    per_epoch = steps_per_epoch(len(train), hp.batch_size)
    total_steps = per_epoch * hp.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(hp.warmup_ratio * total_steps), total_steps)
    order_rng = torch.Generator().manual_seed(seed)
    result = TrainResult()
    best_state = None
    step = 0
    for epoch in range(1, hp.epochs + 1):
        model.train()
        started = time.perf_counter()
        loss_sum, loss_n = 0.0, 0
        for idx in batch_order(train, hp.batch_size, hp.group_by_length, order_rng):
            batch = collate([train.features[i] for i in idx], pad_id)
            if train.labels and loss_fn is None:
                batch["labels"] = torch.tensor([train.labels[i] for i in idx], dtype=torch.long)
            with autocast(hp.precision):
                loss = model(**batch).loss if loss_fn is None else loss_fn(model, batch)
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"loss became {loss.item()} at epoch {epoch}, step {step + 1}; lower the learning rate "
                    f"(now {hp.lr}) or use precision: fp32")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, hp.max_grad_norm)
            optimizer.step()
            step += 1
            if on_step is not None:
                on_step(step)  # AdaLoRA's rank allocation reads the gradients, so before zero_grad
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            loss_sum += loss.item() * len(idx)
            loss_n += len(idx)
            result.examples_seen += len(idx)
            if progress is not None:
                progress({"event": "step", "epoch": epoch, "epochs": hp.epochs, "step": step,
                          "total_steps": total_steps, "loss": loss_sum / loss_n})
        result.train_seconds += time.perf_counter() - started
        val_acc = validate(model)
        result.curve.append({"epoch": epoch, "train_loss": loss_sum / max(loss_n, 1), f"validation_{metric}": val_acc})
        if progress is not None:
            progress({"event": "epoch", "epoch": epoch, "epochs": hp.epochs, "train_loss": loss_sum / max(loss_n, 1),
                      "validation": val_acc, "metric": metric})
        if val_acc > result.best_validation:
            result.best_validation, result.best_epoch = val_acc, epoch
            best_state = trainable_state(model) if epoch < hp.epochs else None
    if best_state is not None and result.best_epoch != hp.epochs:
        load_trainable_state(model, best_state)
    model.eval()
    return result
