"""The local executor: runs every planned trial that the store does not already
hold as complete (and whose completeness still holds: see pefteval.provenance), each in its
own process, and records it."""

from __future__ import annotations

import json
import multiprocessing.connection
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
from pefteval.retention import group_of, prune_unselected
from pefteval.store import ResultStore
from pefteval.tasks import TASKS, Task
from pefteval.tracking import TrackingConfig, with_trackers
from pefteval.worker import EVENTS, context, trial_main


@dataclass
class SweepSummary:
    planned: int = 0
    skipped: int = 0
    completed: int = 0
    failed: list[tuple[Trial, str]] = field(default_factory=list)
    interrupted: bool = False
    pruned: list[str] = field(default_factory=list)  # save_weights: selected, one line per group


def run_dir_for(out_dir: Path, trial: Trial) -> Path:
    task = trial.task if trial.k_shot is None else f"{trial.task}-k{trial.k_shot}"
    return out_dir / "runs" / f"{task}__{trial.method}__seed{trial.seed}__{trial.key}"


def fmt_time(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


# a live line: its parts in display order, each from its fullest form to its shortest ("" drops it),
# and the order in which parts give way when the line is wider than the terminal (see fit_line)
LiveLine = tuple[list[tuple[str, ...]], list[int], str]


def terminal_width(stream: TextIO) -> int:
    """Columns of the terminal ``stream`` writes to, read anew at every call so that a resize shows
    at the next draw: ``COLUMNS`` when set (as ``shutil.get_terminal_size`` has it), else the
    terminal's own size (the progress goes to stderr, which ``shutil`` does not ask), else shutil's."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    try:
        size = os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, ValueError, OSError):  # no file descriptor, or not a terminal
        size = 0
    return size if size > 0 else shutil.get_terminal_size().columns


def fit_line(parts: list[tuple[str, ...]], order: list[int], width: int, sep: str = " | ") -> str:
    """The parts joined by ``sep``, at most ``width - 1`` characters (the cursor never reaches the
    last column, where some terminals wrap at once). Each index in ``order`` moves that part to its
    next shorter form, least important first, until the line fits; if it still does not, it is cut
    at a word boundary (mid-word only where one word is wider than the terminal)."""
    limit = max(1, width - 1)
    forms = [0] * len(parts)

    def render() -> str:
        return sep.join(p[f] for p, f in zip(parts, forms) if p[f])

    line = render()
    for i in order:
        if len(line) <= limit:
            return line
        forms[i] = min(forms[i] + 1, len(parts[i]) - 1)
        line = render()
    if len(line) <= limit:
        return line
    cut = line[:limit + 1].rsplit(" ", 1)[0].rstrip(" |,") if " " in line[:limit + 1] else ""
    return cut if cut and len(cut) <= limit else line[:limit]


class Progress:
    """Where a sweep is. On a terminal: with one trial at a time one line redrawn in place; with
    several, one line per running trial and a sweep line, redrawn as a block. A redrawn line is
    cut to the terminal's width (its least important parts go first: ``fit_line``), so that it
    never wraps and leaves no debris when redrawn. Otherwise a line per trial and per epoch, so
    logs stay readable."""

    def __init__(self, total: int, stream: TextIO | None = None, jobs: int = 1):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.total = total
        self.jobs = jobs
        self.durations: list[float] = []
        self.done = 0
        self.failed = 0
        self.running: dict[int, tuple[Trial, float]] = {}  # index -> (trial, started)
        self.lines: dict[int, LiveLine] = {}  # index -> its live line (several running, on a terminal)
        self.drawn = 0  # lines of the live block on screen
        self.last_draw = 0.0

    def _sweep_eta(self) -> str:
        if not self.durations:
            return "?"
        remaining = self.total - self.done
        parallel = max(1, min(self.jobs, remaining))
        return fmt_time(sum(self.durations) / len(self.durations) * remaining / parallel)

    def _block(self) -> bool:
        return self.tty and self.jobs > 1

    def _emit(self, text: str, final: bool = False) -> None:
        """A line that stays (``final``: it may wrap), or on a terminal the one live line, redrawn
        (cut to the terminal's width)."""
        if self._block():
            self._clear_block()
            if final:
                self.stream.write(text + "\n")
            self._draw_block()
        elif self.tty:
            if not final:
                text = fit_line([(text,)], [], terminal_width(self.stream))
            self.stream.write("\r\033[K" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def _emit_live(self, index: int, live: LiveLine) -> None:
        if self._block():
            self.lines[index] = live
            self._emit("")
        else:
            self.stream.write("\r\033[K" + fit_line(*live[:2], terminal_width(self.stream), live[2]))
            self.stream.flush()

    def _clear_block(self) -> None:
        if self.drawn:
            self.stream.write(f"\033[{self.drawn}F\033[J")
        self.drawn = 0

    def _draw_block(self) -> None:
        width = terminal_width(self.stream)
        lives = [self.lines.get(i, self._doing(i)) for i in sorted(self.running)]
        lives.append(([(f"sweep: {self.done}/{self.total} done",), (f"{self.failed} failed", ""),
                       (f"{len(self.running)} running", ""), (f"~{self._sweep_eta()} left", "")], [2, 1, 3], ", "))
        self.stream.write("".join(fit_line(parts, order, width, sep) + "\n" for parts, order, sep in lives))
        self.drawn = len(lives)

    def _heads(self, index: int) -> tuple[str, str]:
        trial = self.running[index][0]
        what = f"{trial.method} {trial.task} seed {trial.seed}"
        return f"[trial {index}/{self.total}] {what}", f"[{index}/{self.total}] {what}"

    def _head(self, index: int) -> str:
        return self._heads(index)[0]

    def _doing(self, index: int, *forms: str) -> LiveLine:
        """A trial's live line: its head, then what it is doing (``forms``, fullest first). Where the
        terminal is narrow what it is doing is shortened first, then the head; what it is doing goes last."""
        if not forms:
            return [self._heads(index)], [0], " | "
        return [self._heads(index), (*forms, "")], [*[1] * (len(forms) - 1), 0, 1], " | "

    def start(self, index: int, trial: Trial, where: str = "") -> None:
        self.running[index] = (trial, time.time())
        if not self.tty:
            self._emit(f"[trial {index}/{self.total}] {trial.describe()}{where} (sweep time left ~{self._sweep_eta()})")
        elif self._block():
            self._emit("")

    def event(self, index: int, event: dict[str, Any]) -> None:
        head = self._head(index)
        kind = event.get("event")
        live = None
        if kind == "step" and self.tty and time.time() - self.last_draw > 0.25:
            self.last_draw = time.time()
            live = self._step_line(index, event)
        elif kind == "epoch":
            self._emit(f"{head} | epoch {event['epoch']}/{event['epochs']} done: train loss {event['train_loss']:.4f},"
                       f" validation {event['metric']} {event['validation']:.4f}", final=True)
        elif kind == "evaluate" and self.tty:
            live = self._doing(index, "evaluating")
        elif kind == "analyse" and self.tty:
            live = self._doing(index, "saving weights and increments, per-model analyses", "saving weights, analyses")
        elif kind == "attack":
            attack = f"generating {event['attack']}"
            if self.tty:
                live = self._doing(index, f"{attack} against the trained model ({event['questions']} source "
                                          "questions)", attack)
            else:
                self._emit(f"{head} | {attack} against the trained model ({event['questions']} source questions)",
                           final=True)
        if live is not None:
            self._emit_live(index, live)

    def _step_line(self, index: int, event: dict[str, Any]) -> LiveLine:
        """Epoch, step, loss and time left. On a narrow terminal the sweep's time left goes first, then
        the loss, the epoch, the word "trial" (of the time left, then of the head), the step, and the
        trial's time left last; the head stays."""
        elapsed = time.time() - self.running[index][1]
        left = fmt_time(elapsed / event["step"] * (event["total_steps"] - event["step"]))
        step = f"step {event['step']}/{event['total_steps']}"
        parts = [self._heads(index), (f"epoch {event['epoch']}/{event['epochs']} {step}", step, ""),
                 (f"loss {event['loss']:.4f}", ""), (f"trial ~{left} left", f"~{left} left", "")]
        # loss, epoch, "trial", the head's "trial", step, the time left
        order = [2, 1, 3, 0, 1, 3]
        if not self._block():  # the block has a sweep line of its own; here it gives way first
            parts.append((f"sweep ~{self._sweep_eta()} left", ""))
            order.insert(0, 4)
        return parts, order, " | "

    def finish(self, index: int, record: dict[str, Any]) -> None:
        trial, started = self.running.pop(index)
        self.lines.pop(index, None)
        took = time.time() - started
        self.durations.append(took)
        self.done += 1
        if record["status"] == "complete":
            task = TASKS[trial.task]  # planned trials name registered tasks
            scores = ", ".join(f"{k} {_headline(v, task)}" for k, v in record["metrics"].items())
            self._emit(f"[trial {index}/{self.total}] done in {fmt_time(took)}: {scores}", final=True)
        else:
            self.failed += 1
            self._emit(f"[trial {index}/{self.total}] FAILED: {record['error']}", final=True)

    def close(self) -> None:
        if self._block():
            self._clear_block()
            self.stream.flush()


def _headline(metrics: dict[str, Any], task: Task) -> str:
    """One split's score for the progress line: the task's report columns, else its selection
    metric (the worst case where the split is scored per source question)."""
    columns = [c for c in task.report_columns if c in metrics] or [c for c in [task.selection_metric] if c in metrics]
    if not columns:  # a split scored after the sweep (MT-Bench answers, judged by `pefteval judge`)
        return f"{metrics.get('answered_turns', metrics.get('n', 0))} answers, judged after the sweep"
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


def prepare_run_dir(trial: Trial, run_dir: Path, analysis: dict[str, Any] | None = None,
                    threads: int | None = None) -> None:
    """A fresh run directory holding the trial's trial.json. A failure (its directory, its trial.json)
    raises OutputError: the disk that cannot take those cannot take a trial either."""
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


@dataclass
class Job:
    """One trial's process, running: forked from the fork server (events through a pipe) or under
    ``accelerate launch`` (events from events.jsonl, the record from result.json)."""

    index: int
    trial: Trial
    run_dir: Path
    proc: Any
    receiver: Any = None  # the forked trial's end of the pipe
    offset: int = 0  # how far a launched trial's events.jsonl has been shown
    record: dict[str, Any] | None = None
    gpus: str | None = None  # the CUDA_VISIBLE_DEVICES it was given
    started: float = field(default_factory=time.time)

    @property
    def pid(self) -> int | None:
        return self.proc.pid

    where: str | None = None  # the node, for trials that run elsewhere (Ray)

    def poll(self, progress: Progress) -> bool:
        """Show what the trial said since the last poll; True once it has ended (``record`` set)."""
        if self.receiver is not None:
            return self._poll_forked(progress)
        finished = self.proc.poll() is not None
        self.offset = _replay(self.run_dir / EVENTS, self.offset, progress, self.index)
        if not finished:
            return False
        result_path = self.run_dir / "result.json"
        if result_path.exists():
            self.record = json.loads(result_path.read_text())
        else:
            tail = [*_tail(self.run_dir / "log.txt"), *_tail(self.run_dir / "launch.txt")]
            self.record = {"status": "failed",
                           "error": f"accelerate launch exited with code {self.proc.returncode}: {' | '.join(tail)}"}
        return True

    def _poll_forked(self, progress: Progress) -> bool:
        try:
            while self.receiver.poll():
                event = self.receiver.recv()
                if event.get("event") == "result":
                    self.record = event["record"]
                else:
                    progress.event(self.index, event)
        except EOFError:  # the trial's process has closed its end: it is ending
            self.proc.join()
            self.receiver.close()
            if self.record is None:  # it died before it could say (killed, out of memory, a crash in C)
                tail = _tail(self.run_dir / "log.txt")
                self.record = {"status": "failed",
                               "error": f"trial process exited with code {self.proc.exitcode}: {' | '.join(tail)}"}
            return True
        return False

    def kill(self) -> None:
        if self.receiver is not None:
            self.proc.kill()
            self.proc.join()
            self.receiver.close()
        else:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()


def start_job(index: int, trial: Trial, run_dir: Path, data_dir: Path | None, launch: Launch | None = None,
              gpus: str | None = None) -> Job:
    """Start the trial of ``run_dir/trial.json`` in a process of its own, seeing only ``gpus``."""
    env = {"CUDA_VISIBLE_DEVICES": gpus} if gpus is not None else {}
    if launch is not None and launch.distributed:
        command = launch_command(run_dir, data_dir, launch.num_processes, launch.accelerate_config)
        with open(run_dir / "launch.txt", "w") as out:
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                    env={**os.environ, **env})
        return Job(index, trial, run_dir, proc, gpus=gpus)
    ctx = context()
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=trial_main, args=(str(run_dir), str(data_dir) if data_dir else None, sender, env))
    proc.start()
    sender.close()
    return Job(index, trial, run_dir, proc, receiver=receiver, gpus=gpus)


def wait_any(jobs: list[Job], timeout: float = 0.2) -> None:
    """Until one of the forked jobs has something to say, or ``timeout`` (launched jobs are polled)."""
    receivers = [j.receiver for j in jobs if j.receiver is not None]
    if receivers and len(receivers) == len(jobs):
        multiprocessing.connection.wait(receivers, timeout=max(timeout, 1.0))
    elif receivers:
        multiprocessing.connection.wait(receivers, timeout=timeout)
    else:
        time.sleep(min(timeout, 0.1))


def run_one(trial: Trial, run_dir: Path, data_dir: Path | None, progress: Progress,
            analysis: dict[str, Any] | None = None, threads: int | None = None,
            launch: Launch | None = None, index: int = 1, gpus: str | None = None) -> dict[str, Any]:
    """Run one trial in its own process; returns its record. A trial that could not save everything
    it promises is failed, and its partial files are removed (its trial.json, log.txt and result.json
    stay, to say what happened)."""
    prepare_run_dir(trial, run_dir, analysis, threads)
    job = start_job(index, trial, run_dir, data_dir, launch, gpus)
    try:
        while not job.poll(progress):
            wait_any([job])
    except BaseException:
        job.kill()
        raise
    return ended(job)


def ended(job: Job) -> dict[str, Any]:
    """The record of a job that has ended; a failed trial's partial files are removed."""
    assert job.record is not None
    if job.record["status"] != "complete":
        remove_partial(job.run_dir)
    return job.record


def _replay(events: Path, offset: int, progress: Progress, index: int) -> int:
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
            progress.event(index, json.loads(line))


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
               threads: int | None = None, launch: Launch | None = None, jobs: int = 1,
               gpus_per_trial: int | None = None, executor: Any = None,
               save_weights: str = "all", tracking: TrackingConfig | None = None) -> SweepSummary:
    """Run every trial the store does not hold as complete, and redo the complete ones whose run
    directory lost files, ``jobs`` at a time (each in its own process, seeing its own GPUs). A
    complete trial whose data changed since it ran is an error (it would be reported as if trained
    on the current data) unless ``accept_data_change``, which redoes it. ``data_reads`` is what
    planning read of the data (see ``tasks.base.track_data_reads``). Only this process writes the
    store: a record as each trial ends. With ``executor`` (``ray_executor.RayExecutor``) the trials
    are Ray tasks, as many at once as the cluster holds, which places them (and their GPUs).
    ``save_weights``: ``selected`` removes the weights of a group's unselected trials once the group
    is complete (``retention.py``)."""
    stream = stream or sys.stderr
    summary = SweepSummary(planned=len(trials))
    slots = check_jobs(jobs, launch, gpus_per_trial) if executor is None else None
    if executor is not None and jobs == 1:
        jobs = executor.capacity()
    if threads is None and jobs > 1 and executor is None:  # the cores split between the running trials
        threads = max(1, usable_cores() // jobs)
    with ResultStore(out_dir / "results.sqlite") as store:
        todo = trials_to_run(trials, store.complete_records(), out_dir, DataCheck(data_dir, data_reads or {}),
                             accept_data_change, stream)
        summary.skipped = len(trials) - len(todo)
        summary.pruned += prune_unselected(store, out_dir, trials, save_weights)  # groups complete already
        # the trackers (tracking.py) get what the progress display gets, from this process only
        progress = with_trackers(Progress(len(todo), stream, jobs), tracking, out_dir, experiment)
        pending = list(enumerate(todo, start=1))
        free = list(slots) if slots is not None else None
        running: list[Any] = []  # Job, or ray_executor.RayJob
        try:
            while pending or running:
                while pending and len(running) < jobs:
                    index, trial = pending.pop(0)
                    gpus = free.pop(0) if free is not None else None
                    run_dir = run_dir_for(out_dir, trial)
                    progress.start(index, trial, f" on GPU {gpus}" if gpus is not None and jobs > 1 else "")
                    try:
                        prepare_run_dir(trial, run_dir, analysis, threads)
                    except OutputError:
                        if free is not None:
                            free.append(gpus)
                        progress.running.pop(index, None)
                        raise
                    if executor is None:
                        running.append(start_job(index, trial, run_dir, data_dir, launch, gpus))
                    else:
                        command = (launch_command(run_dir, data_dir, launch.num_processes, launch.accelerate_config)
                                   if launch is not None and launch.distributed else None)
                        running.append(executor.start(index, trial, run_dir, data_dir, command))
                    write_running(out_dir, jobs, running)
                wait_any(running)
                for job in [j for j in running if j.poll(progress)]:
                    running.remove(job)
                    if free is not None:
                        free.append(job.gpus)
                    record = ended(job)
                    record.update(key=job.trial.key, config=job.trial.config, experiment=experiment,
                                  run_dir=str(job.run_dir.relative_to(out_dir)))
                    store.put(record)
                    if record["status"] == "complete":
                        summary.pruned += prune_unselected(store, out_dir, trials, save_weights,
                                                           {group_of(job.trial.config)})
                    write_running(out_dir, jobs, running)
                    progress.finish(job.index, record)
                    if record["status"] == "complete":
                        summary.completed += 1
                    else:
                        summary.failed.append((job.trial, record["error"]))
        except KeyboardInterrupt:
            summary.interrupted = True
        finally:
            for job in running:  # Ctrl-C, or a run directory that could not be made: stop the others
                job.kill()
            progress.close()
            write_running(out_dir, jobs, [])
    return summary


def write_running(out_dir: Path, jobs: int, running: list[Any]) -> None:
    """OUT/running.json: the trials running now, for ``pefteval status`` (which trusts it only
    while this process holds the directory's lock). Advisory: a disk too full to take it fails
    no trial (the trials' own files say what failed)."""
    try:
        _write_running(out_dir, jobs, running)
    except OutputError:
        pass


def _write_running(out_dir: Path, jobs: int, running: list[Any]) -> None:
    atomic_write_json(out_dir / "running.json", {
        "pid": os.getpid(), "jobs": jobs, "updated": time.time(),
        "trials": [{"index": j.index, "key": j.trial.key, "trial": j.trial.describe(), "started": j.started,
                    "pid": j.pid, "gpus": j.gpus, "where": j.where, "run_dir": str(j.run_dir.relative_to(out_dir))}
                   for j in running]})


def check_jobs(jobs: int, launch: Launch | None, gpus_per_trial: int | None) -> list[str] | None:
    """The GPU sets of ``jobs`` trials at once (None: one at a time, where a trial sees what the
    sweep sees, or no GPUs); a user error when there are not enough GPUs for them."""
    if jobs == 1:
        return None
    per_trial = gpus_per_trial if gpus_per_trial is not None else (launch.num_processes if launch else 1)
    return gpu_slots(jobs, per_trial)


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def visible_gpus() -> list[str]:
    """The GPUs this process may hand out: CUDA_VISIBLE_DEVICES when set, else every CUDA device."""
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        return [g.strip() for g in given.split(",") if g.strip() and g.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def gpu_slots(jobs: int, per_trial: int, gpus: list[str] | None = None) -> list[str] | None:
    """The GPU sets (CUDA_VISIBLE_DEVICES values) the running trials take, one per job; None on a
    machine without GPUs (or with ``gpus_per_trial: 0``), where trials see what the parent sees."""
    gpus = visible_gpus() if gpus is None else gpus
    if not gpus or per_trial == 0:
        return None
    if jobs * per_trial > len(gpus):
        raise UserError(f"--jobs {jobs} with {per_trial} GPU(s) per trial needs {jobs * per_trial} GPUs, and "
                        f"{len(gpus)} are here ({','.join(gpus)}); use --jobs {max(1, len(gpus) // per_trial)} "
                        "or fewer, or set resources.gpus_per_trial")
    return [",".join(gpus[i * per_trial:(i + 1) * per_trial]) for i in range(jobs)]


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
