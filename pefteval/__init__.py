"""pefteval: does parameter-efficient fine-tuning lose to full fine-tuning, and why?

The Python API (``pefteval.run``, ``pefteval.load_results``, ``pefteval.report``, ``pefteval.export``,
``pefteval.judge``, ``pefteval.claims``, ``pefteval.load_bitfit``) is imported on first use, so that
``import pefteval`` (and the CLI's ``--help``) stays free of torch.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API = {
    "run": "pefteval.api",
    "load_results": "pefteval.api",
    "report": "pefteval.api",
    "export": "pefteval.api",
    "judge": "pefteval.api",
    "claims": "pefteval.api",
    "RunSummary": "pefteval.api",
    "load_bitfit": "pefteval.artifacts",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    import importlib

    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'pefteval' has no attribute {name!r}")
