"""Parameter scaling (the paper's Tables 8, 9 and Figure 3): score against the number of
trainable parameters, for FFT of the top-k layers and LoRA of rank r.

A setting is a method of the experiment; settings of one family (FFT and its top-k
variants; LoRA at each rank) form one line of the plot. The scores are those of the
grid point selected on validation, as in the main table: for classification tasks the
average accuracy over tasks (clean and AdvGLUE); for a QA task the dev F1 and the mean
worst-case F1 over its adversarial sets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pefteval.metrics import mean_std
from pefteval.reporting.fmt import mean_std_cell, save_figure
from pefteval.tasks import TASKS


@dataclass
class ScalingRow:
    method: str
    family: str
    setting: str
    trainable: int
    scores: dict[str, tuple[float, float]] = field(default_factory=dict)  # column -> (mean, std)


@dataclass
class ScalingTable:
    columns: list[str]
    rows: list[ScalingRow]
    panels: list[tuple[str, str, str]]  # (title, clean column, adversarial column)


def _family(method: dict[str, Any]) -> tuple[str, str] | None:
    kind = method.get("type")
    if kind == "fft":
        k = method.get("top_k_layers")
        return ("FFT (top-k layers)", "all layers" if k is None else f"top-{k}")
    if kind == "lora":
        return ("LoRA (rank r)", f"r={method.get('r', 8)}")
    return None


def build_scaling(records: list[dict[str, Any]], sel: Any, tasks: list[str],
                  qa_tasks: list[str]) -> ScalingTable | None:
    """None unless some family has at least two settings with different trainable-parameter counts."""
    settings: dict[str, tuple[str, str]] = {}
    for rec in records:
        fam = _family(rec["config"]["method"])
        if fam is not None:
            settings.setdefault(rec["config"]["method_label"], fam)
    counts: dict[str, set[int]] = {}
    for method, (family, _) in settings.items():
        for (_task, m), (_, recs) in sel.chosen.items():
            if m == method:
                counts.setdefault(family, set()).update(r["params"]["trainable"] for r in recs)
    if not any(len(c) >= 2 for c in counts.values()):
        return None
    columns: list[str] = []
    panels: list[tuple[str, str, str]] = []
    if tasks:
        columns += ["Avg orig", "Avg adv"]
        panels.append(("Classification: mean accuracy over " + ", ".join(tasks), "Avg orig", "Avg adv"))
    rows = []
    for method in sel.methods:
        if method not in settings:
            continue
        family, setting = settings[method]
        trainable = [r["params"]["trainable"] for (t, m), (_, recs) in sel.chosen.items() if m == method for r in recs]
        row = ScalingRow(method, family, setting, round(sum(trainable) / len(trainable)) if trainable else 0)
        if tasks and all((t, method) in sel.chosen for t in tasks):
            for col, split in (("Avg orig", "test"), ("Avg adv", "advglue")):
                per_task = [mean_std([r["metrics"][split]["accuracy"] for r in sel.chosen[(t, method)][1]
                                      if split in r["metrics"]]) for t in tasks]
                row.scores[col] = (sum(p[0] for p in per_task) / len(per_task),
                                   math.sqrt(sum((0 if math.isnan(p[1]) else p[1]) ** 2 for p in per_task))
                                   / len(per_task))
        for task in qa_tasks:
            if (task, method) not in sel.chosen:
                continue
            adversarial, short = TASKS[task].adversarial, TASKS[task].short_names
            recs = sel.chosen[(task, method)][1]
            row.scores[f"{task} F1"] = mean_std([r["metrics"]["test"]["f1"] for r in recs])
            adv_means = []
            for split in adversarial:
                have = [r["metrics"][split]["worst_f1"] for r in recs if split in r["metrics"]]
                if have:
                    row.scores[f"{short[split]} F1"] = mean_std(have)
                    adv_means.append([r["metrics"][split]["worst_f1"] for r in recs if split in r["metrics"]])
            if adv_means:
                per_seed = [sum(v) / len(v) for v in zip(*adv_means)]
                row.scores[f"{task} adv F1"] = mean_std(per_seed)
        rows.append(row)
    for task in qa_tasks:
        adversarial, short = TASKS[task].adversarial, TASKS[task].short_names
        cols = [f"{task} F1"] + [f"{short[s]} F1" for s in adversarial
                                 if any(f"{short[s]} F1" in r.scores for r in rows)] + [f"{task} adv F1"]
        columns += [c for c in cols if any(c in r.scores for r in rows)]
        panels.append((f"{task}: dev F1 and mean worst-case adversarial F1", f"{task} F1", f"{task} adv F1"))
    rows.sort(key=lambda r: (r.family, r.trainable))
    return ScalingTable(columns, rows, panels)


def scaling_rows(table: ScalingTable) -> tuple[list[str], list[list[str]]]:
    header = ["Setting", "Method", "Trainable", *table.columns]
    body = [[f"{r.family}: {r.setting}", r.method, f"{r.trainable:,}",
             *[mean_std_cell(r.scores.get(c)) for c in table.columns]] for r in table.rows]
    return header, body


def render_scaling_markdown(table: ScalingTable) -> str:
    header, body = scaling_rows(table)
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(["---", "---"] + ["---:"] * (len(header) - 2)) + "|"]
    out += ["| " + " | ".join(line) + " |" for line in body]
    out += ["", "- Scores in %, mean (std) over seeds, at each setting's grid point selected on validation. "
            "'Avg adv' is AdvGLUE; SQuAD adversarial columns are worst-case F1 per source question."]
    return "\n".join(out) + "\n"


def plot_scaling(table: ScalingTable, path: Path) -> Path:
    """Score against trainable parameters (log x), one line per family, clean solid and adversarial
    dashed; error bars are the seeds' sample std."""
    # matplotlib only when a figure is drawn: importing pefteval never sets an application's backend
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = table.panels
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    families = sorted({r.family for r in table.rows})
    colours = {fam: f"C{i}" for i, fam in enumerate(families)}
    for ax, (title, clean, adv) in zip(axes[0], panels):
        for fam in families:
            rows = [r for r in table.rows if r.family == fam]
            for col, style, label in ((clean, "-", "original"), (adv, "--", "adversarial")):
                pts = [(r.trainable, 100 * r.scores[col][0], 0.0 if math.isnan(r.scores[col][1])
                        else 100 * r.scores[col][1], r.setting) for r in rows
                       if col in r.scores and not math.isnan(r.scores[col][0])]
                if not pts:
                    continue
                xs, ys, errs, names = zip(*pts)
                ax.errorbar(xs, ys, yerr=errs, fmt="o" + style, color=colours[fam], capsize=3,
                            label=f"{fam}, {label}")
                for x, y, name in zip(xs, ys, names):
                    ax.annotate(name, (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters (log scale)")
        ax.set_ylabel("score (%)")
        ax.set_title(title, fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    return save_figure(fig, path)
