"""The analyses published since the paper, as ``pefteval analyze`` tables and figures: intruder
dimensions, forgetting and representation similarity (see ``intruders`` and ``representations``).
Each reads what training saved under ``runs/<trial>/analysis/``; a trial that did not measure
one when it finished is measured now from its saved weights (forgetting and similarity on the
general-text probe it saved, or, for a run that saved none, on the same paragraphs read from the
data directory and tokenised now), and the result is kept there."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from pefteval import stats
from pefteval.analysis.capture import load_trained
from pefteval.analysis.intruders import count, measure_intruders
from pefteval.analysis.representations import (
    finite_mean,
    linear_cka,
    make_general_probe,
    measure_forgetting,
    measure_similarity,
)
from pefteval.analysis.results import AnalysisResult, Run, Section, cell, fmt, mean_std, read_json
from pefteval.artifacts import missing_weights_message, saved_entry
from pefteval.errors import UserError
from pefteval.files import atomic_write_json, make_dir, save_tensors
from pefteval.kinds import load_base, rebuild
from pefteval.probe import Probe
from pefteval.reporting.fmt import save_figure
from pefteval.selection import record_kind

LM_KINDS = ("generative", "label_words", "instruct")  # the kinds whose model keeps its language-modelling head
TYPE_ORDER = ("query", "key", "value", "attn_out", "ffn_gate", "ffn_in", "ffn_out")


def _saved_or_measured(run: Run, name: str, options: Any, data_dir: Path | None) -> dict[str, Any]:
    path = run.dir / "analysis" / f"{name}.json"
    if path.is_file():
        return read_json(path)
    make_dir(run.dir / "analysis")
    kind_name = record_kind(run.record)
    if name == "forgetting" and kind_name not in LM_KINDS:  # known from the record: no model to load
        data = {"applies": False, "why": f"a {kind_name} trial's model ({run.record['config']['model']}) has a task "
                "head, no language-modelling head: its loss on general text is not defined"}
        atomic_write_json(path, data)
        return data
    if name == "intruders":
        model, base, _probe, _trial = load_trained(run.dir)
        base_state = {n: p.detach() for n, p in base.named_parameters()}
        data = measure_intruders(model, base_state, max(options.intruder_saved, options.intruder_k))
    else:
        general_path = run.dir / "general_probe.safetensors"
        if saved_entry(run.dir) is None:
            raise UserError(missing_weights_message(run.dir))
        model, kind, trial = rebuild(run.dir)
        base, _ = load_base(trial)
        if general_path.is_file():
            general = Probe.load(general_path)
        else:  # a run that did not list forgetting or similarity: the same paragraphs, tokenised now
            general = make_general_probe(kind.tokenizer, data_dir, options.general_texts, options.general_tokens)
            general.save(general_path)
        if name == "forgetting":
            data = measure_forgetting(model, base, general)
        else:
            data, grams = measure_similarity(model, base, general)
            save_tensors(grams, run.dir / "analysis" / "similarity.safetensors")
    atomic_write_json(path, data)
    return data


def _grouped(runs: list[Run], name: str, options: Any,
             data_dir: Path | None) -> dict[str, dict[str, list[tuple[Run, dict[str, Any]]]]]:
    out: dict[str, dict[str, list[tuple[Run, dict[str, Any]]]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        out[run.task][run.method].append((run, _saved_or_measured(run, name, options, data_dir)))
    return out


# ---------------------------------------------------------------- intruder dimensions

def analyse_intruders(runs: list[Run], target: Path, options: Any, data_dir: Path | None = None) -> AnalysisResult:
    k, eps = options.intruder_k, options.intruder_epsilon
    result = AnalysisResult("intruders", f"Intruder dimensions (Shuttleworth et al. 2024; k = {k}, ε = {eps:g})")
    grouped = _grouped(runs, "intruders", options, data_dir)
    figure_data: dict[str, dict[str, dict[str, float]]] = {}
    for task, methods in grouped.items():
        rows, type_rows, layer_counts = [], [], defaultdict(lambda: defaultdict(list))
        types = [t for t in TYPE_ORDER if any(m["type"] == t for _m, items in methods.items()
                                               for _r, d in items for m in d["matrices"].values())]
        figure_data[task] = {}
        for method, items in methods.items():
            totals, per_type, matrices = [], defaultdict(list), []
            for _run, data in items:
                if data["saved"] < k:
                    raise UserError(f"intruder_k {k} exceeds the {data['saved']} singular vectors training kept; "
                                    "lower analyses.intruder_k or retrain with a larger intruder_saved")
                by_type: dict[str, int] = defaultdict(int)
                by_layer: dict[int, int] = defaultdict(int)
                for m in data["matrices"].values():
                    n = count(m["max_cos_left"], k, eps)
                    by_type[m["type"]] += n
                    by_layer[m["layer"]] += n
                totals.append(sum(by_type.values()))
                right = sum(count(m["max_cos_right"], k, eps) for m in data["matrices"].values())
                matrices.append((len(data["matrices"]), len(data["matrices"]) + len(data["unchanged"]), right))
                for t in types:
                    per_type[t].append(by_type.get(t, 0))
                for layer, n in by_layer.items():
                    layer_counts[layer][method].append(n)
            changed, total, _right = matrices[0]
            rights = [r for _c, _t, r in matrices]
            rows.append([method, cell(totals, 1), cell(rights, 1), f"{changed} of {total}", str(len(items))])
            type_rows.append([method, *[cell(per_type[t], 1) for t in types]])
            figure_data[task][method] = {t: mean_std(per_type[t])[0] for t in types}
        result.sections.append(Section(f"{task}: intruders per trial (top-{k} left singular vectors of every changed "
                                       "block matrix), mean (std) over seeds",
                                       ["Method", "Intruders (left)", "Intruders (right)", "Matrices changed",
                                        "Seeds"], rows))
        result.sections.append(Section(f"{task}: intruders per module type, mean (std) over seeds",
                                       ["Method", *types], type_rows))
        layers = sorted(layer_counts)
        result.sections.append(Section(f"{task}: intruders per layer, mean over seeds", ["Layer", *methods],
                                       [[str(layer), *[fmt(mean_std(layer_counts[layer][m])[0], 2)
                                                       if layer_counts[layer][m] else "0" for m in methods]]
                                        for layer in layers]))
    result.notes += [
        "An intruder: a top-k singular vector of W0 + ΔW whose largest |cosine| with every singular vector of the "
        "pretrained W0 is below ε; counted over the block matrices (attention and FFN projections) each method "
        "changed (LoRA/AdaLoRA merged, IA3's rescaling applied; a matrix a method leaves as it was has none). "
        "Left singular vectors (output space) as in the paper's figures; the right ones beside them.",
        "Prompt methods change no weight and BitFit changes biases only: they have no intruders by construction.",
    ]
    result.figures.append(_plot_bars(figure_data, target / "intruders.png", "intruders per trial (mean over seeds)",
                                     f"Intruder dimensions by module type (k = {k}, ε = {eps:g})"))
    return result


def _plot_bars(data: dict[str, dict[str, dict[str, float]]], path: Path, ylabel: str, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(data), figsize=(5.5 * len(data), 3.4), squeeze=False)
    for ax, (task, methods) in zip(axes[0], data.items()):
        types = list(dict.fromkeys(t for per in methods.values() for t in per))
        width = 0.8 / max(1, len(methods))
        for j, (method, per) in enumerate(methods.items()):
            xs = [i + (j - (len(methods) - 1) / 2) * width for i in range(len(types))]
            ax.bar(xs, [per.get(t, 0.0) for t in types], width=width * 0.95, label=method)
        ax.set_xticks(range(len(types)))
        ax.set_xticklabels(types, fontsize=8)
        ax.set_title(task, fontsize=10)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.legend(fontsize=7)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


# ---------------------------------------------------------------- forgetting

def analyse_forgetting(runs: list[Run], target: Path, options: Any, data_dir: Path | None = None) -> AnalysisResult:
    result = AnalysisResult("forgetting", "Forgetting: loss on general text before and after training "
                            "(Biderman et al. 2024)")
    grouped = _grouped(runs, "forgetting", options, data_dir)
    why = None
    changes: dict[str, dict[str, list[float]]] = {}
    for task, methods in grouped.items():
        rows = []
        applies = {m: items for m, items in methods.items() if all(d["applies"] for _r, d in items)}
        if not applies:
            why = next(d["why"] for items in methods.values() for _r, d in items if not d["applies"])
            continue
        fft = next((m for m, items in applies.items() if items[0][0].method_type == "fft"), None)
        for method, items in applies.items():
            base = [finite_mean(d["base_loss"]) for _r, d in items]
            after = [finite_mean(d["trained_loss"]) for _r, d in items]
            change = [a - b for a, b in zip(after, base)]
            versus = "–"
            if fft is not None and method != fft:
                versus = _versus(applies[fft], items)
            rows.append([method, cell(base, 4), cell(after, 4), cell(change, 4), versus, str(len(items))])
            changes.setdefault(task, {})[method] = change
        first = next(iter(applies.values()))[0][1]
        result.sections.append(Section(
            f"{task}: mean per-token loss on {first['texts']} Wikipedia paragraphs ({first['tokens']:,} tokens), "
            "mean (std) over seeds", ["Method", "Before", "After", "Change (forgetting)", "Change vs FFT (95% CI)",
                                      "Seeds"], rows))
    if changes:
        result.figures.append(_plot_changes(changes, target / "forgetting.png"))
    if why is not None and not result.sections:
        result.notes.append(f"Forgetting does not apply to these models: {why}. For an encoder trained with a "
                            "classification head, `pefteval analyze similarity` measures how far its "
                            "representations moved on the same text instead.")
    result.notes += [
        "General text: Wikipedia paragraphs spread over SQuAD v1.1 dev's contexts (no pefteval task trains on them), "
        "truncated to the configured token budget, the same tokens for every trial; the loss is the decoder's "
        "next-token cross-entropy, its own language-modelling head, before (the pretrained model) and after "
        "training (LoRA active, a prompt method's virtual tokens in place).",
        "Change vs FFT: the method's loss change minus FFT's, per paragraph and seed, with the two-way (seeds × "
        "paragraphs) t test of docs/statistics.md (negative: forgets less than FFT).",
    ]
    return result


def _plot_changes(changes: dict[str, dict[str, list[float]]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(changes), figsize=(4.5 * len(changes), 3.2), squeeze=False)
    for ax, (task, methods) in zip(axes[0], changes.items()):
        names = list(methods)
        means = [mean_std(methods[m])[0] for m in names]
        stds = [mean_std(methods[m])[1] for m in names]
        ax.bar(names, means, yerr=[0.0 if math.isnan(v) else v for v in stds], capsize=3, color="#4c72b0")
        for i, m in enumerate(names):
            ax.scatter([i] * len(methods[m]), methods[m], color="black", s=10, zorder=3)
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.set_ylabel("loss after − before (nats per token)", fontsize=8)
        ax.set_title(task, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Forgetting: change of the loss on general text (bars: mean ± std over seeds; dots: seeds)",
                 fontsize=9)
    return save_figure(fig, path)


def _versus(fft_items: list[tuple[Run, dict[str, Any]]], items: list[tuple[Run, dict[str, Any]]]) -> str:
    by_seed = {r.seed: d for r, d in fft_items}
    mine = {r.seed: d for r, d in items}
    seeds = sorted(set(by_seed) & set(mine))
    if len(seeds) < 2:
        return "– (one seed)"

    def change(d: dict[str, Any]) -> list[float]:
        return [a - b for a, b in zip(d["trained_loss"], d["base_loss"])]

    base = np.array([change(by_seed[s]) for s in seeds])
    treated = np.array([change(mine[s]) for s in seeds])
    keep = np.isfinite(base).all(0) & np.isfinite(treated).all(0)
    d = stats.two_way_test(base[:, keep], treated[:, keep], paired_seeds=True)
    return f"{d.estimate:+.4f} [{d.low:+.4f}, {d.high:+.4f}]"


# ---------------------------------------------------------------- similarity

def _grams(run: Run) -> dict[str, torch.Tensor]:
    return load_file(str(run.dir / "analysis" / "similarity.safetensors"))


def analyse_similarity(runs: list[Run], target: Path, options: Any, data_dir: Path | None = None) -> AnalysisResult:
    result = AnalysisResult("similarity", "Representation similarity: linear CKA per layer on general text")
    grouped = _grouped(runs, "similarity", options, data_dir)
    curves: dict[str, dict[str, list[float]]] = {}
    for task, methods in grouped.items():
        fft = next((m for m, items in methods.items() if items[0][0].method_type == "fft"
                    and not items[0][0].record["config"]["method"].get("top_k_layers")), None)
        layers = min(d["layers"] for items in methods.values() for _r, d in items)
        per_layer_base = {m: [[d["cka_base"][i] for _r, d in items] for i in range(layers)]
                          for m, items in methods.items()}
        per_layer_fft: dict[str, list[list[float]]] = {}
        if fft is not None:
            fft_grams = {r.seed: _grams(r) for r, _d in methods[fft]}
            for method, items in methods.items():
                if method == fft:
                    continue
                values: list[list[float]] = [[] for _ in range(layers)]
                for run, _d in items:
                    if run.seed in fft_grams:
                        mine = _grams(run)
                        for i in range(layers):
                            values[i].append(linear_cka(fft_grams[run.seed][f"trained.{i}"], mine[f"trained.{i}"]))
                per_layer_fft[method] = values
        rows = []
        for i in range(layers):
            rows.append([str(i), *[fmt(mean_std(per_layer_base[m][i])[0], 4) for m in methods],
                         *[fmt(mean_std(per_layer_fft[m][i])[0], 4) if per_layer_fft[m][i] else "–"
                           for m in per_layer_fft]])
        result.sections.append(Section(
            f"{task}: CKA per layer (0: embeddings), mean over seeds",
            ["Layer", *[f"base vs {m}" for m in methods], *[f"FFT vs {m}" for m in per_layer_fft]], rows))
        summary = []
        for method in methods:
            last = per_layer_base[method][-1]
            mean_all = [finite_mean([per_layer_base[method][i][j] for i in range(layers)])
                        for j in range(len(last))]
            summary.append([method, cell(mean_all, 4), cell(last, 4),
                            cell([finite_mean([v[j] for v in per_layer_fft[method]]) for j in
                                  range(len(per_layer_fft[method][0]))], 4) if method in per_layer_fft
                            and per_layer_fft[method][0] else "–", str(len(last))])
        result.sections.append(Section(f"{task}: summary, mean (std) over seeds",
                                       ["Method", "CKA base vs trained, mean over layers", "… last layer",
                                        "CKA FFT vs method, mean over layers", "Seeds"], summary))
        curves[task] = {m: [mean_std(v)[0] for v in per_layer_base[m]] for m in methods}
    first = next((d for methods in grouped.values() for items in methods.values() for _r, d in items), {})
    result.notes += [
        f"Linear CKA (Kornblith et al. 2019) between two models' hidden states on {first.get('texts', '?')} "
        "Wikipedia paragraphs (SQuAD v1.1 dev contexts), each paragraph's states mean-pooled over its tokens; "
        "1 means the same representation up to rotation and scale. Base vs trained: how far training moved "
        "each layer; FFT vs method: trials of the same seed.",
        "Linear CKA is biased upward when the paragraphs are fewer than the model's width (unrelated "
        "representations score well above 0): compare methods with each other on the same paragraphs, not with "
        "an absolute scale; analyses.general_texts sets how many paragraphs training keeps.",
    ]
    result.figures.append(_plot_curves(curves, target / "similarity.png"))
    return result


def _plot_curves(curves: dict[str, dict[str, list[float]]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(5.5 * len(curves), 3.4), squeeze=False)
    for ax, (task, methods) in zip(axes[0], curves.items()):
        for method, values in methods.items():
            ax.plot(range(len(values)), values, marker="o", markersize=3, label=method)
        ax.set_xlabel("layer (0: embeddings)")
        ax.set_ylabel("CKA(base, trained)")
        ax.set_title(task, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("How far each layer's representation of general text moved", fontsize=10)
    return save_figure(fig, path)
