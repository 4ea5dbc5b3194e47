"""The Table-1-shaped report of generation tasks: rows are methods, columns the tasks' main
scores (GSM8K answer accuracy, SQL execution accuracy, ViGGO exact match) and their average,
mean (sample std) over seeds at the grid point selected on validation; the other metrics
(SQL exact match, ViGGO slot precision/recall/F1) in a second table."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from pefteval.metrics import mean_std
from pefteval.reporting.fmt import mean_std_cell
from pefteval.tasks import TASKS


def _secondary(task: str) -> list[tuple[str, str]]:
    """The task's report columns after its main one, with the names it gives them."""
    spec = TASKS.get(task)
    if spec is None:
        return []
    return [(k, spec.column_names.get(k, k)) for k in spec.report_columns[1:]]


def _main_name(task: str) -> str:
    spec = TASKS.get(task)
    return spec.column_names.get(spec.selection_metric, spec.selection_metric) if spec else "accuracy"


@dataclass
class GenTable:
    tasks: list[str]
    scores: dict[str, dict[str, dict[str, tuple[float, float]]]] = field(default_factory=dict)  # method->task->metric
    seeds: dict[str, int] = field(default_factory=dict)

    def average(self, method: str) -> float:
        cells = self.scores.get(method, {})
        if any(t not in cells for t in self.tasks):
            return float("nan")
        return sum(cells[t]["accuracy"][0] for t in self.tasks) / len(self.tasks)


def build_generation(sel: Any, tasks: list[str]) -> GenTable | None:
    if not tasks:
        return None
    table = GenTable(tasks)
    for (task, method), (_hp, recs) in sel.chosen.items():
        if task not in tasks:
            continue
        tests = [r["metrics"]["test"] for r in recs]
        keys = ["accuracy"] + [k for k, _ in _secondary(task)]
        table.scores.setdefault(method, {})[task] = {k: mean_std([m[k] for m in tests]) for k in keys
                                                     if all(k in m for m in tests)}
        table.seeds[method] = len(recs)
    return table


def generation_rows(table: GenTable, methods: list[str], extra: dict[str, list[str]],
                    memory_headers: tuple[str, ...] = ("Peak MB",)) -> tuple[list[str], list[list[str]]]:
    """Main table: method, one column per task, average, then the ``extra`` columns per method."""
    header = ["Method", *table.tasks, "Average", "Trainable", "%", "Time (s)", *memory_headers]
    body = []
    for method in methods:
        if method not in table.scores:
            continue
        cells = table.scores[method]
        avg = table.average(method)
        body.append([method, *[mean_std_cell(cells[t]["accuracy"]) if t in cells else "–" for t in table.tasks],
                     "–" if math.isnan(avg) else f"{100 * avg:.2f}", *extra[method]])
    return header, body


def secondary_rows(table: GenTable, methods: list[str]) -> tuple[list[str], list[list[str]]] | None:
    cols = [(t, k, f"{t} {label}") for t in table.tasks for k, label in _secondary(t)]
    if not cols:
        return None
    header = ["Method", *[c[2] for c in cols]]
    body = [[m, *[mean_std_cell(table.scores[m].get(t, {}).get(k)) for t, k, _ in cols]] for m in methods
            if m in table.scores]
    return header, body


def notes(table: GenTable) -> list[str]:
    return ["Generation tasks, in %, mean (sample std) over seeds on the test split: "
            + "; ".join(f"{t}: {_main_name(t)}" for t in table.tasks)
            + ". Answers are generated greedily (batched, capped at max_new_tokens)."]
