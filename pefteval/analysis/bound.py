"""Theorem 2, measured: the capacity bound Σ_k [Π_{j>k} L_j‖W0,j‖]·L_k‖Φ_k‖·‖x‖ next to the
actual change ‖f(x) − f0(x)‖ of the final hidden states, on the probe's real inputs.

How a transformer is mapped onto the theorem's chain of layers. Each block contributes the four
matrices on its linear path, in order: the value projection (attention input), the attention
output projection, the FFN input (up) projection and the FFN output (down) projection; L_j is 1
except after the FFN input, where it is the activation's Lipschitz constant (GELU 1.129, SiLU
1.100). The input x is the embedding output (hidden_states[0]) of the pretrained model, and
norms over a sequence are Frobenius norms over its real tokens (a token-wise linear map W
satisfies ‖X Wᵀ‖_F ≤ ‖W‖₂‖X‖_F). An increment is charged at its chain position:

- query/key increments at the attention-input position, as if they were on the linear path;
- gate-projection increments at the FFN-input position;
- bias increments as affine terms, √T·‖Δb‖ instead of ‖Φ‖·‖x‖ (T real tokens);
- layer-norm gain increments as √(T·d)·max|Δγ| and their bias as √T·‖Δβ‖, after the norm's position;
- an embedding increment by its measured effect ‖X' − X‖_F, amplified by every layer.

Where a transformer breaks the theorem's assumptions: residual connections (a block computes
x + g(x), not g(x)), layer normalisation (not globally Lipschitz, rescales every token), and
attention (softmax mixing across tokens, through query/key products that are not linear in x; its
2-norm over tokens can exceed 1). The evaluated expression is therefore the theorem's formula
applied to these quantities, not a proven bound for this network; whether it held on every input
is what this analysis reports. Prefix and prompt tuning change no weight: they add attention
inputs, so the formula gives 0 and cannot bound them. The task head is outside the hidden states."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from pefteval.analysis.weights import CHAIN_TYPES, kind_of, layer_slot
from pefteval.device import model_device
from pefteval.probe import Probe

MAPPING_NOTES = [
    "Chain: per block the value projection, attention output, FFN input (up) and FFN output matrices, in order; "
    "L_j = 1 except after the FFN input (the activation's Lipschitz constant). x is the pretrained model's "
    "embedding output; sequence norms are Frobenius norms over real tokens.",
    "Charged as if on the chain: query/key increments at the attention input, gate increments at the FFN input. "
    "Bias increments enter as √T·‖Δb‖, layer-norm gains as √(T·d)·max|Δγ|, an embedding change by its measured "
    "‖X' − X‖_F amplified by every layer.",
    "Assumptions a transformer breaks: residual connections (a block computes x + g(x)), layer normalisation (not "
    "globally Lipschitz; it rescales every token) and attention (softmax mixing across tokens through query/key "
    "products that are not linear in x). The expression is the theorem's formula on these quantities, not a proven "
    "bound for this network; whether it held on every input is measured.",
    "Prefix and prompt tuning change no weight (they add attention inputs), so the formula gives 0 and cannot bound "
    "them. The task head is outside the final hidden states.",
]
LIPSCHITZ = {"gelu": 1.129, "gelu_new": 1.129, "gelu_pytorch_tanh": 1.129, "gelu_fast": 1.129, "silu": 1.100,
             "swish": 1.100, "relu": 1.0, "quick_gelu": 1.129}


def activation_lipschitz(config: Any) -> tuple[str, float]:
    name = str(getattr(config, "hidden_act", None) or getattr(config, "hidden_activation", None)
               or getattr(config, "activation_function", "gelu"))
    return name, LIPSCHITZ.get(name, 1.129)


def chain_norms(base: nn.Module) -> dict[tuple[int, int], float]:
    """Spectral norm of the pretrained matrix at every (layer, chain position)."""
    out: dict[tuple[int, int], float] = {}
    with torch.no_grad():
        for name, param in base.named_parameters():
            slot = layer_slot(name)
            if slot is None or slot.is_norm or not name.endswith(".weight") or param.ndim != 2:
                continue
            if slot.module_type in CHAIN_TYPES:
                out[(slot.layer, slot.position)] = float(torch.linalg.matrix_norm(param.detach().float(), ord=2))
    return out


def _hidden(model: nn.Module, probe: Probe) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        out = model(**probe.inputs(), output_hidden_states=True)
    states = out.hidden_states
    return states[0].float(), states[-1].float()


def measure_bound(trained: nn.Module, base: nn.Module, probe: Probe,
                  increment_stats: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The bound and the measured change on every probe input. ``increment_stats`` is the
    per-tensor statistics training saved (``increments.json``'s modules): the norms the bound needs."""
    trained.eval()
    base.eval()
    probe = probe.to(model_device(trained))
    norms = chain_norms(base)
    if not norms:
        raise ValueError(f"no transformer-block matrices recognised in {type(base).__name__}")
    depth = max(layer for layer, _ in norms) + 1
    act_name, act_l = activation_lipschitz(base.config)
    lip = {(layer, pos): act_l if pos == 2 else 1.0 for layer in range(depth) for pos in range(4)}
    order = [(layer, pos) for layer in range(depth) for pos in range(4)]
    # amplification after chain index g: Π_{j>g} L_j ‖W0,j‖ (index -1: before the first layer)
    amp = [1.0] * (len(order) + 1)
    for g in range(len(order) - 1, -1, -1):
        amp[g] = amp[g + 1] * lip[order[g]] * norms.get(order[g], 1.0)
    after = {g: amp[g + 1] for g in range(-1, len(order))}  # after[g] = Π_{j>g}
    coef_x = coef_t = coef_td = 0.0
    per_layer: dict[int, dict[str, Any]] = {}
    outside: list[str] = []
    embedding_changed = False
    for name, stats in increment_stats.items():
        kind = kind_of(name)
        slot = layer_slot(name)
        if kind == "embedding" or (kind == "norm" and "embeddings" in name):
            embedding_changed = True
            continue
        if slot is None:
            if kind == "norm" and "layers" not in name and "layer." not in name:  # final norm, after everything
                coef_td += stats["max_abs"] if name.endswith(".weight") else 0.0
                coef_t += stats["fro"] if name.endswith(".bias") else 0.0
            else:
                outside.append(name)
            continue
        g = 4 * slot.layer + slot.position
        row = per_layer.setdefault(slot.layer, {"layer": slot.layer, "phi": {}, "term": 0.0})
        if slot.is_norm:
            if name.endswith(".weight"):
                coef_td += after[g] * stats["max_abs"]
            else:
                coef_t += after[g] * stats["fro"]
            continue
        factor = after[g] * lip[order[g]]
        if name.endswith(".bias") or len(stats["shape"]) == 1:
            coef_t += factor * stats["fro"]
        else:
            phi = stats["spectral"]
            row["phi"][slot.module_type] = phi
            row["term"] += factor * phi
            coef_x += factor * phi
    x0, h0 = _hidden(base, probe)
    x1, h1 = _hidden(trained, probe)
    mask = probe.tensors.get("attention_mask", torch.ones(x0.shape[:2], dtype=torch.long, device=x0.device)).bool()
    width = x0.shape[-1]
    inputs = []
    for i in range(x0.shape[0]):
        m = mask[i, : x0.shape[1]]
        tokens = int(m.sum())
        x_norm = float(x0[i][m].norm())
        measured = float((h1[i][m] - h0[i][m]).norm())
        bound = (coef_x * x_norm + coef_t * math.sqrt(tokens) + coef_td * math.sqrt(tokens * width)
                 + (after[-1] * float((x1[i][m] - x0[i][m]).norm()) if embedding_changed else 0.0))
        inputs.append({"tokens": tokens, "x_norm": x_norm, "measured": measured, "bound": bound})
    return {
        "activation": {"name": act_name, "lipschitz": act_l},
        "w0": [{"layer": layer, **{t: norms.get((layer, pos)) for pos, t in enumerate(CHAIN_TYPES)}}
               for layer in range(depth)],
        "layers": [per_layer[k] for k in sorted(per_layer)],
        "coefficients": {"x": coef_x, "tokens": coef_t, "tokens_width": coef_td, "embedding": after[-1]},
        "embedding_changed": embedding_changed,
        "weight_increments": bool(coef_x or coef_t or coef_td or embedding_changed),
        "outside": sorted(outside),
        "inputs": inputs,
    }
