"""Theorem 4, measured: how much the validation loss rises when the trained weights are
perturbed, inside the method's trainable subspace and orthogonal to it, and how sharp the loss
is at the solution (largest Hessian eigenvalue).

A perturbation is drawn in the space of the effective weights θ (LoRA/AdaLoRA/IA3 merged into
the pretrained matrices; prefix embeddings as they are), Gaussian per tensor, and split by
orthogonal projection onto the trainable subspace (``weights.project``): for FFT every
direction, for top-k FFT and BitFit the trained tensors, for LoRA the tangent space of rank-r
matrices at B·A, for IA3 the row/column rescalings, and the task head for every method. Each
part is rescaled so that every tensor it touches moves by ρ times that tensor's norm (a tensor
that is all zeros is not moved). ΔL is the probe loss at θ + ε minus the loss at θ, in fp32.

Draws come in antithetic pairs (ε, −ε). A pair's mean ΔL cancels the first-order term εᵀ∇L,
which at a point that is not an exact minimum of the probe loss dominates single draws, and keeps
the curvature term ½εᵀHε (plus O(ρ⁴)); the table reports mean (std) over pairs."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from pefteval.analysis.weights import canonical, effective_model, kind_of, project, subspaces
from pefteval.device import model_device
from pefteval.probe import Probe

PARTS = ("full", "inside", "orthogonal")


def _named(model: nn.Module) -> dict[str, nn.Parameter]:
    out = {}
    for name, param in model.named_parameters():
        key = canonical(name)
        if key is not None and param.is_floating_point():
            out[key] = param
    return out


def top_hessian_eigenvalue(loss_fn: Any, params: list[torch.Tensor], iterations: int = 20, tol: float = 1e-3,
                           seed: int = 0) -> dict[str, Any]:
    """Largest-magnitude Hessian eigenvalue of ``loss_fn()`` w.r.t. ``params`` by power iteration
    with exact Hessian-vector products (double backward through one graph)."""
    gen = torch.Generator().manual_seed(seed)
    # drawn on the CPU generator, then moved: the same directions wherever the model is
    vec = [torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device) for p in params]
    norm = math.sqrt(sum(float((v * v).sum()) for v in vec))
    vec = [v / norm for v in vec]
    loss = loss_fn()
    grads = torch.autograd.grad(loss, params, create_graph=True)
    value, previous, done = 0.0, None, 0
    converged = False
    for step in range(1, iterations + 1):
        done = step
        hv = torch.autograd.grad(grads, params, grad_outputs=vec, retain_graph=True)
        value = sum(float((h * v).sum()) for h, v in zip(hv, vec))
        norm = math.sqrt(sum(float((h * h).sum()) for h in hv))
        if norm == 0:
            converged = True
            break
        vec = [h / norm for h in hv]
        if previous is not None and abs(value - previous) <= tol * abs(value):
            converged = True
            break
        previous = value
    return {"lambda_max": value, "iterations": done, "converged": converged}


def model_loss(model: nn.Module, probe: Probe) -> torch.Tensor:
    return model(**probe.tensors).loss


def sharpness(model: nn.Module, probe: Probe, iterations: int, tol: float, seed: int,
              loss_fn: Callable[[nn.Module, Probe], torch.Tensor] = model_loss) -> dict[str, Any]:
    """λ_max of the probe loss's Hessian over every weight of the effective model except token
    embedding matrices (whose rows outside the probe's tokens have zero curvature)."""
    named = _named(model)
    chosen = {k: p for k, p in named.items() if kind_of(k) != "embedding"}
    flags = {k: p.requires_grad for k, p in named.items()}
    impl_owner = getattr(model, "get_base_model", lambda: model)()
    previous_impl = getattr(impl_owner.config, "_attn_implementation", None)
    try:
        for k, p in named.items():
            p.requires_grad_(k in chosen)
        if previous_impl not in (None, "eager") and hasattr(impl_owner, "set_attn_implementation"):
            impl_owner.set_attn_implementation("eager")  # fused CPU attention has no double backward
        result = top_hessian_eigenvalue(lambda: loss_fn(model, probe), list(chosen.values()), iterations, tol,
                                        seed)
    finally:
        for k, p in named.items():
            p.requires_grad_(flags[k])
        if previous_impl not in (None, "eager") and hasattr(impl_owner, "set_attn_implementation"):
            impl_owner.set_attn_implementation(previous_impl)
    result["parameters"] = sum(p.numel() for p in chosen.values())
    return result


def measure_sensitivity(trained: nn.Module, probe: Probe, rhos: list[float], draws: int, seed: int,
                        power_iterations: int = 20, power_tol: float = 1e-3,
                        loss_fn: Callable[[nn.Module, Probe], torch.Tensor] = model_loss) -> dict[str, Any]:
    """ΔL per part and ρ for ``draws`` random directions, and the sharpness, of one trained model.
    ``loss_fn(model, probe)`` is the trial's loss on the probe (its kind's: the model's own, or
    label-word cross-entropy)."""
    probe = probe.to(model_device(trained))
    spaces = subspaces(trained)
    model = effective_model(trained)
    model.eval()
    named = _named(model)
    originals = {k: p.detach().clone() for k, p in named.items()}
    with torch.no_grad():
        base_loss = float(loss_fn(model, probe))
    all_full = all(spaces.get(k) is not None and spaces[k].kind == "full" for k in named)
    rows = _embedding_rows(model, named, spaces, probe)
    gen = torch.Generator().manual_seed(seed)
    deltas: dict[str, dict[str, list[float]]] = {part: {str(r): [] for r in rhos} for part in PARTS}
    try:
        for draw in range(draws):
            if draw % 2 == 0:
                eps = {k: torch.randn((len(rows[k]), *p.shape[1:]) if k in rows else p.shape, generator=gen,
                                      dtype=p.dtype).to(p.device) for k, p in named.items()}
            else:  # antithetic: the previous direction negated, so each pair cancels the gradient term
                eps = {k: -e for k, e in eps.items()}
            inside = eps if all_full else project(eps, spaces)
            parts = {"full": eps}
            if not all_full:
                parts["inside"] = inside
                parts["orthogonal"] = {k: e - inside[k] if k in inside else e for k, e in eps.items()}
            for part, pert in parts.items():
                unit = {}
                for k, e in pert.items():
                    size, ref = float(e.norm()), float(originals[k].norm())
                    if size > 1e-6 * float(eps[k].norm()) and ref > 0:
                        # ‖ε_T‖ = ρ‖θ_T‖; on an embedding's probe rows, the entry scale of a whole-matrix draw
                        scale = math.sqrt(e.numel() / originals[k].numel()) if k in rows else 1.0
                        unit[k] = e * (ref * scale / size)
                if not unit:
                    continue
                with torch.no_grad():
                    for rho in rhos:
                        for k, u in unit.items():
                            if k in rows:
                                named[k][rows[k]] = originals[k][rows[k]] + rho * u
                            else:
                                named[k].copy_(originals[k]).add_(u, alpha=rho)
                        deltas[part][str(rho)].append(float(loss_fn(model, probe)) - base_loss)
                    for k in unit:
                        named[k].copy_(originals[k])
            if all_full:  # FFT trains every tensor: inside is the whole perturbation
                for rho in rhos:
                    deltas["inside"][str(rho)].append(deltas["full"][str(rho)][-1])
    finally:
        with torch.no_grad():
            for k, p in named.items():
                p.copy_(originals[k])
    inside_dims = sum(_subspace_dim(spaces.get(k), p) for k, p in named.items())
    total_dims = sum(p.numel() for p in named.values())
    return {
        "base_loss": base_loss,
        "rho": list(rhos),
        "draws": draws,
        "probe_examples": len(probe),
        "delta_loss": {part: values for part, values in deltas.items() if any(values.values())},
        "subspace_dimension": inside_dims,
        "total_dimension": total_dims,
        "sharpness": sharpness(model, probe, power_iterations, power_tol, seed, loss_fn),
    }


def _embedding_rows(model: nn.Module, named: dict[str, nn.Parameter], spaces: dict[str, Any],
                    probe: Probe) -> dict[str, torch.Tensor]:
    """The input-embedding rows of the probe's tokens. Only those rows can change the probe loss, so
    perturbing just them (at the entry scale of a whole-matrix draw) gives the same ΔL distribution
    for a fraction of the work. Not done where the method's subspace couples rows (LoRA, IA3) or the
    matrix is tied to the output layer."""
    getter = getattr(model, "get_input_embeddings", None)
    weight = getter().weight if getter is not None else None
    output = getattr(model, "get_output_embeddings", lambda: None)()
    if output is not None and output.weight is weight:
        return {}  # tied to the output layer, where every row counts
    for name, param in named.items():
        space = spaces.get(name)
        if param is weight and (space is None or space.kind == "full"):
            return {name: torch.unique(probe.tensors["input_ids"])}
    return {}


def _subspace_dim(space: Any, param: torch.Tensor) -> int:
    if space is None or space.kind == "scale_bias":
        return 0
    if space.kind == "full":
        return param.numel()
    if space.kind == "tangent":
        r1, r2 = space.u.shape[1], space.v.shape[1]
        return r1 * param.shape[1] + r2 * param.shape[0] - r1 * r2
    return param.shape[space.axis]
