"""Weight-space diagnostics of a results directory (``pefteval analyze``): the learned
increments (the paper's Figure 1), the FFT update spectrum (Theorem 3), the capacity bound
(Theorem 2) and perturbation sensitivity (Theorem 4), and three analyses published since the paper:
intruder dimensions, forgetting and representation similarity (``published``). They read what training saved (see
``capture``) and never retrain; each writes ``OUT/analysis/<name>.md`` and ``.csv`` and its
figures under ``OUT/analysis/``."""

from __future__ import annotations

import time
from pathlib import Path

from pefteval.analysis.increments import analyse_increments
from pefteval.analysis.models import analyse_bound, analyse_sensitivity
from pefteval.analysis.published import analyse_forgetting, analyse_intruders, analyse_similarity
from pefteval.analysis.results import ANALYSES, AnalysisResult, Run, load_runs, options_for
from pefteval.analysis.spectrum import analyse_spectrum
from pefteval.errors import UserError
from pefteval.files import atomic_write_text

__all__ = ["ANALYSES", "AnalysisResult", "Run", "run_analysis"]


def run_analysis(name: str, out: Path, module: str | None = None, data_dir: Path | None = None) -> AnalysisResult:
    """Run analysis ``name`` on ``out``'s selected trials; ``data_dir``: where forgetting and similarity
    read their general text when a trial did not save it (None: the hub)."""
    if name not in ANALYSES:
        raise UserError(f"unknown analysis '{name}'; choose one of {', '.join(ANALYSES)}")
    if not out.is_dir():
        raise UserError(f"results directory {out} does not exist")
    started = time.perf_counter()
    runs = load_runs(out)
    target = out / "analysis"
    target.mkdir(exist_ok=True)
    if name == "increments":
        result = analyse_increments(runs, target, module)
    elif name == "spectrum":
        result = analyse_spectrum(runs, target)
    elif name in ("bound", "sensitivity"):
        fn = analyse_bound if name == "bound" else analyse_sensitivity
        result = fn(runs, target, options_for(out))
    else:
        published = {"intruders": analyse_intruders, "forgetting": analyse_forgetting,
                     "similarity": analyse_similarity}[name]
        result = published(runs, target, options_for(out), data_dir)
    result.seconds = time.perf_counter() - started
    atomic_write_text(target / f"{name}.md", result.markdown())
    atomic_write_text(target / f"{name}.csv", result.csv())
    return result
