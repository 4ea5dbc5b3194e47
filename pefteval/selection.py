"""Which trials a comparison reports: per task and method, the grid point that validation selects
(the mean over seeds of each trial's selection metric), the records of the most recent setup only.
The report's tables and ``save_weights: selected`` (which keeps only the selected trials' weights)
both read it from here."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from pefteval.metrics import mean_std
from pefteval.tasks import TASKS


def _setup_key(config: dict[str, Any]) -> str:
    """What must be equal for trials to be compared as grid points: all but training and seed."""
    return json.dumps({k: v for k, v in config.items() if k not in ("training", "seed", "save_weights")},
                      sort_keys=True)


def _hp_key(training: dict[str, Any]) -> str:
    return json.dumps(training, sort_keys=True)


def _grid_order(hp_key: str) -> tuple[Any, ...]:
    hp = json.loads(hp_key)
    return (hp.get("batch_size", 0), hp.get("lr", 0.0), hp.get("warmup_ratio", 0.0), hp_key)


def record_kind(rec: dict[str, Any]) -> str:
    """The trial's kind, as its record declares it. Records of releases before the kind was
    recorded: derived as their trial chose it (k_shot: label words; else by the task's data and,
    for QA, the recorded mode)."""
    if "task_kind" in rec:
        return rec["task_kind"]
    cfg = rec["config"]
    if cfg.get("data", {}).get("k_shot") is not None:
        return "label_words"
    data_kind = TASKS[cfg["task"]].kind if cfg["task"] in TASKS else "classification"
    if data_kind == "qa":
        return "generative" if rec.get("qa_mode") == "generative" else "extractive_qa"
    return "generative" if data_kind == "generation" else "classification"


def report_group(rec: dict[str, Any]) -> str:
    """Which table a trial's task goes to: classification, qa, generation or fewshot (data scaling)."""
    if record_kind(rec) == "label_words":
        return "fewshot"
    task = TASKS.get(rec["config"]["task"])
    return task.kind if task is not None else "classification"


def selection_metric(rec: dict[str, Any]) -> str:
    """The metric that selected the trial's epoch (and selects its grid point), as recorded, or
    as its task declares it for records that predate the field."""
    if "selection_metric" in rec:
        return rec["selection_metric"]
    task = TASKS.get(rec["config"]["task"])
    return task.selection_metric if task is not None and record_kind(rec) != "label_words" else "accuracy"


def task_label(config: dict[str, Any]) -> str:
    """The report's name of a trial's task: the task, with ``@k=N`` for a k-shot trial (each k is
    reported, never selected over)."""
    k = config.get("data", {}).get("k_shot")
    return config["task"] if k is None else f"{config['task']}@k={k}"


def _val_score(rec: dict[str, Any]) -> float:
    """The grid point's selection score: the validation value of the trial's selection metric."""
    return rec["metrics"]["validation"][selection_metric(rec)]


@dataclass
class Selection:
    """Per task and method, the chosen grid point's records (one per seed)."""

    tasks: list[str]
    methods: list[str]
    chosen: dict[tuple[str, str], tuple[dict[str, Any], list[dict[str, Any]]]]
    hidden: int


def select_grid_points(records: list[dict[str, Any]]) -> Selection:
    tasks: list[str] = []
    methods: list[str] = []
    # a store can hold trials of several setups (another model, data limit, method config);
    # per task and method only the most recently recorded setup is reported, never pooled
    latest_setup = {(task_label(r["config"]), r["config"]["method_label"]): _setup_key(r["config"]) for r in records}
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    hidden = 0
    for rec in records:
        cfg = rec["config"]
        label = task_label(cfg)
        if _setup_key(cfg) != latest_setup[(label, cfg["method_label"])]:
            hidden += 1
            continue
        if label not in tasks:
            tasks.append(label)
        if cfg["method_label"] not in methods:
            methods.append(cfg["method_label"])
        groups[(label, cfg["method_label"], _hp_key(cfg["training"]))].append(rec)
    chosen = {}
    for task in tasks:
        for method in methods:
            candidates = sorted(((key, recs) for (t, m, key), recs in groups.items() if t == task and m == method),
                                key=lambda kv: _grid_order(kv[0]))
            if not candidates:
                continue
            # best grid point by mean validation score; ties go to the first in sorted order
            # (smaller batch size, then smaller learning rate, then smaller warmup), whatever the storage order
            key, recs = max(candidates, key=lambda kv: mean_std([_val_score(r) for r in kv[1]])[0])
            chosen[(task, method)] = (json.loads(key), recs)
    return Selection(tasks, methods, chosen, hidden)
