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

import ctypes
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


def _die_with_parent() -> None:
    """A trial is killed when its fork server goes, which goes when the sweep does (even by SIGKILL):
    no orphaned trial goes on writing into a results directory."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: an orphan finishes its trial and exits


def trial_main(run_dir: str, data_dir: str | None, conn: Any) -> None:
    _die_with_parent()
    log = open(Path(run_dir) / "log.txt", "a", buffering=1)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    sys.stdout = sys.stderr = log

    # imported here, after the output is redirected: everything the libraries print goes to log.txt
    from pefteval.config import TrialConfig
    from pefteval.errors import OutputError, TrainingDiverged, UserError
    from pefteval.files import atomic_write_json, is_write_failure, write_error
    from pefteval.provenance import data_fingerprint, files_manifest
    from pefteval.record import peak_rss_mb
    from pefteval.tasks.base import track_data_reads
    from pefteval.trial import run_trial

    def failed(error: str) -> dict[str, Any]:
        return {"status": "failed", "error": error, "peak_rss_mb": peak_rss_mb()}

    written = json.loads((Path(run_dir) / "trial.json").read_text())
    try:
        trial = TrialConfig.from_json(written)
        data = Path(data_dir) if data_dir else None
        # what a complete trial promises, checked when a later run resumes: the data it read
        # (content hashes) and the files it saved
        with track_data_reads() as reads:
            record = run_trial(trial, data, Path(run_dir), written.get("key", ""), conn.send)
        record["data_fingerprint"] = data_fingerprint(reads, data)
        record["files"] = files_manifest(Path(run_dir))
    except (TrainingDiverged, UserError) as err:
        record = failed(f"{type(err).__name__}: {err}")
    except Exception as err:  # noqa: BLE001 - recorded as a failed trial, the sweep goes on
        if is_write_failure(err):  # a write outside the atomic helpers (the log, a library's own file)
            record = failed(f"OutputError: {write_error(run_dir, err)}")
        else:
            _print_traceback()
            record = failed(f"{type(err).__name__}: {err} (traceback in {run_dir}/log.txt)")
    try:
        atomic_write_json(Path(run_dir) / "result.json", record)
    except OutputError as err:
        if record["status"] == "complete":  # complete means everything is on disk, its record too
            record = failed(f"OutputError: {err}")
    conn.send({"event": "result", "record": record})
    conn.close()


def _print_traceback() -> None:
    try:
        traceback.print_exc()
    except OSError:
        pass  # the log itself cannot be written (a full disk): the record still says what failed
