"""What a task is: data plus a fixed set of hooks, as lm-evaluation-harness's tasks are.

A task declares its splits (clean, adversarial, and sets made against the trained model),
how an example reads as a prompt, how predictions are scored, which metric selects the
epoch (higher is better), and which columns the report shows. It never touches a model: the
model-facing half of a trial is its kind (``pefteval.kinds``). This module imports nothing
of pefteval but ``errors`` and ``metrics``, so every task family can build on it without a cycle.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pefteval.errors import DataError
from pefteval.metrics import accuracy


@dataclass(frozen=True)
class Example:
    """One classification input (a sentence, or a pair) with its class id."""

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


@dataclass
class TaskSplits:
    train: list[Any]
    validation: list[Any]
    test: list[Any]
    adversarial: dict[str, list[Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    train_source: str = "train"  # "train", or "dev" when a dev split was divided
    # sets that depend on the trained model (AddAny): name -> the source examples to attack
    model_attacks: dict[str, list[Any]] = field(default_factory=dict)
    attack_pool: list[Any] = field(default_factory=list)  # passages the attacks draw common words from
    attack_source_key: str = ""  # identifies the attacks' source data in their cache key

    def eval_splits(self) -> dict[str, list[Any]]:
        return {"validation": self.validation, "test": self.test, **self.adversarial}


@dataclass
class Scored:
    """One split's score: the aggregate metrics and each example's own score (None where an
    example cannot be judged, e.g. a broken gold SQL query)."""

    metrics: dict[str, Any]
    per_example: list[float | None]


@dataclass(frozen=True)
class Prompting:
    """How a decoder reads an example and answers: ``render`` gives the user text (wrapped in the
    tokenizer's chat template when it has one, else followed by ``plain_suffix``), ``target`` the
    text the model learns (after ``answer_prefix`` when there is no chat template), ``shorten``
    cuts a training prompt that does not fit (else such an example is left out), and ``parse``
    turns a generation into the prediction."""

    render: Callable[..., str]
    target: Callable[[Any], str]
    plain_suffix: str = "\n"
    answer_prefix: str = ""
    shorten: Callable[[Any, Any, int], str] | None = None
    parse: Callable[[str], str] = str.strip
    # the paper's LoRA targets for decoders (attention, MLP, embeddings, LM head) unless the
    # method names its own; False keeps peft's defaults
    paper_lora_targets: bool = True


@dataclass(frozen=True)
class Task:
    """A task: its data, its prompts and its scorer.

    ``kind`` is the shape of its data: ``classification`` (class labels), ``qa`` (SQuAD-style
    questions; extractive with an encoder, generative with a decoder) or ``generation``
    (prompt -> target text). ``splits(data_dir, data_config, seed)`` draws the trial's splits
    (the seed matters only for a k-shot sample). ``score(predictions, examples, adversarial)``
    scores one split. ``selection_metric`` is the key of the metric that selects the epoch;
    ``metric_name`` names it in the validation curve."""

    name: str
    display: str
    help: str
    kind: Literal["classification", "qa", "generation"]
    splits: Callable[[Path | None, Any, int], TaskSplits]
    score: Callable[[Sequence[Any], Sequence[Any], bool], Scored]
    selection_metric: str
    metric_name: str = ""
    label_names: tuple[str, ...] = ()
    adversarial: tuple[str, ...] = ()
    prompting: Prompting | None = None
    fewshot: Any = None  # a FewShotSpec: the label-word pattern used when data.k_shot is set
    # a set generated against the trained model after training (one of ``splits.model_attacks``):
    # (name, splits, predictor, data config) -> its examples, evaluated like the others
    late_split: Callable[[str, TaskSplits, Any, Any], list[Any]] | None = None
    report_columns: tuple[str, ...] = ()  # metric keys the report shows for this task, main first
    column_names: dict[str, str] = field(default_factory=dict)  # how the report names those metrics
    short_names: dict[str, str] = field(default_factory=dict)  # compact column headers of its adversarial sets

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def curve_metric(self) -> str:
        return self.metric_name or self.selection_metric


TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
    TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise KeyError(f"unknown task '{name}'; known: {', '.join(TASKS)}")
    return TASKS[name]


# --- shared by the task families --------------------------------------------------------------

def score_accuracy(predictions: Sequence[int], examples: Sequence[Any], adversarial: bool = False) -> Scored:
    """Accuracy of predicted class ids against ``example.label``."""
    if len(predictions) != len(examples):
        raise ValueError(f"{len(predictions)} predictions for {len(examples)} labels")
    labels = [x.label for x in examples]
    hits = [float(p == y) for p, y in zip(predictions, labels)]
    return Scored({"accuracy": accuracy(predictions, labels), "n": len(examples)}, hits)


def shuffled(items: Sequence[Any], seed: int) -> list[Any]:
    out = list(items)
    random.Random(seed).shuffle(out)
    return out


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
