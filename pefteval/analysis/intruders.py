"""Intruder dimensions (Shuttleworth et al. 2024, "LoRA vs Full Fine-tuning: An Illusion of
Equivalence"): singular vectors of a fine-tuned matrix that resemble none of the pretrained one's.

For every matrix of the transformer blocks the method changed, the SVD of W0 and of W0 + ΔW (the
effective weight: LoRA/AdaLoRA merged, IA3's rescaling applied). A top-k singular vector u_j of
W0 + ΔW is an intruder when max_i |cos(u_j, u0_i)| < ε over every singular vector u0_i of W0
(their defaults: k = 10, ε = 0.5). Measured on the left singular vectors (the output space, as the
paper's figures do); the right ones are kept too. Training stores, per matrix, the largest cosine
of each of the top ``saved`` vectors (``analysis/intruders.json``, kilobytes), so that k and ε
can change afterwards without the weights."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pefteval.analysis.weights import increments, kind_of, layer_slot


def max_cosines(fine: torch.Tensor, base: torch.Tensor, k: int) -> tuple[list[float], list[float], list[float]]:
    """(left, right) largest |cosine| of each of the top-k singular vectors of ``fine`` with every
    singular vector of ``base``, and the top-k singular values of ``fine``."""
    u0, _s0, vh0 = torch.linalg.svd(base.double(), full_matrices=False)
    u, s, vh = torch.linalg.svd(fine.double(), full_matrices=False)
    k = min(k, s.numel())
    left = (u[:, :k].T @ u0).abs().max(dim=1).values
    right = (vh[:k] @ vh0.T).abs().max(dim=1).values
    return left.tolist(), right.tolist(), s[:k].tolist()


def count(cosines: list[float], k: int, epsilon: float) -> int:
    return sum(1 for c in cosines[:k] if c < epsilon)


def measure_intruders(model: nn.Module, base_state: dict[str, torch.Tensor], saved: int) -> dict[str, Any]:
    """The largest cosines of the top ``saved`` singular vectors of every block matrix ``model``
    changed against ``base_state`` (the pretrained weights)."""
    deltas = increments(model, base_state)
    matrices: dict[str, dict[str, Any]] = {}
    unchanged = []
    for name, w0 in sorted(base_state.items()):
        slot = layer_slot(name)
        if w0.dim() != 2 or kind_of(name) != "weight" or slot is None or slot.is_norm:
            continue
        delta = deltas.get(name)
        if delta is None or not bool(delta.abs().max() > 0):
            unchanged.append(name)
            continue
        left, right, sv = max_cosines(w0.float() + delta.float(), w0.float(), saved)
        matrices[name] = {"type": slot.module_type, "layer": slot.layer, "shape": list(w0.shape),
                          "max_cos_left": left, "max_cos_right": right, "singular_values": sv}
    return {"saved": saved, "matrices": matrices, "unchanged": unchanged}
