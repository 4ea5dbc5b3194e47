"""What every trial's record holds besides its metrics: parameter counts, the training curve,
time and memory, and the environment it ran in."""

from __future__ import annotations

import platform
import resource
import time
from importlib.metadata import version
from typing import Any

import peft
import torch
import transformers

import pefteval
from pefteval.methods import AppliedMethod
from pefteval.train import TrainResult


def package_versions() -> dict[str, str]:
    # datasets by its metadata: importing it (pyarrow, pandas) would add ~50 MB to every trial's peak memory
    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "datasets": version("datasets"), "pefteval": pefteval.__version__}


def peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux; the trial has this process to itself, so this is the trial's peak
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def complete_record(started: float, applied: AppliedMethod, result: TrainResult,
                    **fields: Any) -> dict[str, Any]:
    """A finished trial's record: what every kind of trial reports plus its own ``fields``."""
    return {
        "status": "complete",
        "curve": result.curve,
        "best_epoch": result.best_epoch,
        "params": {"trainable": applied.trainable_params, "total": applied.total_params,
                   "base": applied.base_params, "head": applied.head_params},
        "train_seconds": result.train_seconds,
        "train_examples_per_second": result.examples_seen / max(result.train_seconds, 1e-9),
        **fields,
        "wall_seconds": time.time() - started,
        "peak_rss_mb": peak_rss_mb(),
        "versions": package_versions(),
        "threads": torch.get_num_threads(),
    }
