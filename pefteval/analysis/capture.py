"""What training saves for the analyses, and how an analysis gets a trained model back.

At the end of every trial (``finish_trial``), next to ``trainable.safetensors``:

- ``increments.json``: summary statistics of the increment of every tensor the method changed
  (std, excess kurtosis, small-value share, Frobenius and spectral norm; singular values of
  every matrix), kilobytes to a few MB;
- ``increments.safetensors``: the full increments of the modules an analysis draws (the last
  block's query projection, the prompt embeddings of prompt methods, and any module matched by
  ``analyses.increment_modules``);
- ``probe.safetensors``: the fixed validation batch of the model-based analyses;
- ``analysis/bound.json`` and ``analysis/sensitivity.json`` when the experiment lists those
  analyses, measured on the model still in memory.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pefteval.analysis.probe import Probe
from pefteval.analysis.weights import default_module, increments, kind_of, module_of, tensor_stats


def analysis_options(config: dict[str, Any]) -> Any:
    from pefteval.config import AnalysisConfig

    return AnalysisConfig(**config.get("analysis") or {})


def trial_kind(config: dict[str, Any]) -> str:
    from pefteval.tasks import get_task

    kind = get_task(config["task"]).kind
    if kind == "classification" and config["data"].get("k_shot") is not None:
        return "fewshot"
    return kind


def load_base_model(config: dict[str, Any]) -> tuple[nn.Module, bool]:
    """The model as a trial loads it before applying the method (pretrained weights and, for
    classification, a fresh head drawn from the torch RNG)."""
    kind = trial_kind(config)
    if kind == "classification":
        from pefteval.models import load_for_classification
        from pefteval.tasks import get_task

        task = get_task(config["task"])
        model, _tok, is_decoder = load_for_classification(config["model"], task.num_labels, list(task.label_names))
    else:
        from pefteval.qa import load_qa_model

        model, _tok, is_decoder = load_qa_model(config["model"])
    return model, is_decoder


def save_increments(model: nn.Module, base_state: dict[str, torch.Tensor], run_dir: Path, config: dict[str, Any],
                    patterns: list[str]) -> dict[str, dict[str, Any]]:
    """Write increments.json and increments.safetensors; returns the per-tensor statistics."""
    from safetensors.torch import save_file

    from pefteval.store import atomic_write_json

    deltas = increments(model, base_state)
    default = default_module(list(base_state))
    wanted = [re.escape(default) + "$", *patterns]
    full = {n: d.contiguous() for n, d in deltas.items()
            if kind_of(n) == "prompt" or any(re.search(p, module_of(n)) for p in wanted)}
    tmp = run_dir / ".increments.safetensors.tmp"
    save_file(full, str(tmp))
    tmp.replace(run_dir / "increments.safetensors")
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


def finish_trial(config: dict[str, Any], model: nn.Module, run_dir: Path, probe: Probe | None,
                 rng_state: torch.Tensor, save_trainable: Callable[[nn.Module, Path], None]) -> float:
    """Save the trained tensors and what the analyses read; run the per-model analyses the
    experiment asks for. Returns the seconds this took (not counted as training or evaluation)."""
    from pefteval.analysis.bound import measure_bound
    from pefteval.analysis.sensitivity import measure_sensitivity
    from pefteval.store import atomic_write_json

    started = time.perf_counter()
    if config.get("save_weights", True):
        save_trainable(model, run_dir)
    options = analysis_options(config)
    if not options.capture:
        return time.perf_counter() - started
    with torch.random.fork_rng():
        torch.set_rng_state(rng_state)  # the same draw as the trial's own load: the same initial head
        base, _ = load_base_model(config)
    base_state = {n: p.detach() for n, p in base.named_parameters()}
    stats = save_increments(model, base_state, run_dir, config, options.increment_modules)
    if probe is not None:
        probe.save(run_dir / "probe.safetensors")
        (run_dir / "analysis").mkdir(exist_ok=True)
        if "bound" in options.run:
            atomic_write_json(run_dir / "analysis" / "bound.json", measure_bound(model, base, probe, stats))
        if "sensitivity" in options.run:
            atomic_write_json(run_dir / "analysis" / "sensitivity.json",
                              measure_sensitivity(model, probe.head(options.sensitivity_examples), options.rho,
                                                  options.draws, config["seed"], options.power_iterations,
                                                  options.power_tol))
    return time.perf_counter() - started


def load_trained(run_dir: Path) -> tuple[nn.Module, nn.Module, Probe, dict[str, Any]]:
    """A finished trial's trained model, its pretrained base and its probe, from the run directory."""
    from pydantic import TypeAdapter
    from safetensors.torch import load_file

    from pefteval.config import MethodConfig
    from pefteval.errors import UserError
    from pefteval.methods import apply_method, load_trainable_state

    needed = [run_dir / "trial.json", run_dir / "trainable.safetensors", run_dir / "probe.safetensors"]
    missing = [p.name for p in needed if not p.is_file()]
    if missing:
        raise UserError(f"{run_dir} lacks {', '.join(missing)}: this analysis needs the trained weights and the "
                        "validation probe that `pefteval run` saves: run the experiment into a new --out directory "
                        "with save_weights: true (complete trials are not retrained in place)")
    config = json.loads((run_dir / "trial.json").read_text())
    method = TypeAdapter(MethodConfig).validate_python({**config["method"], "name": config["method_label"]})
    base, is_decoder = load_base_model(config)
    model, _ = load_base_model(config)
    kind = trial_kind(config)
    task_kind = {"fewshot": "generation"}.get(kind, kind)
    applied = apply_method(model, method, 1, is_decoder, task_kind=task_kind)
    load_trainable_state(applied.model, load_file(str(run_dir / "trainable.safetensors")))
    applied.model.eval()
    return applied.model, base, Probe.load(run_dir / "probe.safetensors"), config

