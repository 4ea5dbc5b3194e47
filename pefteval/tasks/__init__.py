"""Task registry. A task knows its label set, where its splits come from (a data
directory in canonical release formats, or the hub) and its adversarial sets, which
are extra evaluation splits of the task."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pefteval.errors import DataError


@dataclass(frozen=True)
class Example:
    text_a: str
    text_b: str | None
    label: int


@dataclass
class TaskSplits:
    train: list[Example]
    validation: list[Example]
    test: list[Example]
    adversarial: dict[str, list[Example]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    train_source: str = "train"  # "train", or "dev" when a dev split was divided

    def eval_splits(self) -> dict[str, list[Example]]:
        return {"validation": self.validation, "test": self.test, **self.adversarial}


@dataclass(frozen=True)
class ClassificationTask:
    name: str
    display: str
    label_names: tuple[str, ...]
    help: str
    adversarial: tuple[str, ...]
    loader: Callable[..., TaskSplits]

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


TASKS: dict[str, ClassificationTask] = {}


def register(task: ClassificationTask) -> ClassificationTask:
    TASKS[task.name] = task
    return task


def get_task(name: str) -> ClassificationTask:
    if name not in TASKS:
        raise KeyError(f"unknown task '{name}'; known: {', '.join(TASKS)}")
    return TASKS[name]


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """--data-dir, else $PEFTEVAL_DATA_DIR, else None (read from the hub)."""
    chosen = data_dir if data_dir is not None else os.environ.get("PEFTEVAL_DATA_DIR") or None
    if chosen is None:
        return None
    path = Path(chosen).expanduser()
    if not path.is_dir():
        origin = "--data-dir" if data_dir is not None else "PEFTEVAL_DATA_DIR"
        raise DataError(f"data directory not found: {path} (from {origin}). Point it at a folder laid out as "
                        "<dataset>/<file> (e.g. glue/SST-2/train.tsv), or omit it to read from the hub.")
    return path


from pefteval.tasks import glue as _glue  # noqa: E402,F401  (registers the GLUE tasks)
