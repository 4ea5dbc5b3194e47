"""The local executor: runs every planned trial that the store does not already
hold as complete (and whose completeness still holds: see pefteval.provenance), each in its
own process, and records it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from pefteval.distributed import launch_command
from pefteval.errors import OutputError, UserError
from pefteval.files import atomic_write_json, make_dir, write_error
from pefteval.plan import Trial
from pefteval.provenance import DataCheck, missing_files
from pefteval.store import ResultStore
from pefteval.tasks import TASKS, Task
from pefteval.worker import EVENTS, context, trial_main


@dataclass
class SweepSummary:
    planned: int = 0
    skipped: int = 0
    completed: int = 0
    failed: list[tuple[Trial, str]] = field(default_factory=list)
    interrupted: bool = False


def run_dir_for(out_dir: Path, trial: Trial) -> Path:
    task = trial.task if trial.k_shot is None else f"{trial.task}-k{trial.k_shot}"
    return out_dir / "runs" / f"{task}__{trial.method}__seed{trial.seed}__{trial.key}"


def _fmt_time(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Progress:
    """Where a sweep is. On a terminal one line redrawn in place; otherwise a line per
    trial and per epoch, so logs stay readable."""

    def __init__(self, total: int, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.total = total
        self.durations: list[float] = []
        self.index = 0
        self.trial: Trial | None = None
        self.trial_started = 0.0
        self.last_draw = 0.0

    def _sweep_eta(self) -> str:
        if not self.durations:
            return "?"
        remaining = self.total - self.index
        return _fmt_time(sum(self.durations) / len(self.durations) * remaining)

    def _emit(self, text: str, final: bool = False) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def start(self, index: int, trial: Trial) -> None:
        self.index, self.trial, self.trial_started = index, trial, time.time()
        if not self.tty:
            self._emit(f"[trial {index}/{self.total}] {trial.describe()} (sweep time left ~{self._sweep_eta()})")

    def event(self, event: dict[str, Any]) -> None:
        head = f"[trial {self.index}/{self.total}] {self.trial.method} {self.trial.task} seed {self.trial.seed}"
        kind = event.get("event")
        if kind == "step" and self.tty and time.time() - self.last_draw > 0.25:
            self.last_draw = time.time()
            elapsed = time.time() - self.trial_started
            left = elapsed / event["step"] * (event["total_steps"] - event["step"])
            self._emit(f"{head} | epoch {event['epoch']}/{event['epochs']} step {event['step']}/{event['total_steps']}"
                       f" | loss {event['loss']:.4f} | trial ~{_fmt_time(left)} left | sweep ~{self._sweep_eta()} left")
        elif kind == "epoch":
            self._emit(f"{head} | epoch {event['epoch']}/{event['epochs']} done: train loss {event['train_loss']:.4f},"
                       f" validation {event['metric']} {event['validation']:.4f}", final=True)
        elif kind == "evaluate" and self.tty:
            self._emit(f"{head} | evaluating")
        elif kind == "analyse" and self.tty:
            self._emit(f"{head} | saving weights and increments, per-model analyses")
        elif kind == "attack":
            self._emit(f"{head} | generating {event['attack']} against the trained model "
                       f"({event['questions']} source questions)", final=not self.tty)

    def finish(self, record: dict[str, Any]) -> None:
        took = time.time() - self.trial_started
        self.durations.append(took)
        if record["status"] == "complete":
            task = TASKS[self.trial.task]  # planned trials name registered tasks
            scores = ", ".join(f"{k} {_headline(v, task)}" for k, v in record["metrics"].items())
            self._emit(f"[trial {self.index}/{self.total}] done in {_fmt_time(took)}: {scores}", final=True)
        else:
            self._emit(f"[trial {self.index}/{self.total}] FAILED: {record['error']}", final=True)


def _headline(metrics: dict[str, Any], task: Task) -> str:
    """One split's score for the progress line: the task's report columns, else its selection
    metric (the worst case where the split is scored per source question)."""
    columns = [c for c in task.report_columns if c in metrics] or [task.selection_metric]
    if all(f"worst_{c}" in metrics for c in columns):
        columns = [f"worst_{c}" for c in columns]
    if len(columns) == 1:
        return f"{metrics[columns[0]]:.4f}"
    names = [task.column_names.get(c.removeprefix("worst_"), c) for c in columns]
    return f"{'/'.join(names)} {'/'.join(f'{metrics[c]:.3f}' for c in columns)}"


@dataclass(frozen=True)
class Launch:
    """How each trial's process starts: forked from the fork server (one process), or under
    ``accelerate launch`` on ``num_processes`` processes, with an accelerate config file or DDP."""

    num_processes: int = 1
    accelerate_config: Path | None = None

    @property
    def distributed(self) -> bool:
        return self.num_processes > 1 or self.accelerate_config is not None


def run_one(trial: Trial, run_dir: Path, data_dir: Path | None, progress: Progress,
            analysis: dict[str, Any] | None = None, threads: int | None = None,
            launch: Launch | None = None) -> dict[str, Any]:
    """Run one trial in its own process; returns its record. A trial that could not save everything
    it promises is failed, and its partial files are removed (its trial.json, log.txt and result.json
    stay, to say what happened). A failure to set the trial up (its directory, its trial.json) raises
    OutputError: the disk that cannot take those cannot take a trial either."""
    try:
        if run_dir.exists():
            shutil.rmtree(run_dir)  # leftovers of an interrupted, failed or damaged attempt
        make_dir(run_dir)
        # the analysis options and the runtime settings (device, threads) ride along outside the
        # trial's identity: they never change what it computes beyond float rounding
        written = trial.resolved.to_json()
        if analysis is not None:
            written["analysis"] = analysis
        if threads is not None:
            written["threads"] = threads
        atomic_write_json(run_dir / "trial.json", {**written, "key": trial.key})
    except OSError as err:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise write_error(run_dir, err) from None
    except OutputError:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    if launch is not None and launch.distributed:
        record = _run_launched(run_dir, data_dir, progress, launch)
    else:
        record = _run_forked(run_dir, data_dir, progress)
    if record["status"] != "complete":
        remove_partial(run_dir)
    return record


def _run_forked(run_dir: Path, data_dir: Path | None, progress: Progress) -> dict[str, Any]:
    ctx = context()
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=trial_main, args=(str(run_dir), str(data_dir) if data_dir else None, sender))
    proc.start()
    sender.close()
    record = None
    try:
        while True:
            try:
                event = receiver.recv()
            except EOFError:
                break
            if event.get("event") == "result":
                record = event["record"]
            else:
                progress.event(event)
        proc.join()
    except BaseException:
        proc.kill()
        proc.join()
        raise
    finally:
        receiver.close()
    if record is None:  # the process died before it could say (killed, out of memory, a crash in C)
        tail = _tail(run_dir / "log.txt")
        record = {"status": "failed", "error": f"trial process exited with code {proc.exitcode}: {' | '.join(tail)}"}
    return record


def _run_launched(run_dir: Path, data_dir: Path | None, progress: Progress, launch: Launch) -> dict[str, Any]:
    """The trial under ``accelerate launch`` (a process group of its own, killed on Ctrl-C); its
    main rank's progress events are read from events.jsonl as they come, its record from
    result.json. What the launcher itself prints goes to launch.txt."""
    command = launch_command(run_dir, data_dir, launch.num_processes, launch.accelerate_config)
    with open(run_dir / "launch.txt", "w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    events, offset = run_dir / EVENTS, 0
    try:
        while True:
            finished = proc.poll() is not None
            offset = _replay(events, offset, progress)
            if finished:
                break
            time.sleep(0.1)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    result_path = run_dir / "result.json"
    if result_path.exists():
        return json.loads(result_path.read_text())
    tail = [*_tail(run_dir / "log.txt"), *_tail(run_dir / "launch.txt")]
    return {"status": "failed", "error": f"accelerate launch exited with code {proc.returncode}: {' | '.join(tail)}"}


def _replay(events: Path, offset: int, progress: Progress) -> int:
    """Show the events written since ``offset`` (whole lines only); returns the new offset."""
    if not events.is_file():
        return offset
    with open(events, encoding="utf-8") as f:
        f.seek(offset)
        while True:
            line = f.readline()
            if not line.endswith("\n"):
                return offset
            offset += len(line.encode("utf-8"))
            progress.event(json.loads(line))


def _tail(path: Path, lines: int = 3) -> list[str]:
    return path.read_text(errors="replace").strip().splitlines()[-lines:] if path.is_file() else []


def remove_partial(run_dir: Path) -> None:
    """Delete what a failed trial left but trial.json, log.txt and result.json."""
    keep = {"trial.json", "log.txt", "result.json"}
    for path in sorted(run_dir.iterdir()) if run_dir.is_dir() else []:
        if path.name in keep:
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def run_trials(trials: list[Trial], out_dir: Path, data_dir: Path | None, experiment: str,
               stream: TextIO | None = None, analysis: dict[str, Any] | None = None,
               data_reads: dict[str, str] | None = None, accept_data_change: bool = False,
               threads: int | None = None, launch: Launch | None = None) -> SweepSummary:
    """Run every trial the store does not hold as complete, and redo the complete ones whose run
    directory lost files. A complete trial whose data changed since it ran is an error (it would be
    reported as if trained on the current data) unless ``accept_data_change``, which redoes it.
    ``data_reads`` is what planning read of the data (see ``tasks.base.track_data_reads``)."""
    stream = stream or sys.stderr
    summary = SweepSummary(planned=len(trials))
    with ResultStore(out_dir / "results.sqlite") as store:
        todo = trials_to_run(trials, store.complete_records(), out_dir, DataCheck(data_dir, data_reads or {}),
                             accept_data_change, stream)
        summary.skipped = len(trials) - len(todo)
        progress = Progress(len(todo), stream)
        try:
            for i, trial in enumerate(todo, start=1):
                progress.start(i, trial)
                run_dir = run_dir_for(out_dir, trial)
                record = run_one(trial, run_dir, data_dir, progress, analysis, threads, launch)
                record.update(key=trial.key, config=trial.config, experiment=experiment,
                              run_dir=str(run_dir.relative_to(out_dir)))
                store.put(record)
                progress.finish(record)
                if record["status"] == "complete":
                    summary.completed += 1
                else:
                    summary.failed.append((trial, record["error"]))
        except KeyboardInterrupt:
            summary.interrupted = True
    return summary


def trials_to_run(trials: list[Trial], complete: dict[str, dict[str, Any]], out_dir: Path, data: DataCheck,
                  accept_data_change: bool, stream: TextIO) -> list[Trial]:
    """The planned trials not complete in the store, and those whose completeness no longer holds."""
    todo, changed = [], []
    for trial in trials:
        record = complete.get(trial.key)
        if record is None:
            todo.append(trial)
            continue
        run_dir = out_dir / record.get("run_dir", run_dir_for(out_dir, trial).relative_to(out_dir))
        lost = missing_files(run_dir, record)
        if lost:
            stream.write(f"redoing {trial.describe()}: complete in results.sqlite, but {run_dir} lacks "
                         f"{', '.join(lost)}\n")
            todo.append(trial)
            continue
        changes = data.changes(record.get("data_fingerprint"))
        if changes:
            changed.append((trial, changes))
            todo.append(trial)
    if changed and not accept_data_change:
        lines = [f"  {t.describe()}: {'; '.join(c[:3])}" + (f"; and {len(c) - 3} more" if len(c) > 3 else "")
                 for t, c in changed[:5]]
        more = [f"  and {len(changed) - 5} more trial(s)"] if len(changed) > 5 else []
        raise UserError("\n".join([
            f"{len(changed)} complete trial(s) in {out_dir} were trained on other data than the data now:",
            *lines, *more,
            f"run into a new --out to keep both, or pass --accept-data-change to retrain these "
            f"{len(changed)} trial(s) here on the current data (their results are replaced)"]))
    for trial, changes in changed:
        stream.write(f"redoing {trial.describe()}: its data changed ({'; '.join(changes[:3])})\n")
    return todo
