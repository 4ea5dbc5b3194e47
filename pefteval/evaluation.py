"""Scoring a trained model on a trial's splits, with predictions memoised across them.

Validation is predicted after every epoch during training; the chosen epoch's predictions are
kept and reused, never predicted again. An example that several splits share (each Adversarial
SQuAD set repeats its original questions) is predicted once. Every split's predictions are
written in one shape for every kind of trial: ``{split: [{id, prediction, target, score}]}``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from pefteval.files import atomic_write_json
from pefteval.kinds.base import TaskKind
from pefteval.tasks.base import Scored, Task


class Evaluator:
    def __init__(self, task: Task, kind: TaskKind, model: nn.Module):
        self.task, self.kind, self.model = task, kind, model
        self.metrics: dict[str, dict[str, Any]] = {}
        self.rows: dict[str, list[dict[str, Any]]] = {}
        self.seconds = 0.0  # time spent predicting and scoring after training
        self._memo: dict[Any, Any] = {}
        self._epochs: list[tuple[list[Any], Scored]] = []

    def validation_scorer(self, examples: Sequence[Any]) -> Callable[[nn.Module], float]:
        """Scores the model on validation after each epoch with the task's selection metric."""
        def score(model: nn.Module) -> float:
            predictions = self.kind.predict(model, examples)
            scored = self.task.score(predictions, examples, False)
            self._epochs.append((predictions, scored))
            return scored.metrics[self.task.selection_metric]

        return score

    def keep_epoch(self, name: str, examples: Sequence[Any], epoch: int) -> None:
        """The split scored during training, as the chosen epoch saw it."""
        predictions, scored = self._epochs[epoch - 1]
        self._memo.update(zip(examples, predictions))
        self._record(name, examples, predictions, scored)

    def evaluate(self, name: str, examples: Sequence[Any], adversarial: bool = False) -> None:
        started = time.perf_counter()
        todo = [x for x in examples if x not in self._memo]
        self._memo.update(zip(todo, self.kind.predict(self.model, todo) if todo else []))
        predictions = [self._memo[x] for x in examples]
        self._record(name, examples, predictions, self.task.score(predictions, examples, adversarial))
        self.seconds += time.perf_counter() - started

    def _record(self, name: str, examples: Sequence[Any], predictions: list[Any], scored: Scored) -> None:
        self.metrics[name] = scored.metrics
        labels = self.task.label_names
        self.rows[name] = [{"id": getattr(x, "id", None) or str(i),
                            "prediction": labels[p] if labels and isinstance(p, int) else p,
                            "target": gold(x, labels),
                            "score": s}
                           for i, (x, p, s) in enumerate(zip(examples, predictions, scored.per_example))]

    def save(self, path: Path) -> None:
        atomic_write_json(path, self.rows)


def gold(example: Any, labels: Sequence[str]) -> Any:
    """The reference an example is scored against, as predictions.json shows it."""
    if hasattr(example, "answers"):
        return list(example.answers)
    if hasattr(example, "target"):
        return example.target
    return labels[example.label] if labels else example.label
