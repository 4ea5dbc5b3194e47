"""Task registry. A task knows its label set, where its splits come from (a data
directory in canonical release formats, or the hub) and its adversarial sets, which
are extra evaluation splits of the task."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from pefteval.errors import DataError


@dataclass(frozen=True)
class Example:
    text_a: str
    text_b: str | None
    label: int


@dataclass(frozen=True)
class QAExample:
    """One SQuAD-style question: gold answers as texts with character offsets into context."""

    id: str
    question: str
    context: str
    answers: tuple[str, ...]
    answer_starts: tuple[int, ...]
    title: str = ""


# an adversarial item's id is its source question's id plus a suffix: Jia & Liang's
# "-high-conf-turkN" or pefteval's "-<Attack>-N" for the sets it generates
_VARIANT_ID = re.compile(r"^(?P<source>.+?)-(?:high-conf-turk\d+|(?:AddAny|AddAnyExtend|AddAnsCtx|AddNegAns)-\d+)$")


def source_id(question_id: str) -> str:
    """The id of the SQuAD dev question an adversarial item was made from (itself if original)."""
    match = _VARIANT_ID.match(question_id)
    return match.group("source") if match else question_id


@dataclass
class TaskSplits:
    train: list[Any]  # Example for classification tasks, QAExample for QA tasks
    validation: list[Any]
    test: list[Any]
    adversarial: dict[str, list[Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    train_source: str = "train"  # "train", or "dev" when a dev split was divided
    # adversarial sets that depend on the trained model (AddAny): name -> source questions to attack
    model_attacks: dict[str, list[Any]] = field(default_factory=dict)
    attack_pool: list[Any] = field(default_factory=list)  # passages the attacks draw common words from
    attack_source_key: str = ""  # identifies the attacks' source data in their cache key

    def eval_splits(self) -> dict[str, list[Any]]:
        return {"validation": self.validation, "test": self.test, **self.adversarial}


@dataclass(frozen=True)
class ClassificationTask:
    name: str
    display: str
    label_names: tuple[str, ...]
    help: str
    adversarial: tuple[str, ...]
    loader: Callable[..., TaskSplits]
    kind: str = "classification"

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


@dataclass(frozen=True)
class QATask:
    """Reading comprehension: extractive with an encoder, generative with a decoder."""

    name: str
    display: str
    help: str
    adversarial: tuple[str, ...]
    loader: Callable[..., TaskSplits]
    kind: str = "qa"
    label_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class GenerationTask:
    """Instruction-style generation with a decoder LM (prompt -> target text), scored by a
    task metric on greedy generations (GSM8K, SQL, ViGGO)."""

    name: str
    display: str
    help: str
    loader: Callable[..., TaskSplits]
    metric: str  # what the report's main column shows
    kind: str = "generation"
    adversarial: tuple[str, ...] = ()
    label_names: tuple[str, ...] = ()


Task = Union[ClassificationTask, QATask, GenerationTask]
TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
    TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise KeyError(f"unknown task '{name}'; known: {', '.join(TASKS)}")
    return TASKS[name]


def hold_out_validation(pool: list[Any], cfg: Any) -> tuple[list[Any], list[Any]]:
    """(validation, train) from an already shuffled training pool: ``validation_size`` (a
    fraction below 1, else a count) capped at ``max_validation_examples`` and leaving at least
    one example each side; train is the rest, capped at ``max_train_examples``."""
    n_val = int(cfg.validation_size * len(pool)) if cfg.validation_size < 1 else int(cfg.validation_size)
    if cfg.max_validation_examples is not None:
        n_val = min(n_val, cfg.max_validation_examples)
    n_val = max(1, min(n_val, len(pool) - 1))
    validation, train = pool[:n_val], pool[n_val:]
    if cfg.max_train_examples is not None:
        train = train[: cfg.max_train_examples]
    return validation, train


def read_json_file(path: Path, missing: DataError) -> Any:
    """A release's JSON file, parsed; ``missing`` is raised when it is absent, and invalid JSON names
    its line and column."""
    import json

    if not path.is_file():
        raise missing
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})") from None


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


from pefteval.tasks import glue as _glue  # noqa: E402,F401,I001  (registers the GLUE tasks first)
from pefteval.tasks import squad as _squad  # noqa: E402,F401  (registers SQuAD)
from pefteval.tasks import generation as _generation  # noqa: E402,F401  (registers gsm8k, sql, viggo)
from pefteval.tasks import fewshot as _fewshot  # noqa: E402,F401  (registers trec, agnews, emoc, amazon)
