"""Runs one trial in a process of its own, so that its peak memory (ru_maxrss) is the
trial's own and a crash cannot take the sweep down.

Trial processes are forked from a multiprocessing fork server that has already
imported torch, transformers and peft, which saves ~5 s of imports per trial.
Progress events, and at the end the trial's record, go to the parent through a pipe;
everything the libraries print goes to the trial's ``log.txt``.

The fork server and its trials ignore Ctrl-C: the sweep alone handles it (it kills the running
trial and says one line), so an interrupt never prints a fork server's traceback. The fork
server's socket lives in ``$TMPDIR/pefteval-mp-<pid>``; a sweep removes those of earlier
sweeps that were killed before they could clean up.
"""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.forkserver
import multiprocessing.util
import os
import shutil
import signal
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

from pefteval.distributed import die_with_parent

# imported once by the fork server, inherited by every trial process
PRELOAD = ["torch", "transformers", "transformers.modeling_utils", "peft", "pefteval.trial", "pefteval.train",
           "pefteval.tasks", "pefteval.kinds", "transformers.models.bert.modeling_bert"]
TEMP_PREFIX = "pefteval-mp-"
_context: Any = None


def context() -> Any:
    global _context
    if _context is None:
        _private_temp_dir()
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
        # started with SIGINT ignored, which the fork server (an exec'd interpreter) and every trial
        # it forks inherit: Ctrl-C during its seconds of imports would print their traceback
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            multiprocessing.forkserver.ensure_running()
        finally:
            signal.signal(signal.SIGINT, previous)
    return _context


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temp_dirs(base: Path) -> list[Path]:
    """Remove the temporary directories of sweeps that are no longer running (killed ones)."""
    removed = []
    for path in base.glob(f"{TEMP_PREFIX}*"):
        pid = path.name.removeprefix(TEMP_PREFIX)
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _private_temp_dir() -> None:
    """multiprocessing's temporary directory (the fork server's socket) inside one of our own, named
    by this process id, so that what a killed sweep leaves is recognisably stale."""
    base = Path(tempfile.gettempdir())
    # a socket path holds at most 107 bytes: under a deep $TMPDIR use /tmp, as Python 3.12+ does
    if len(f"{base}/{TEMP_PREFIX}{os.getpid()}/pymp-xxxxxxxx/listener-xxxxxxxx") > 100 and Path("/tmp").is_dir():
        base = Path("/tmp")
    remove_stale_temp_dirs(base)
    mine = base / f"{TEMP_PREFIX}{os.getpid()}"
    mine.mkdir(exist_ok=True)
    previous, tempfile.tempdir = tempfile.tempdir, str(mine)
    try:
        multiprocessing.util.get_temp_dir()  # creates and caches pymp-XXXX in ours; removed at exit
    finally:
        tempfile.tempdir = previous
    multiprocessing.util.Finalize(None, shutil.rmtree, args=(str(mine), True), exitpriority=-101)


def trial_main(run_dir: str, data_dir: str | None, conn: Any, env: dict[str, str] | None = None) -> None:
    """A trial in a process forked from the fork server: events and the record go through ``conn``.
    ``env`` is set first (CUDA_VISIBLE_DEVICES: the GPUs this trial may see, before CUDA starts)."""
    os.environ.update(env or {})
    die_with_parent()
    _redirect(Path(run_dir) / "log.txt")
    record = _run(Path(run_dir), Path(data_dir) if data_dir else None, conn.send, distributed=False)
    conn.send({"event": "result", "record": record})
    conn.close()


def distributed_main(run_dir: Path, data_dir: Path | None) -> None:
    """One rank of a trial under ``accelerate launch`` (see pefteval.distributed): the main rank logs
    to log.txt, writes progress events to events.jsonl and the record to result.json; every other
    rank logs to log.rank<N>.txt and writes nothing else."""
    die_with_parent()  # the launcher: a rank never outlives it
    rank = int(os.environ.get("RANK", "0"))
    _redirect(run_dir / ("log.txt" if rank == 0 else f"log.rank{rank}.txt"))
    if rank != 0:
        _run(run_dir, data_dir, None, distributed=True)
        return
    with open(run_dir / EVENTS, "a", buffering=1, encoding="utf-8") as events:
        def emit(event: dict[str, Any]) -> None:
            events.write(json.dumps(event) + "\n")

        _run(run_dir, data_dir, emit, distributed=True)


EVENTS = "events.jsonl"  # a distributed trial's progress events, one JSON object a line


def _redirect(log_path: Path) -> None:
    log = open(log_path, "a", buffering=1)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    sys.stdout = sys.stderr = log


def _run(run_dir: Path, data_dir: Path | None, emit: Any, distributed: bool) -> dict[str, Any]:
    """Run the trial of ``run_dir/trial.json``; on the main process write its record to result.json
    and return it (a failure is a failed record, never an exception)."""
    # imported here, after the output is redirected: everything the libraries print goes to log.txt
    import torch

    from pefteval.config import TrialConfig
    from pefteval.device import resolve_device
    from pefteval.distributed import Dist
    from pefteval.errors import OutputError, TrainingDiverged, UserError
    from pefteval.files import atomic_write_json, is_write_failure, write_error
    from pefteval.provenance import data_fingerprint, files_manifest
    from pefteval.record import peak_rss_mb
    from pefteval.tasks.base import track_data_reads
    from pefteval.tasks.user import register_include_paths
    from pefteval.trial import run_trial

    def failed(error: str) -> dict[str, Any]:
        return {"status": "failed", "error": error, "peak_rss_mb": peak_rss_mb()}

    written = json.loads((run_dir / "trial.json").read_text())
    # this rank, even if setting up the process group fails: only rank 0 may write the record
    dist = Dist(rank=int(os.environ.get("RANK", "0"))) if distributed else Dist()
    try:
        trial = TrialConfig.from_json(written)
        register_include_paths(trial.include_path)  # the folder of a user task's definition (docs/tasks.md)
        if trial.threads is not None:
            torch.set_num_threads(trial.threads)
        if distributed:
            dist = Dist.from_env(resolve_device(trial.training.device).type)
        # what a complete trial promises, checked when a later run resumes: the data it read
        # (content hashes) and the files it saved
        with track_data_reads() as reads:
            record = run_trial(trial, data_dir, run_dir, written.get("key", ""), emit, dist)
        if dist.is_main:
            record["data_fingerprint"] = data_fingerprint(reads, data_dir)
            record["files"] = files_manifest(run_dir)
    except (TrainingDiverged, UserError) as err:
        record = failed(f"{type(err).__name__}: {err}")
    except Exception as err:  # noqa: BLE001 - recorded as a failed trial, the sweep goes on
        if is_write_failure(err):  # a write outside the atomic helpers (the log, a library's own file)
            record = failed(f"OutputError: {write_error(run_dir, err)}")
        else:
            _print_traceback()
            record = failed(f"{type(err).__name__}: {err} (traceback in {run_dir}/log.txt)")
    if not dist.is_main:
        return record
    try:
        atomic_write_json(run_dir / "result.json", record)
    except OutputError as err:
        if record["status"] == "complete":  # complete means everything is on disk, its record too
            record = failed(f"OutputError: {err}")
    return record


def _print_traceback() -> None:
    try:
        traceback.print_exc()
    except OSError:
        pass  # the log itself cannot be written (a full disk): the record still says what failed


if __name__ == "__main__":  # one rank of a distributed trial: python -m pefteval.worker RUN_DIR [DATA_DIR]
    distributed_main(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else None)
