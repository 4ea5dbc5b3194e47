"""The analyses that need each trained model (Theorems 2 and 4): per trial they read
``analysis/<name>.json``, measured when the trial finished if the experiment listed the analysis,
and otherwise measure it now from the saved weights and probe (then keep it there)."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from pefteval.analysis.bound import MAPPING_NOTES, measure_bound
from pefteval.analysis.capture import load_trained
from pefteval.analysis.results import AnalysisResult, Run, Section, cell, fmt, mean_std, read_json
from pefteval.analysis.sensitivity import measure_sensitivity
from pefteval.analysis.weights import CHAIN_TYPES
from pefteval.files import atomic_write_json
from pefteval.kinds import probe_loss


def per_run(run: Run, name: str, options: Any) -> dict[str, Any]:
    path = run.dir / "analysis" / f"{name}.json"
    if path.is_file():
        return read_json(path)
    model, base, probe, config = load_trained(run.dir)
    if name == "bound":
        data = measure_bound(model, base, probe, run.increments()["modules"])
    else:
        data = measure_sensitivity(model, probe.head(options.sensitivity_examples), options.rho, options.draws,
                                   config.seed, options.power_iterations, options.power_tol, loss_fn=probe_loss)
    path.parent.mkdir(exist_ok=True)
    atomic_write_json(path, data)
    return data


def _by_task(runs: list[Run], name: str, options: Any) -> dict[str, dict[str, list[tuple[Run, dict[str, Any]]]]]:
    out: dict[str, dict[str, list[tuple[Run, dict[str, Any]]]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        out[run.task][run.method].append((run, per_run(run, name, options)))
    return out


def _first(grouped: dict[str, dict[str, list[tuple[Run, dict[str, Any]]]]]) -> dict[str, Any]:
    """The first trial's measurement (for settings every trial shares), or {}."""
    for methods in grouped.values():
        for items in methods.values():
            return items[0][1]
    return {}


def analyse_bound(runs: list[Run], target: Path, options: Any) -> AnalysisResult:
    result = AnalysisResult("bound", "Capacity bound vs measured change (Theorem 2)")
    held_all: dict[str, tuple[int, int]] = {}
    grouped = _by_task(runs, "bound", options)
    for task, methods in grouped.items():
        rows, layer_phi = [], defaultdict(lambda: defaultdict(list))
        w0 = None
        for method, items in methods.items():
            inputs = [x for _run, data in items for x in data["inputs"]]
            w0 = w0 or items[0][1]["w0"]
            for _run, data in items:
                for layer in data["layers"]:
                    if layer["phi"]:
                        layer_phi[layer["layer"]][method].append(max(layer["phi"].values()))
            has_weights = all(data["weight_increments"] for _run, data in items)
            ratios = [x["measured"] / x["bound"] for x in inputs if x["bound"] > 0]
            held = sum(1 for x in inputs if x["measured"] <= x["bound"])
            if has_weights:
                held_all[f"{task}/{method}"] = (held, len(inputs))
            outside = sorted({n for _run, data in items for n in data["outside"]})
            rows.append([method, str(len(inputs)), fmt(statistics.fmean(x["x_norm"] for x in inputs)),
                         fmt(statistics.fmean(x["measured"] for x in inputs)),
                         fmt(statistics.fmean(x["bound"] for x in inputs)) if has_weights else "0",
                         fmt(statistics.median(ratios)) if ratios else "–", fmt(max(ratios)) if ratios else "–",
                         f"{held}/{len(inputs)}" if has_weights else "n/a: no weight increment",
                         ", ".join(_short(n) for n in outside) or "–"])
        result.sections.append(Section(
            f"{task}: bound vs measured ‖f(x) − f0(x)‖ (final hidden states, per input)",
            ["Method", "Inputs", "Mean ‖x‖", "Mean measured", "Mean bound", "Median measured/bound",
             "Max measured/bound", "Bound held", "Increments outside the chain"], rows))
        methods_seen = list(methods)
        layer_rows = []
        for row in w0 or []:
            layer = row["layer"]
            layer_rows.append([str(layer), *[fmt(row.get(t)) for t in CHAIN_TYPES],
                               *[fmt(mean_std(layer_phi[layer][m])[0]) if layer_phi[layer][m] else "–"
                                 for m in methods_seen]])
        result.sections.append(Section(
            f"{task}: per layer, pretrained ‖W0‖₂ on the chain and the largest ‖Φ_k‖₂ per method (mean over seeds)",
            ["Layer", *[f"‖W0‖ {t}" for t in CHAIN_TYPES], *[f"‖Φ‖ {m}" for m in methods_seen]], layer_rows))
    if held_all:
        broken = [k for k, (h, n) in held_all.items() if h < n]
        result.notes.append("The bound held on every input for every method with weight increments." if not broken
                            else f"The bound failed on some inputs for: {', '.join(broken)}.")
    first = _first(grouped)
    if first:
        a = first["activation"]
        result.notes.append(f"Activation: {a['name']}, Lipschitz constant {a['lipschitz']}.")
    result.notes += MAPPING_NOTES
    return result


def _short(name: str) -> str:
    return name.replace("modules_to_save.default.", "")


def _pair_means(values: list[float]) -> list[float]:
    """Mean ΔL of each antithetic pair (ε, −ε): the curvature part, without the gradient term."""
    return [(values[i] + values[i + 1]) / 2 for i in range(0, len(values) - 1, 2)]


def analyse_sensitivity(runs: list[Run], target: Path, options: Any) -> AnalysisResult:
    result = AnalysisResult("sensitivity", "Sensitivity to weight perturbations (Theorem 4)")
    verdicts = []
    grouped = _by_task(runs, "sensitivity", options)
    for task, methods in grouped.items():
        rows = []
        full_means: dict[str, dict[str, float]] = {}
        full_stds: dict[str, dict[str, float]] = {}
        fft = [m for m in methods if methods[m][0][0].method_type == "fft" and
               not methods[m][0][0].record["config"]["method"].get("top_k_layers")]
        for method, items in methods.items():
            rhos = [str(r) for r in items[0][1]["rho"]]
            lam = [d["sharpness"]["lambda_max"] for _r, d in items]
            dims = items[0][1]
            share = dims["subspace_dimension"] / max(dims["total_dimension"], 1)
            full_means[method], full_stds[method] = {}, {}
            for i, rho in enumerate(rhos):
                parts = {}
                for part in ("full", "inside", "orthogonal"):
                    parts[part] = [v for _r, d in items
                                   for v in _pair_means(d["delta_loss"].get(part, {}).get(rho, []))]
                m, s = mean_std(parts["full"])
                full_means[method][rho], full_stds[method][rho] = m, s
                rows.append([method if i == 0 else "", rho, cell(parts["full"], 4),
                             cell(parts["inside"], 4) if parts["inside"] else "–",
                             cell(parts["orthogonal"], 4) if parts["orthogonal"] else "– (none)",
                             cell(lam, 3) if i == 0 else "", f"{100 * share:.3f}" if i == 0 else "",
                             str(sum(len(d["delta_loss"]["full"][rho]) for _r, d in items)) if i == 0 else ""])
        result.sections.append(Section(
            f"{task}: ΔL on the validation probe, mean (std) over antithetic pairs × seeds",
            ["Method", "ρ", "ΔL full", "ΔL inside subspace", "ΔL orthogonal", "λ_max(H)", "Subspace % of θ",
             "Draws (all seeds)"], rows))
        for ref in fft:
            for method in methods:
                if method == ref:
                    continue
                for rho, peft in full_means[method].items():
                    full = full_means[ref][rho]
                    spread = (full_stds[method][rho] ** 2 + full_stds[ref][rho] ** 2) ** 0.5
                    held = peft > full
                    verdicts.append([task, method, rho, fmt(peft, 4), fmt(full, 4), "yes" if held else "no",
                                     "yes" if abs(peft - full) < spread else "no"])
    if verdicts:
        result.sections.append(Section("ΔL_peft > ΔL_full? (full-space perturbation of the same relative size)",
                                       ["Task", "Method", "ρ", "ΔL_peft", "ΔL_full", "Held",
                                        "Difference within the pairs' spread"], verdicts))
        held = sum(1 for v in verdicts if v[5] == "yes")
        clear = sum(1 for v in verdicts if v[5] == "yes" and v[6] == "no")
        result.notes.append(f"ΔL_peft > ΔL_full held in {held} of {len(verdicts)} (method, task, ρ) comparisons; "
                            f"in {clear} of them by more than the spread (root sum of squares of the two stds).")
    else:
        result.notes.append("No full-FFT trial here, so ΔL_peft cannot be compared with ΔL_full.")
    first = _first(grouped)
    result.notes += [
        f"Probe: the first {first.get('probe_examples', '?')} validation examples saved by training; "
        f"{first.get('draws', '?')} draws per trial in antithetic pairs (ε, −ε), whose mean ΔL is the curvature "
        "term ½εᵀHε (the gradient term cancels); λ_max by power iteration with exact Hessian-vector products "
        "over every weight except the token-embedding matrices, on the same batch; it is the largest-magnitude "
        "eigenvalue, negative where the loss curves down (the solution is not a minimum in that direction).",
        "A perturbation is Gaussian per tensor of the effective weights (LoRA/AdaLoRA/IA3 merged), split by "
        "orthogonal projection onto the method's trainable subspace (LoRA: tangent space of rank-r matrices at B·A; "
        "IA3: row/column rescalings; top-k FFT, BitFit: the trained tensors; the task head under every method); "
        "each part is rescaled so every tensor it touches moves by ρ times its norm. FFT's subspace is everything, "
        "so its 'inside' equals 'full' and it has no orthogonal part.",
    ]
    return result
