"""Where a sweep in a results directory stands (``pefteval status OUT``), read without its lock.

Planned trials come from ``OUT/experiment.yaml`` (what the last ``pefteval run`` was given, after
its command-line overrides), complete and failed ones from ``results.sqlite``, running ones from
``OUT/running.json``, which the sweep rewrites as each trial starts and ends and which counts only
while a live run holds the directory's lock.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pefteval.config import ExperimentConfig
from pefteval.errors import UserError
from pefteval.lock import holder, is_held

RUNNING = "running.json"


@dataclass
class Status:
    out: Path
    experiment: str
    planned: int
    complete: int
    failed: list[tuple[str, str]] = field(default_factory=list)  # (trial, first line of its error)
    running: list[dict[str, Any]] = field(default_factory=list)
    run: dict[str, Any] | None = None  # the live run holding the lock (pid, host, started, command)
    jobs: int = 1
    mean_seconds: float | None = None  # of the complete trials

    @property
    def remaining(self) -> int:
        return max(0, self.planned - self.complete)

    def eta_seconds(self) -> float | None:
        if self.mean_seconds is None:
            return None
        return self.mean_seconds * self.remaining / max(1, min(self.jobs, self.remaining or 1))

    def lines(self) -> list[str]:
        from pefteval.sweep import fmt_time

        out = [f"{self.out}: {self.experiment}, {self.planned} trial(s) planned (from experiment.yaml)",
               f"  complete  {self.complete}",
               f"  failed    {len(self.failed)}"]
        out += [f"    {trial}: {error}" for trial, error in self.failed[:20]]
        if len(self.failed) > 20:
            out.append(f"    and {len(self.failed) - 20} more")
        if self.run is None:
            out.append("  running   0 (no `pefteval run` holds this directory now)")
        else:
            out.append(f"  running   {len(self.running)} (pefteval run, pid {self.run.get('pid')} on "
                       f"{self.run.get('host')}, since {_clock(self.run.get('started'))}, {self.jobs} at a time)")
            now = time.time()
            for job in self.running:
                where = (f" on {job['where']}" if job.get("where") else "") + \
                    (f" on GPU {job['gpus']}" if job.get("gpus") else "")
                out.append(f"    [trial {job['index']}] {job['trial']}{where}, pid {job.get('pid', '?')}, for "
                           f"{fmt_time(now - job['started'])}")
        out.append(f"  remaining {self.remaining} (running ones included)")
        eta = self.eta_seconds()
        out.append(f"  time left ~{fmt_time(eta)} (mean {fmt_time(self.mean_seconds or 0)} per trial over "
                   f"{self.complete} complete, {max(1, self.jobs)} at a time)" if eta is not None
                   else "  time left ? (no trial complete yet)")
        return out


def _clock(stamp: Any) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp)) if isinstance(stamp, (int, float)) else "?"


def check_results_dir(out: Path) -> Path:
    """OUT/experiment.yaml, which every results directory of `pefteval run` holds."""
    if not (out / "experiment.yaml").is_file():
        raise UserError(f"{out} holds no experiment.yaml: not a results directory of `pefteval run` (or its run "
                        "stopped before it wrote anything)")
    return out / "experiment.yaml"


def sweep_status(out: Path, exp: ExperimentConfig) -> Status:
    """``exp``: OUT/experiment.yaml as `pefteval run` plans it (api.plan_run: the same keys)."""
    from pefteval.plan import plan_trials
    from pefteval.store import ResultStore
    store_path = out / "results.sqlite"
    rows: dict[str, dict[str, Any]] = {}
    if store_path.exists():
        with ResultStore(store_path, read_only=True) as store:
            # by what the trial is, numbers compared as numbers: experiment.yaml writes a default the
            # run computed as 16 as 16.0, which the store's key hashed as 16
            rows = {_same(r["config"]): r for r in store.records(status=None) if isinstance(r.get("config"), dict)}
    # the data source is part of a trial's identity: the one that matches the store is the run's
    plans = {source: plan_trials(exp, source) for source in ("local", "hub")}
    trials = max(plans.values(), key=lambda ts: sum(_same(t.config) in rows for t in ts))
    found = [(t, rows.get(_same(t.config))) for t in trials]
    complete = [r for _, r in found if r is not None and r.get("status") == "complete"]
    failed = [(t.describe(), str(r.get("error") or "").splitlines()[0] if r.get("error") else "")
              for t, r in found if r is not None and r.get("status") != "complete"]
    seconds = [r["wall_seconds"] for r in complete if isinstance(r.get("wall_seconds"), (int, float))]
    status = Status(out, exp.name, len(trials), len(complete), failed,
                    mean_seconds=sum(seconds) / len(seconds) if seconds else None)
    if is_held(out):
        status.run = holder(out) or {}
        running = _read_running(out / RUNNING)
        if isinstance(running, dict) and running.get("pid") == status.run.get("pid"):
            status.running = list(running.get("trials", []))
            status.jobs = int(running.get("jobs", 1))
    return status


def _read_running(path: Path) -> Any:
    import json

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None  # none yet, or caught mid-replace on a file system without atomic renames


def _same(identity: Any) -> str:
    """A trial's identity as a string in which 16 and 16.0 are the same number."""
    import json

    def numbers(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: numbers(v) for k, v in value.items()}
        if isinstance(value, list):
            return [numbers(v) for v in value]
        if isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return value

    return json.dumps(numbers(identity), sort_keys=True)
