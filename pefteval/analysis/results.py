"""What the analyses share: the trials of a results directory as runs, their options, and the
result tables they render (markdown and CSV)."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pefteval.config import AnalysisConfig
from pefteval.errors import UserError
from pefteval.metrics import mean_std
from pefteval.selection import select_grid_points
from pefteval.store import read_complete

ANALYSES = ("increments", "spectrum", "bound", "sensitivity", "intruders", "forgetting", "similarity")


@dataclass
class Section:
    title: str
    header: list[str]
    rows: list[list[str]]


@dataclass
class AnalysisResult:
    name: str
    title: str
    sections: list[Section] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    seconds: float = 0.0

    def markdown(self) -> str:
        lines = [f"## {self.title}", ""]
        for sec in self.sections:
            lines += [f"### {sec.title}", "",
                      "| " + " | ".join(sec.header) + " |",
                      "|" + "|".join(["---"] + ["---:"] * (len(sec.header) - 1)) + "|"]
            lines += ["| " + " | ".join(row) + " |" for row in sec.rows]
            lines.append("")
        lines += [f"- {n}" for n in self.notes]
        if self.figures:
            lines.append(f"- Figures: {', '.join(f'`{p.name}`' for p in self.figures)}")
        lines.append(f"- Computed in {self.seconds:.1f} s.")
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf)
        for sec in self.sections:
            writer.writerow(["section", *sec.header])
            for row in sec.rows:
                writer.writerow([sec.title, *row])
        return buf.getvalue()


@dataclass
class Run:
    task: str
    method: str
    seed: int
    dir: Path
    record: dict[str, Any]

    @property
    def method_type(self) -> str:
        return self.record["config"]["method"].get("type", "")

    def increments(self) -> dict[str, Any]:
        """The trial's ``increments.json`` (statistics of every increment), or a clear error."""
        path = self.dir / "increments.json"
        if not path.is_file():
            raise UserError(f"{self.dir} has no increments.json: it was trained without analysis capture "
                            "(analyses.capture: false, or an older pefteval); run the experiment into a new --out "
                            "directory")
        return read_json(path)


def load_runs(out: Path) -> list[Run]:
    """The trials the report compares: per task and method, the selected grid point's seeds."""
    selection = select_grid_points(read_complete(out))
    runs = []
    for (task, method), (_hp, recs) in selection.chosen.items():
        for rec in sorted(recs, key=lambda r: r["config"]["seed"]):
            runs.append(Run(task, method, rec["config"]["seed"], out / rec["run_dir"], rec))
    return runs


def options_for(out: Path) -> Any:
    """The experiment's analysis options (defaults when it set none)."""
    path = out / "experiment.yaml"
    raw = yaml.safe_load(path.read_text()) if path.is_file() else {}
    return AnalysisConfig(**((raw or {}).get("analyses") or {}))


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def fmt(value: float | None, digits: int = 3) -> str:
    """A number for a table: fixed point in a readable range, scientific otherwise."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if value == 0:
        return "0"
    if 1e-3 <= abs(value) < 1e5:
        return f"{value:.{digits}f}" if abs(value) < 100 else f"{value:,.1f}"
    return f"{value:.{digits - 1}e}"


def cell(values: list[float], digits: int = 3) -> str:
    mean, std = mean_std(values)
    return f"{fmt(mean, digits)} ({fmt(std, digits)})"
