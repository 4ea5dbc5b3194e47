"""Runs one trial in a process of its own, so that its peak memory (ru_maxrss) is the
trial's own and a crash cannot take the sweep down.

Trial processes are forked from a multiprocessing fork server that has already
imported torch, transformers and peft, which saves ~5 s of imports per trial.
Progress events go to the parent through a pipe; everything the libraries print
goes to the trial's ``log.txt``.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import traceback
from pathlib import Path
from typing import Any

# imported once by the fork server, inherited by every trial process
PRELOAD = ["torch", "transformers", "transformers.modeling_utils", "peft", "pefteval.trial", "pefteval.train",
           "pefteval.tasks", "pefteval.kinds", "transformers.models.bert.modeling_bert"]
_context: Any = None


def context() -> Any:
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def trial_main(run_dir: str, data_dir: str | None, conn: Any) -> None:
    log = open(Path(run_dir) / "log.txt", "a", buffering=1)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    sys.stdout = sys.stderr = log

    # imported here, after the output is redirected: everything the libraries print goes to log.txt
    from pefteval.config import TrialConfig
    from pefteval.errors import TrainingDiverged, UserError
    from pefteval.record import peak_rss_mb
    from pefteval.store import atomic_write_json
    from pefteval.trial import run_trial

    written = json.loads((Path(run_dir) / "trial.json").read_text())
    try:
        trial = TrialConfig.from_json(written)
        record = run_trial(trial, Path(data_dir) if data_dir else None, Path(run_dir), written.get("key", ""),
                           conn.send)
    except (TrainingDiverged, UserError) as err:
        record = {"status": "failed", "error": f"{type(err).__name__}: {err}", "peak_rss_mb": peak_rss_mb()}
    except Exception as err:  # noqa: BLE001 - recorded as a failed trial, the sweep goes on
        traceback.print_exc()
        record = {"status": "failed", "error": f"{type(err).__name__}: {err} (traceback in {run_dir}/log.txt)",
                  "peak_rss_mb": peak_rss_mb()}
    atomic_write_json(Path(run_dir) / "result.json", record)
    conn.close()
