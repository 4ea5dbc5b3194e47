"""The paper's Figure 1: the distribution of the learned increments per method.

For LoRA and AdaLoRA the merged update B·A·scale of the chosen module, for FFT and top-k FFT the
difference to the pretrained weight, for BitFit the difference of the module's bias, for IA3
the effective update W0 ⊙ (l − 1), and for prefix/prompt tuning the learned prompt embeddings.
A method that does not train the chosen module is listed as such."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import torch
from safetensors.torch import load_file

from pefteval.analysis.capture import load_trained
from pefteval.analysis.results import AnalysisResult, Run, Section, cell
from pefteval.analysis.weights import PROMPT_EMBEDDINGS, increments, module_of, tensor_stats
from pefteval.errors import UserError
from pefteval.reporting.fmt import save_figure

PROMPT_TYPES = ("prefix", "prompt", "p_tuning")
STAT_KEYS = [("std", "Std"), ("kurtosis", "Excess kurtosis"), ("small_share", "Share below 1e-4·max"),
             ("fro", "Frobenius"), ("spectral", "Spectral")]


def _is_prompt(run: Run) -> bool:
    cfg = run.record["config"]["method"]
    return cfg.get("type") in PROMPT_TYPES or str(cfg.get("peft_type", "")).lower() in PROMPT_TYPES


def run_increment(run: Run, module: str | None) -> tuple[str, torch.Tensor | None, float | None]:
    """(what was taken, the increment values, their spectral norm) for one trial; values None when
    the method left the module untouched. The spectral norm comes from the saved statistics: the
    matrix's, or the largest of the matched ones."""
    meta = run.increments()
    full = load_file(str(run.dir / "increments.safetensors")) if (run.dir / "increments.safetensors").is_file() else {}
    if _is_prompt(run):
        values = full.get(PROMPT_EMBEDDINGS)
        stats = meta["modules"].get(PROMPT_EMBEDDINGS, {})
        spectral = stats.get("spectral", float(values.norm())) if values is not None else None
        return "prompt embeddings", values, spectral
    pattern = re.escape(meta["default_module"]) + "$" if module is None else module
    names = [n for n in meta["modules"] if meta["modules"][n]["kind"] != "prompt"
             and re.search(pattern, module_of(n))]
    weights = [n for n in names if n.endswith(".weight")]
    chosen = weights or [n for n in names if n.endswith(".bias")]
    if not chosen:
        return "not trained", None, None
    what = "weight Δ" if weights else "bias Δ"
    missing = [n for n in chosen if n not in full]
    if missing:
        full.update(_reconstruct(run, missing))
    return what, torch.cat([full[n].flatten() for n in chosen]), max(meta["modules"][n]["spectral"] for n in chosen)


def _reconstruct(run: Run, names: list[str]) -> dict[str, torch.Tensor]:
    """Increments of modules training did not save in full, from the saved trained tensors."""
    model, base, _probe, _cfg = load_trained(run.dir)
    deltas = increments(model, {n: p.detach() for n, p in base.named_parameters()})
    return {n: deltas[n] for n in names if n in deltas}


def analyse_increments(runs: list[Run], target: Path, module: str | None) -> AnalysisResult:
    if module is not None:
        try:
            re.compile(module)
        except re.error as err:
            raise UserError(f"--module {module!r} is not a regular expression: {err}") from None
    result = AnalysisResult("increments", "Learned increments (Figure 1)")
    by_task: dict[str, dict[str, list[tuple[str, torch.Tensor | None, dict]]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        what, values, spectral = run_increment(run, module)
        stats = {}
        if values is not None:
            stats = {**tensor_stats(values, singular_values=False), "spectral": spectral}
        by_task[run.task][run.method].append((what, values, stats))
    default = runs[0].increments()["default_module"] if runs else "?"
    for task, methods in by_task.items():
        rows = []
        for method, items in methods.items():
            trained = [s for _w, v, s in items if v is not None]
            what = items[0][0]
            if not trained:
                rows.append([method, what, "–", *["–"] * len(STAT_KEYS)])
                continue
            n = items[0][1].numel()
            rows.append([method, what, f"{n:,}", *[cell([s[k] for s in trained], 4) for k, _ in STAT_KEYS]])
        result.sections.append(Section(f"{task}", ["Method", "Increment", "Values",
                                                   *[label for _k, label in STAT_KEYS]], rows))
        result.figures.append(_plot(task, methods, target / f"increments_{_slug(task)}.png", module or default))
        if "bitfit" not in methods:
            note = _no_biases_note(task, [r for r in runs if r.task == task])
            if note:
                result.notes.append(note)
    result.notes += [
        f"Module: {module or default} (the last block's query projection)" if module is None else
        f"Module pattern: {module} (every matching module's values together)",
        "Each cell is the mean (std) over seeds of one trial's statistic. Excess kurtosis is 0 for a Gaussian; "
        "larger means a sharper peak at zero with heavier tails. 'Share' counts entries below 1e-4 of the "
        "largest magnitude. Spectral is the largest singular value (the L2 norm for a bias or prompt vector set "
        "spanning several modules).",
        "LoRA/AdaLoRA: merged B·A·scale; FFT, top-k FFT: trained minus pretrained weight; BitFit: bias difference; "
        "IA3: W0 ⊙ (l − 1); prefix/prompt tuning: the learned prompt embeddings (their module is the prompt).",
    ]
    return result


def _no_biases_note(task: str, runs: list[Run]) -> str | None:
    """What Figure 1's BitFit panel lacks when the model has no bias terms at all: seen from a full
    fine-tuning trial, whose increments list every parameter of the model."""
    for run in runs:
        meta = run.increments()
        if meta.get("method_type") == "fft" and meta["modules"]:
            if not any(name.endswith(".bias") for name in meta["modules"]):
                return (f"{task}: no BitFit row: {meta.get('model', 'the model')} has no bias terms (LLaMA-family "
                        "decoders have none), so BitFit cannot train it; Figure 1's BitFit panel needs a model with "
                        "biases")
            return None
    return None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()


def _plot(task: str, methods: dict, path: Path, module: str) -> Path:
    """Weight increments overlaid on one axis; prompt embeddings (another quantity, on another
    scale) in a panel of their own."""
    # matplotlib only when a figure is drawn: importing pefteval never sets an application's backend
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pooled = {m: (items[0][0], torch.cat([v.flatten() for _w, v, _s in items if v is not None]))
              for m, items in methods.items() if any(v is not None for _w, v, _s in items)}
    weights = {m: v for m, (what, v) in pooled.items() if what != "prompt embeddings"}
    prompts = {m: v for m, (what, v) in pooled.items() if what == "prompt embeddings"}
    panels = [(f"{task}: learned increments, {module}", weights)] if weights or not prompts else []
    if prompts:
        panels.append((f"{task}: prompt embeddings", prompts))
    fig, axes = plt.subplots(1, len(panels), figsize=(7.0 * len(panels), 4.2), squeeze=False)
    for ax, (title, group) in zip(axes[0], panels):
        if group:
            edge = max(float(torch.quantile(v.abs()[:1_000_000], 0.999)) for v in group.values()) or 1.0
            bins = torch.linspace(-edge, edge, 121).numpy()
            for method, values in group.items():
                ax.hist(values.clamp(-edge, edge).numpy(), bins=bins, density=True, histtype="step", linewidth=1.4,
                        label=f"{method} (std {values.std().item():.2e})")
            ax.set_yscale("log")
            ax.legend(fontsize=8)
        ax.set_xlabel("value (clipped to the 99.9th percentile of |value|)")
        ax.set_ylabel("density (log)")
        ax.set_title(title, fontsize=9)
    return save_figure(fig, path)
