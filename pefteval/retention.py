"""``save_weights: selected``: once every trial of a (task, method) group of the sweep is complete
(every seed of every grid point), only the trials at the group's validation-selected grid point
(``selection.select_grid_points``, the report's own choice) keep their trained weights; the others'
``adapter/``, ``model/``, ``bitfit/`` (or legacy ``trainable.safetensors``) are deleted. Their
increments, probe, predictions and analyses stay. Each pruned record loses the weight files from
its ``files`` and says ``weights_removed: true``, so a resumed sweep does not take the missing
weights for a damaged trial and redo it.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from pefteval.artifacts import is_weight_file, remove_weights, saved_entry
from pefteval.files import atomic_write_json
from pefteval.selection import _setup_key, select_grid_points, task_label

POLICIES = ("all", "selected", "none")


def group_of(config: dict[str, Any]) -> tuple[str, str, str]:
    """The group a trial's grid point is selected within: task (with its k), method, setup."""
    return task_label(config), config["method_label"], _setup_key(config)


def prune_unselected(store: Any, out_dir: Path, planned: list[Any], policy: str,
                     touched: set[tuple[str, str, str]] | None = None) -> list[str]:
    """Delete the weights of the complete groups' unselected trials (``planned``: the sweep's
    ``plan.Trial`` list; ``touched``: only these groups, default all). Returns one line per group
    pruned, for the sweep's log."""
    if policy != "selected":
        return []
    groups: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    for trial in planned:
        groups[group_of(trial.config)].append(trial.key)
    complete = store.complete_keys()  # the keys only: records are read for the complete groups alone
    lines = []
    for group, keys in groups.items():
        if touched is not None and group not in touched:
            continue
        if any(k not in complete for k in keys):
            continue  # a seed or grid point still to run (or failed): nothing is selected yet
        records = [store.get(k) for k in keys]
        selection = select_grid_points(records)
        chosen = selection.chosen.get((group[0], group[1]))
        if chosen is None:
            continue
        keep = {r["key"] for r in chosen[1]}
        freed = 0
        removed_trials = 0
        for rec in records:
            if rec["key"] in keep:
                continue
            run_dir = out_dir / rec["run_dir"]
            if rec.get("weights_removed") and saved_entry(run_dir) is None:
                continue  # pruned by an earlier run
            freed += sum(size for name, size in (rec.get("files") or {}).items() if is_weight_file(name))
            remove_weights(run_dir)
            mark_removed(store, run_dir, rec)
            removed_trials += 1
        if removed_trials:
            lines.append(f"save_weights: selected: {group[0]} {group[1]}: kept the weights of the {len(keep)} "
                         f"trial(s) at the selected grid point, removed {removed_trials} other trial(s)' "
                         f"({freed / 1e6:.1f} MB)")
    return lines


def mark_removed(store: Any, run_dir: Path, record: dict[str, Any]) -> None:
    """The record (store and result.json) of a trial whose weights were removed."""
    record = dict(record)
    record["files"] = {n: s for n, s in (record.get("files") or {}).items() if not is_weight_file(n)}
    record["weights_removed"] = True
    store.put(record)
    result = run_dir / "result.json"
    if result.is_file():
        written = json.loads(result.read_text())
        written["weights_removed"] = True
        written["files"] = record["files"]
        atomic_write_json(result, written)
