"""What training saves for the analyses, and how an analysis gets a trained model back.

At the end of every trial (``finish_trial``), next to the trained weights (``adapter/``, ``model/`` or
``bitfit/``: see pefteval/artifacts.py):

- ``increments.json``: summary statistics of the increment of every tensor the method changed
  (std, excess kurtosis, small-value share, Frobenius and spectral norm; singular values of
  every matrix), kilobytes to a few MB;
- ``increments.safetensors``: the full increments of the modules an analysis draws (the last
  block's query projection, the prompt embeddings of prompt methods, and any module matched by
  ``analyses.increment_modules``);
- ``probe.safetensors``: the fixed validation batch of the model-based analyses;
- ``analysis/bound.json`` and ``analysis/sensitivity.json`` when the experiment lists those
  analyses, measured on the model still in memory;
- ``analysis/intruders.json`` (intruder dimensions: the largest cosines of each matrix's top
  singular vectors), and with forgetting or similarity listed ``general_probe.safetensors`` (the
  general-text paragraphs, tokenised), ``analysis/forgetting.json`` (per-paragraph loss before and
  after) and ``analysis/similarity.json`` with ``similarity.safetensors`` (per-layer Gram matrices).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pefteval.analysis.bound import measure_bound
from pefteval.analysis.intruders import measure_intruders
from pefteval.analysis.representations import measure_forgetting, measure_similarity
from pefteval.analysis.sensitivity import measure_sensitivity
from pefteval.analysis.weights import default_module, increments, kind_of, module_of, tensor_stats
from pefteval.artifacts import missing_weights_message, saved_entry
from pefteval.config import TrialConfig
from pefteval.errors import UserError
from pefteval.files import atomic_write_json, make_dir, save_tensors
from pefteval.kinds import load_base, probe_loss, rebuild
from pefteval.probe import Probe


def save_increments(model: nn.Module, base_state: dict[str, torch.Tensor], run_dir: Path, config: dict[str, Any],
                    patterns: list[str]) -> dict[str, dict[str, Any]]:
    """Write increments.json and increments.safetensors; returns the per-tensor statistics."""
    deltas = increments(model, base_state)
    default = default_module(list(base_state))
    wanted = [re.escape(default) + "$", *patterns]
    full = {n: d.contiguous() for n, d in deltas.items()
            if kind_of(n) == "prompt" or any(re.search(p, module_of(n)) for p in wanted)}
    save_tensors(full, run_dir / "increments.safetensors")
    method = config["method"]
    stats = {n: {"kind": kind_of(n), **tensor_stats(d)} for n, d in sorted(deltas.items())}
    atomic_write_json(run_dir / "increments.json", {
        "model": config["model"],
        "task": config["task"],
        "method": config["method_label"],
        "method_type": method.get("type"),
        "lora_rank": method.get("r") if method.get("type") in ("lora", "adalora") else None,
        "seed": config["seed"],
        "default_module": default,
        "full": sorted(full),
        "modules": stats,
    })
    return stats


def finish_trial(trial: TrialConfig, model: nn.Module, run_dir: Path, probe: Probe | None,
                 rng_state: torch.Tensor, save_trainable: Callable[[nn.Module, Path], None],
                 general: Probe | None = None) -> float:
    """Save the trained tensors and what the analyses read; run the per-model analyses the
    experiment asks for. Returns the seconds this took (not counted as training or evaluation)."""
    started = time.perf_counter()
    if trial.save_weights:
        save_trainable(model, run_dir)
    options = trial.analysis
    if not options.capture:
        return time.perf_counter() - started
    # the same draw as the trial's own load: the same initial head
    base, _kind = load_base(trial, rng_state)
    base_state = {n: p.detach() for n, p in base.named_parameters()}
    stats = save_increments(model, base_state, run_dir, trial.identity(), options.increment_modules)
    if "intruders" in options.run:
        make_dir(run_dir / "analysis")
        atomic_write_json(run_dir / "analysis" / "intruders.json",
                          measure_intruders(model, base_state, max(options.intruder_saved, options.intruder_k)))
    if general is not None:
        general.save(run_dir / "general_probe.safetensors")
        make_dir(run_dir / "analysis")
        measure_general(model, base, general, run_dir, options.run)
    if probe is not None:
        probe.save(run_dir / "probe.safetensors")
        make_dir(run_dir / "analysis")
        if "bound" in options.run:
            atomic_write_json(run_dir / "analysis" / "bound.json", measure_bound(model, base, probe, stats))
        if "sensitivity" in options.run:
            atomic_write_json(run_dir / "analysis" / "sensitivity.json",
                              measure_sensitivity(model, probe.head(options.sensitivity_examples), options.rho,
                                                  options.draws, trial.seed, options.power_iterations,
                                                  options.power_tol, loss_fn=probe_loss))
    return time.perf_counter() - started


def measure_general(model: nn.Module, base: nn.Module, general: Probe, run_dir: Path, wanted: list[str]) -> None:
    """Forgetting and similarity on the general-text probe, written under ``run_dir/analysis``."""
    if "forgetting" in wanted:
        atomic_write_json(run_dir / "analysis" / "forgetting.json", measure_forgetting(model, base, general))
    if "similarity" in wanted:
        summary, grams = measure_similarity(model, base, general)
        save_tensors(grams, run_dir / "analysis" / "similarity.safetensors")
        atomic_write_json(run_dir / "analysis" / "similarity.json", summary)


def load_trained(run_dir: Path) -> tuple[nn.Module, nn.Module, Probe, TrialConfig]:
    """A finished trial's trained model, its pretrained base and its probe, from the run directory."""
    needed = [run_dir / "trial.json", run_dir / "probe.safetensors"]
    missing = [p.name for p in needed if not p.is_file()]
    if saved_entry(run_dir) is None:
        if (run_dir / "trial.json").is_file() and not missing:
            raise UserError(missing_weights_message(run_dir))
        missing.append("the trained weights")
    if missing:
        raise UserError(f"{run_dir} lacks {', '.join(missing)}: this analysis needs the trained weights and the "
                        "validation probe that `pefteval run` saves: run the experiment into a new --out directory "
                        "with save_weights: all (complete trials are not retrained in place)")
    model, _kind, trial = rebuild(run_dir)
    base, _ = load_base(trial)
    return model, base, Probe.load(run_dir / "probe.safetensors"), trial
