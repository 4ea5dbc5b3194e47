"""Formatting and figure helpers shared by the report's tables and plots."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pefteval.files import atomic_target, make_dir


def mean_std_cell(pair: tuple[float, float] | None) -> str:
    """A (mean, std) fraction as "mean (std)" in %; "–" for a missing mean or std."""
    if pair is None or math.isnan(pair[0]):
        return "–"
    mean, std = pair
    return f"{100 * mean:.2f} ({'–' if math.isnan(std) else f'{100 * std:.2f}'})"


def save_figure(fig: Any, path: Path) -> Path:
    """Write a matplotlib figure as a PNG atomically (temporary file, then rename) and close it."""
    import matplotlib.pyplot as plt  # only when a figure is drawn (see its callers)

    fig.tight_layout()
    try:
        make_dir(path.parent)
        with atomic_target(path) as tmp:
            fig.savefig(tmp, dpi=120, format="png")
    finally:
        plt.close(fig)
    return path
