"""The comparison as pictures: grouped bars per task (every split side by side: clean beside
adversarial) with 95% intervals over seeds and test examples, and a Pareto view of the clean
score against trainable parameters, peak memory and training time per method (the view PEFT's
method-comparison app is used for). Both are PNGs next to the report, embedded in its HTML page."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pefteval.reporting.fmt import save_figure
from pefteval.tasks import TASKS

COMPARISON_PNG = "comparison.png"
PARETO_PNG = "pareto.png"
SPLIT_NAMES = {"test": "clean", "advglue": "AdvGLUE"}


def _display(task: str) -> str:
    return TASKS[task].display if task in TASKS else task


def _split_name(task: str, split: str) -> str:
    if split in SPLIT_NAMES:
        return SPLIT_NAMES[split]
    short = TASKS[task].short_names if task in TASKS else {}
    return short.get(split, split)


def plot_comparison(significance: Any, methods: list[str], path: Path) -> Path | None:
    """One panel per task: per method a bar per split, the mean score with its 95% interval; a
    method that differs significantly from FFT (Holm) carries ▲ or ▼ above its bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(t for t, _s, _m in significance.arms))
    if not tasks:
        return None
    fig, axes = plt.subplots(1, len(tasks), figsize=(max(5.0, 1.1 * len(methods) + 1.5) * len(tasks) / 1.4, 3.6),
                             squeeze=False)
    cmap = plt.get_cmap("tab10")
    for ax, task in zip(axes[0], tasks):
        splits = list(dict.fromkeys(s for t, s, _m in significance.arms if t == task))
        shown = [m for m in methods if any((task, s, m) in significance.arms for s in splits)]
        width = 0.8 / max(1, len(splits))
        for j, split in enumerate(splits):
            xs, means, errs = [], [], [[], []]
            for i, method in enumerate(shown):
                arm = significance.arms.get((task, split, method))
                if arm is None:
                    continue
                x = i + (j - (len(splits) - 1) / 2) * width
                xs.append(x)
                means.append(100 * arm.mean)
                low = 0.0 if math.isnan(arm.low) else 100 * (arm.mean - arm.low)
                high = 0.0 if math.isnan(arm.high) else 100 * (arm.high - arm.mean)
                errs[0].append(low)
                errs[1].append(high)
                mark = significance.mark(task, split, method)
                if mark and mark != "≈":
                    ax.text(x, 100 * arm.mean + high + 1, mark, ha="center", va="bottom", fontsize=8,
                            color="#b00020" if mark == "▼" else "#006400")
            ax.bar(xs, means, width=width * 0.95, yerr=errs, capsize=2, color=cmap(j),
                   label=_split_name(task, split), edgecolor="white", linewidth=0.5)
        ax.set_xticks(range(len(shown)))
        ax.set_xticklabels(shown, rotation=30, ha="right", fontsize=8)
        ax.set_title(_display(task), fontsize=10)
        ax.set_ylabel("score (%)")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("Mean score per method with 95% intervals (seeds and test examples); ▲/▼: significantly "
                 "above/below FFT (Holm)", fontsize=9)
    return save_figure(fig, path)


def pareto_points(table: Any) -> dict[str, dict[str, float]]:
    """Per method: the clean score (mean over tasks of the test split's mean), mean trainable
    parameters, peak memory (device memory allocated where trials ran on CUDA, else resident
    memory) and training seconds per trial."""
    sig = table.significance
    tasks = list(dict.fromkeys(t for t, s, _m in sig.arms if s == "test"))
    points: dict[str, dict[str, float]] = {}
    if not tasks:  # no per-example test scores (instruction tuning: MT-Bench is judged)
        return points
    for row in table.rows:
        scores = [sig.arms[(t, "test", row.method)].mean for t in tasks if (t, "test", row.method) in sig.arms]
        if len(scores) != len(tasks) or not row.trainable:
            continue
        device = [a for a, _r in row.peak_device_mb]
        memory = device if device else [m for m in row.peak_rss_mb if not math.isnan(m)]
        points[row.method] = {"score": sum(scores) / len(scores),
                              "trainable": sum(row.trainable) / len(row.trainable),
                              "memory": sum(memory) / len(memory) if memory else float("nan"),
                              "seconds": sum(row.train_seconds) / len(row.train_seconds)}
    return points


def frontier(points: dict[str, dict[str, float]], cost: str) -> list[str]:
    """The methods no other method beats on both ``cost`` (lower) and the score (higher), by cost."""
    best = []
    for name, p in points.items():
        dominated = any(q[cost] <= p[cost] and q["score"] >= p["score"] and (q[cost] < p[cost] or q["score"] >
                                                                               p["score"])
                        for other, q in points.items() if other != name)
        if not dominated and not math.isnan(p[cost]):
            best.append(name)
    return sorted(best, key=lambda m: points[m][cost])


def plot_pareto(table: Any, path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = pareto_points(table)
    if len(points) < 2:
        return None
    gpu = any(row.peak_device_mb for row in table.rows)
    costs = [("trainable", "trainable parameters (log)", True),
             ("memory", "peak GPU MB (allocated)" if gpu else "peak resident MB", False),
             ("seconds", "training seconds per trial", False)]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for ax, (cost, label, log) in zip(axes, costs):
        for name, p in points.items():
            ax.scatter(p[cost], 100 * p["score"], s=28)
            ax.annotate(name, (p[cost], 100 * p["score"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        line = frontier(points, cost)
        ax.plot([points[m][cost] for m in line], [100 * points[m]["score"] for m in line], "--", color="grey",
                linewidth=1, label="Pareto front")
        if log:
            ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("clean score (%), mean over tasks")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Score against cost per method (mean over seeds; the front: no method is both cheaper and better)",
                 fontsize=9)
    return save_figure(fig, path)
