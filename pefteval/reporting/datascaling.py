"""Data scaling (the paper's Table 7, Figure 2 and Theorem 5): prompt-based few-shot accuracy
against k, the number of training examples per class.

Per method, task and k the grid point selected on validation is reported, mean (sample std)
over seeds (each seed draws its own k-shot sample). The average over tasks is taken per k.
From the averages the report derives:
- the k where FFT overtakes LoRA: the first k at which FFT's average is above LoRA's after a
  k where it was not (or that FFT is ahead at every k, or never);
- the marginal benefit per added example: for each method, the change in average accuracy
  (points) per added training example per class between consecutive k, and over the whole
  range; and the FFT / LoRA ratio of these, the quantity Theorem 5 compares.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pefteval.metrics import mean_std
from pefteval.reporting.fmt import mean_std_cell, save_figure


@dataclass
class DataScalingTable:
    tasks: list[str]
    ks: list[int]
    methods: list[str]
    scores: dict[tuple[str, str, int], tuple[float, float]] = field(default_factory=dict)  # (method, task, k)
    seeds: dict[tuple[str, int], int] = field(default_factory=dict)
    fft: str | None = None  # the full-FFT method label, if any
    lora: str | None = None

    def average(self, method: str, k: int) -> tuple[float, float]:
        """Mean over tasks of the per-task means; its std combines the tasks' seed spreads."""
        cells = [self.scores.get((method, t, k)) for t in self.tasks]
        if any(c is None or math.isnan(c[0]) for c in cells):
            return float("nan"), float("nan")
        mean = sum(c[0] for c in cells) / len(cells)
        std = math.sqrt(sum((0.0 if math.isnan(c[1]) else c[1]) ** 2 for c in cells)) / len(cells)
        return mean, std

    def marginal(self, method: str) -> list[tuple[int, int, float]]:
        """(k1, k2, points per added example per class) between consecutive k with both averages."""
        have = [(k, self.average(method, k)[0]) for k in self.ks]
        have = [(k, v) for k, v in have if not math.isnan(v)]
        return [(k1, k2, 100 * (v2 - v1) / (k2 - k1)) for (k1, v1), (k2, v2) in zip(have, have[1:])]

    def overall_marginal(self, method: str) -> float:
        have = [(k, self.average(method, k)[0]) for k in self.ks]
        have = [(k, v) for k, v in have if not math.isnan(v)]
        if len(have) < 2:
            return float("nan")
        (k1, v1), (k2, v2) = have[0], have[-1]
        return 100 * (v2 - v1) / (k2 - k1)

    def crossing(self) -> str:
        if self.fft is None or self.lora is None:
            return "needs both a full-FFT and a LoRA method"
        gaps = [(k, self.average(self.fft, k)[0] - self.average(self.lora, k)[0]) for k in self.ks]
        gaps = [(k, g) for k, g in gaps if not math.isnan(g)]
        if not gaps:
            return "no k with both methods"
        if all(g > 0 for _, g in gaps):
            return f"FFT is ahead of LoRA at every k ({', '.join(str(k) for k, _ in gaps)})"
        for (_k1, g1), (k2, g2) in zip(gaps, gaps[1:]):
            if g1 <= 0 < g2:
                return f"FFT overtakes LoRA at k = {k2} (average {100 * g2:+.2f} points; {100 * g1:+.2f} before)"
        return "FFT does not overtake LoRA in the k range run"


def _split(label: str) -> tuple[str, int]:
    task, k = label.split("@k=")
    return task, int(k)


def build_data_scaling(records: list[dict[str, Any]], sel: Any, labels: list[str]) -> DataScalingTable | None:
    if not labels:
        return None
    tasks: list[str] = []
    ks: set[int] = set()
    for label in labels:
        task, k = _split(label)
        ks.add(k)
        if task not in tasks:
            tasks.append(task)
    table = DataScalingTable(tasks, sorted(ks), [m for m in sel.methods if any((lb, m) in sel.chosen
                                                                              for lb in labels)])
    for (label, method), (_hp, recs) in sel.chosen.items():
        if label not in labels:
            continue
        task, k = _split(label)
        table.scores[(method, task, k)] = mean_std([r["metrics"]["test"]["accuracy"] for r in recs])
        table.seeds[(method, k)] = len(recs)
    kinds: dict[str, dict[str, Any]] = {}
    for rec in records:
        kinds.setdefault(rec["config"]["method_label"], rec["config"]["method"])
    for method in table.methods:
        cfg = kinds.get(method, {})
        if cfg.get("type") == "fft" and cfg.get("top_k_layers") is None and table.fft is None:
            table.fft = method
        if cfg.get("type") == "lora" and table.lora is None:
            table.lora = method
    return table


def data_scaling_rows(table: DataScalingTable) -> tuple[list[str], list[list[str]]]:
    header = ["Method", "k", *table.tasks, "Average"]
    body = []
    for method in table.methods:
        for k in table.ks:
            if not any((method, t, k) in table.scores for t in table.tasks):
                continue
            body.append([method, str(k), *[mean_std_cell(table.scores.get((method, t, k))) for t in table.tasks],
                         mean_std_cell(table.average(method, k))])
    return header, body


def render_data_scaling_markdown(table: DataScalingTable) -> str:
    header, body = data_scaling_rows(table)
    out = ["### Data scaling: prompt-based few-shot accuracy against k (examples per class)", "",
           "| " + " | ".join(header) + " |", "|" + "|".join(["---", "---:"] + ["---:"] * (len(header) - 2)) + "|"]
    out += ["| " + " | ".join(line) + " |" for line in body]
    out += ["", "- Accuracy in %, mean (sample std) over seeds; each seed draws its own k-shot sample. "
            "'Average' is over the tasks, its std combines theirs.",
            f"- Crossing: {table.crossing()}."]
    lines = []
    for method in table.methods:
        steps = ", ".join(f"{k1}→{k2}: {v:+.3f}" for k1, k2, v in table.marginal(method))
        overall = table.overall_marginal(method)
        lines.append(f"  - {method}: {steps or '–'}; whole range {'–' if math.isnan(overall) else f'{overall:+.3f}'}")
    out += ["- Marginal benefit per added training example per class (average accuracy points):", *lines]
    if table.fft and table.lora:
        f, lo = table.overall_marginal(table.fft), table.overall_marginal(table.lora)
        ratio = f / lo if lo and not math.isnan(f) and not math.isnan(lo) else float("nan")
        out.append(f"- Ratio FFT / LoRA of the whole-range marginal benefit ({table.fft} / {table.lora}): "
                   f"{'–' if math.isnan(ratio) else f'{ratio:.2f}'} (Theorem 5 predicts FFT gains more per example).")
    return "\n".join(out) + "\n"


def plot_data_scaling(table: DataScalingTable, path: Path) -> Path:
    """Average accuracy against k (log x), one line per method, seeds' spread as error bars."""
    # matplotlib only when a figure is drawn: importing pefteval never sets an application's backend
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, method in enumerate(table.methods):
        pts = [(k, *table.average(method, k)) for k in table.ks]
        pts = [(k, 100 * m, 0.0 if math.isnan(s) else 100 * s) for k, m, s in pts if not math.isnan(m)]
        if not pts:
            continue
        xs, ys, errs = zip(*pts)
        ax.errorbar(xs, ys, yerr=errs, fmt="o-", color=f"C{i}", capsize=3, label=method)
    ax.set_xscale("log")
    ax.set_xticks(table.ks)
    ax.set_xticklabels([str(k) for k in table.ks])
    ax.set_xlabel("training examples per class (k, log scale)")
    ax.set_ylabel(f"average accuracy (%) over {', '.join(table.tasks)}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)
