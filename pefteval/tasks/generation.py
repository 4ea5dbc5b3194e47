"""What the instruction-style generation tasks of Table 1 (ViGGO, SQL generation, GSM8K) share.

Each example is a plain user prompt (a chat template is applied later, by the trainer) and
the target text the model learns to produce; ``meta`` carries what the task's metrics need.
Prompt templates are data on :class:`GenTaskSpec`. Each family has its own home, with its
offline file layout, hub source, loader, metrics and scorer: ``pefteval/tasks/viggo.py``,
``pefteval/tasks/sql/`` (Spider or sql-create-context; layout in ``sql/__init__.py``) and
``pefteval/tasks/gsm8k.py``. This module holds the example and spec types, the file and hub
helpers the loaders share, the trial splits, the generation prompting, and
:func:`register_generation_task`, which each family's ``register_tasks()`` calls.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pefteval.errors import DataError
from pefteval.tasks.base import Prompting, Scored, Task, TaskSplits, hold_out_validation, load_hub_split, register


@dataclass(frozen=True)
class GenExample:
    """One prompt/target pair. ``meta`` (not part of equality or hash) holds what the metric
    needs: the gold number (GSM8K), the database id, path and schema (SQL), the source fields."""

    id: str
    prompt: str
    target: str
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class GenTaskSpec:
    """What a generation task is: its prompt text and where its data comes from."""

    name: str
    display: str
    help: str
    instruction: str
    prompt_template: str  # str.format template; fields: instruction and the task's input fields
    hub_path: str
    hub_config: str | None
    metric: str  # the Table 1 accuracy: gsm8k answer accuracy, SQL execution match, ViGGO exact match
    splits: tuple[str, ...] = ("train", "test")

    def render(self, **fields: str) -> str:
        """The user prompt for one example."""
        return self.prompt_template.format(instruction=self.instruction, **fields)


def _missing(path: Path, what: str) -> DataError:
    return DataError(f"{what} not found: {path}. Pass --data-dir pointing at a folder with the release files "
                     "(layout: the README's generation tasks section), or omit --data-dir to read from the hub.")


def _hub_rows(path: str, config: str | None, split: str) -> list[dict[str, Any]]:
    return list(load_hub_split(path, config, split))


def _text_field(row: Any, key: str, where: str, fix: str) -> str:
    value = row.get(key) if isinstance(row, dict) else None
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: missing or empty '{key}'. {fix}")
    return value


# --- splits for a trial -------------------------------------------------------------------------

def make_generation_splits(raw: dict[str, list[GenExample]], cfg: Any, name: str) -> TaskSplits:
    """Train, validation and test of one task for a trial. Validation (model selection) is the
    task's own validation split where it has one (ViGGO), else held out from train; it is never
    taken from test. Every subset is fixed by ``split_seed``."""
    notes: list[str] = []
    pool = list(raw["train"])
    random.Random(cfg.split_seed).shuffle(pool)
    if raw.get("validation"):
        validation = list(raw["validation"])
        random.Random(cfg.split_seed).shuffle(validation)
        if cfg.max_validation_examples is not None:
            validation = validation[: cfg.max_validation_examples]
        train = pool[: cfg.max_train_examples] if cfg.max_train_examples is not None else pool
    else:
        validation, train = hold_out_validation(pool, cfg)
    test = list(raw["test"])
    if cfg.max_eval_examples is not None and cfg.max_eval_examples < len(test):
        random.Random(cfg.split_seed).shuffle(test)
        test = test[: cfg.max_eval_examples]
        validation = validation[: cfg.max_eval_examples]
        notes.append(f"{name}: test capped at {len(test)} of {len(raw['test'])} examples (--max-eval-examples)")
    return TaskSplits(train=train, validation=validation, test=test, notes=notes)


# --- scoring: the task's Table 1 score is ``accuracy``; the others are reported beside it --------

def _rate(hits: list[float | None]) -> float:
    judged = [h for h in hits if h is not None]
    return sum(int(h) for h in judged) / len(judged) if judged else float("nan")


PROMPTING = Prompting(render=lambda x: x.prompt, target=lambda x: x.target)


def register_generation_task(spec: GenTaskSpec, loader: Callable[[Path | None], dict[str, list[GenExample]]],
                             scorer: Callable[[Sequence[str], Sequence[GenExample], bool], Scored],
                             report_columns: tuple[str, ...], column_names: dict[str, str]) -> None:
    """Register the generation task of ``spec``: its splits are ``loader``'s examples cut by
    :func:`make_generation_splits`, ``scorer`` scores them, and ``accuracy`` (the Table 1 score,
    named ``spec.metric`` in the validation curve) selects the epoch and the grid point."""
    register(Task(
        name=spec.name, display=spec.display, help=spec.help, kind="generation",
        splits=lambda data_dir, cfg, seed=0, _load=loader, _name=spec.name: make_generation_splits(
            _load(data_dir), cfg, _name),
        score=scorer, selection_metric="accuracy", metric_name=spec.metric, prompting=PROMPTING,
        report_columns=report_columns, column_names=column_names,
    ))
