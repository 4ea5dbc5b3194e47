"""What a method did to the weights: the effective increment of every changed tensor, the
subspace the method can move the weights in, and the map from parameter names to layers.

Names are the pretrained model's own parameter names (``bert.encoder.layer.5.attention.self.
query.weight``), whatever wrapper a method put around the model. Increments are computed from
the method's own factors where it has them (LoRA/AdaLoRA: B·A·scale via peft's
``get_delta_weight``; IA3: W0 ⊙ (l − 1)), so they carry no rounding noise from W0, and as a
difference to the pretrained tensor otherwise (FFT, top-k FFT, BitFit, task heads). Prefix and
prompt tuning change no weight; their increment is the learned prompt embedding itself."""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass
from typing import Any

import torch
from peft import PeftModel
from peft.tuners.ia3 import IA3Layer
from peft.tuners.lora import LoraLayer
from torch import nn

from pefteval.methods.common import HEAD_MODULE_NAMES

PROMPT_EMBEDDINGS = "prompt_encoder.default.embedding.weight"

# (pattern on the parameter name, module type, position in the block's linear chain)
# positions: 0 attention input (q/k/v; the linear path is v), 1 attention output, 2 FFN input, 3 FFN output
_LAYER_PATTERNS: list[tuple[str, str, int]] = [
    # BERT / RoBERTa / MiniLM
    (r"\.layer\.(\d+)\.attention\.self\.query\.", "query", 0),
    (r"\.layer\.(\d+)\.attention\.self\.key\.", "key", 0),
    (r"\.layer\.(\d+)\.attention\.self\.value\.", "value", 0),
    (r"\.layer\.(\d+)\.attention\.output\.dense\.", "attn_out", 1),
    (r"\.layer\.(\d+)\.intermediate\.dense\.", "ffn_in", 2),
    (r"\.layer\.(\d+)\.output\.dense\.", "ffn_out", 3),
    # LLaMA / Mistral / Qwen
    (r"layers\.(\d+)\.self_attn\.q_proj\.", "query", 0),
    (r"layers\.(\d+)\.self_attn\.k_proj\.", "key", 0),
    (r"layers\.(\d+)\.self_attn\.v_proj\.", "value", 0),
    (r"layers\.(\d+)\.self_attn\.o_proj\.", "attn_out", 1),
    (r"layers\.(\d+)\.mlp\.gate_proj\.", "ffn_gate", 2),
    (r"layers\.(\d+)\.mlp\.up_proj\.", "ffn_in", 2),
    (r"layers\.(\d+)\.mlp\.down_proj\.", "ffn_out", 3),
    # OPT
    (r"layers\.(\d+)\.self_attn\.out_proj\.", "attn_out", 1),
    (r"layers\.(\d+)\.fc1\.", "ffn_in", 2),
    (r"layers\.(\d+)\.fc2\.", "ffn_out", 3),
]
# normalisation layers: (pattern, type, the chain position the norm comes after; -1 = before the block)
_NORM_PATTERNS: list[tuple[str, str, int]] = [
    (r"\.layer\.(\d+)\.attention\.output\.LayerNorm\.", "attn_norm", 1),
    (r"\.layer\.(\d+)\.output\.LayerNorm\.", "ffn_norm", 3),
    (r"layers\.(\d+)\.input_layernorm\.", "attn_norm", -1),
    (r"layers\.(\d+)\.post_attention_layernorm\.", "ffn_norm", 1),
    (r"layers\.(\d+)\.self_attn_layer_norm\.", "attn_norm", -1),
    (r"layers\.(\d+)\.final_layer_norm\.", "ffn_norm", 1),
]
CHAIN_TYPES = ("value", "attn_out", "ffn_in", "ffn_out")  # the matrices on a block's linear path, in order
QUERY_NAMES = ("query", "q_proj")


@dataclass(frozen=True)
class LayerSlot:
    layer: int
    module_type: str
    position: int  # chain position (weights) or the position a norm comes after
    is_norm: bool = False


def layer_slot(name: str) -> LayerSlot | None:
    """Where a parameter sits in the transformer stack, or None outside the blocks."""
    for pattern, kind, pos in _LAYER_PATTERNS:
        m = re.search(pattern, name)
        if m:
            return LayerSlot(int(m.group(1)), kind, pos)
    for pattern, kind, pos in _NORM_PATTERNS:
        m = re.search(pattern, name)
        if m:
            return LayerSlot(int(m.group(1)), kind, pos, is_norm=True)
    return None


def module_of(name: str) -> str:
    """Parameter name to module name: drop the trailing ``.weight`` / ``.bias``."""
    return name.rsplit(".", 1)[0] if name.endswith((".weight", ".bias")) else name


def canonical(name: str) -> str | None:
    """A parameter's name in the pretrained model, from its name inside a peft wrapper; None for
    peft's frozen copy of a module it trains (``original_module``), which the forward pass skips."""
    if ".original_module." in name:
        return None
    for prefix in ("base_model.model.", "base_model."):
        if name.startswith(prefix):
            name = name[len(prefix):]
            break
    return name.replace(".modules_to_save.default", "").replace(".base_layer", "")


def default_module(names: list[str]) -> str:
    """The paper's Figure 1 module: the query projection of the last transformer block."""
    best: tuple[int, str] | None = None
    for name in names:
        slot = layer_slot(name)
        if slot and slot.module_type == "query" and (best is None or slot.layer > best[0]):
            best = (slot.layer, module_of(name))
    if best is None:
        raise ValueError("no query projection found among the model's parameters")
    return best[1]


def _adapter_layers(model: nn.Module) -> list[tuple[str, str, nn.Module]]:
    """(canonical module name, kind, module) for every peft LoRA/AdaLoRA and IA3 layer."""
    found = []
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and module.active_adapters:
            found.append((canonical(name) or name, "lora", module))
        elif isinstance(module, IA3Layer) and module.active_adapters:
            found.append((canonical(name) or name, "ia3", module))
    return found


def _is_adapter_param(name: str) -> bool:
    return any(tag in name for tag in ("lora_", "ia3_l", "ranknum"))


def _ia3_factors(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    adapter = module.active_adapters[0]
    scale = module.ia3_l[adapter].detach().float()  # (1, in) feed-forward, (out, 1) otherwise
    base = module.get_base_layer()
    bias = base.bias.detach().float() if getattr(base, "bias", None) is not None else None
    return base.weight.detach().float(), scale, bias


def increments(model: nn.Module, base_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Effective increment of every tensor the method changed, by pretrained name (fp32).

    ``base_state`` holds the model's tensors before the method was applied (the pretrained
    weights and the freshly initialised task head)."""
    out: dict[str, torch.Tensor] = {}
    unknown = False  # trainable tensors of an adapter type not handled below (LoHa, VeRA, OFT, ...)
    with torch.no_grad():
        for module_name, kind, module in _adapter_layers(model):
            if kind == "lora":
                delta = sum(module.get_delta_weight(a).float() for a in module.active_adapters)
                out[f"{module_name}.weight"] = delta.detach().clone()
            else:
                weight, scale, bias = _ia3_factors(module)
                out[f"{module_name}.weight"] = weight * (scale - 1.0)
                if bias is not None and scale.shape[0] != 1:  # output scaling rescales the bias too
                    out[f"{module_name}.bias"] = bias * (scale.flatten() - 1.0)
        for name, param in model.named_parameters():
            if not param.requires_grad or _is_adapter_param(name):
                continue
            key = canonical(name)
            if key is None:
                continue
            value = param.detach().float()
            if "prompt_encoder" in name:
                out[key] = value.clone()  # a prompt adds inputs; its increment is itself
            elif key in base_state:
                out[key] = value - base_state[key].float()
            else:
                unknown = True
        if unknown:
            out.update(_merged_differences(model, base_state, skip=set(out)))
    return out


def effective_model(model: nn.Module) -> nn.Module:
    """A model that computes what ``model`` computes with the method's weights merged in (a copy
    for LoRA, AdaLoRA, IA3 and other mergeable peft adapters); prompt methods and plain models are
    returned as they are."""
    if isinstance(model, PeftModel) and not model.active_peft_config.is_prompt_learning:
        return copy.deepcopy(model).merge_and_unload()
    return model


def _merged_differences(model: nn.Module, base_state: dict[str, torch.Tensor],
                        skip: set[str]) -> dict[str, torch.Tensor]:
    """Increments of adapters without a closed form here: merge a copy, diff every changed tensor."""
    merged = effective_model(model)
    if merged is model:  # nothing to merge (prompt methods, plain models)
        return {}
    out = {}
    for name, param in merged.named_parameters():
        if name in base_state and name not in skip and not torch.equal(param.detach(), base_state[name]):
            out[name] = param.detach().float() - base_state[name].float()
    return out


def tensor_stats(delta: torch.Tensor, singular_values: bool = True) -> dict[str, Any]:
    """Shape statistics of one increment: std, excess kurtosis, the share of entries below 1e-4
    of the largest magnitude, Frobenius and spectral norm (the L2 norm for a vector) and, for a
    matrix, its singular values."""
    x = delta.detach().double().flatten()
    n = x.numel()
    centred = x - x.mean()
    m2 = float((centred ** 2).mean())
    m4 = float((centred ** 4).mean())
    amax = float(x.abs().max()) if n else 0.0
    stats: dict[str, Any] = {
        "shape": list(delta.shape),
        "numel": n,
        "std": math.sqrt(m2),
        "kurtosis": m4 / m2 ** 2 - 3.0 if m2 > 0 else float("nan"),
        "small_share": float((x.abs() < 1e-4 * amax).double().mean()) if amax > 0 else 1.0,
        "max_abs": amax,
        "fro": float(x.norm()),
    }
    if delta.ndim == 2 and min(delta.shape) > 1:
        sv = torch.linalg.svdvals(delta.detach().float())
        stats["spectral"] = float(sv[0])
        if singular_values:
            stats["singular_values"] = [float(s) for s in sv]
    else:
        stats["spectral"] = stats["fro"]
    return stats


def kind_of(name: str) -> str:
    if "prompt_encoder" in name:
        return "prompt"
    slot = layer_slot(name)
    if slot is not None and slot.is_norm or re.search(r"(LayerNorm|layernorm|_norm|\.norm)\.", name):
        return "norm"
    if "embed" in name:
        return "embedding"
    if name.split(".")[0] in (*HEAD_MODULE_NAMES, "pooler") or ".pooler." in name:
        return "head"
    return "bias" if name.endswith(".bias") else "weight"


# ----------------------------------------------------------------- trainable subspace (Theorem 4)

@dataclass
class Subspace:
    """How a method can move one tensor of the effective model: ``full`` (every direction),
    ``tangent`` (LoRA: the tangent space of rank-r matrices at B·A, {U X + Y Vᵀ}), ``scale``
    (IA3: rescaling of each row or column), or absent (frozen)."""

    kind: str
    u: torch.Tensor | None = None
    v: torch.Tensor | None = None
    axis: int = 0  # scale: 0 rows (output scaling), 1 columns (input scaling)
    ref: torch.Tensor | None = None  # scale: the effective weight whose rows/columns are rescaled
    bias_ref: torch.Tensor | None = None  # scale along rows also rescales the bias


def _orth(m: torch.Tensor) -> torch.Tensor:
    q, _ = torch.linalg.qr(m.detach().float())
    return q


def subspaces(model: nn.Module) -> dict[str, Subspace]:
    """The trainable subspace per tensor of the effective model (pretrained names)."""
    out: dict[str, Subspace] = {}
    with torch.no_grad():
        for module_name, kind, module in _adapter_layers(model):
            adapter = module.active_adapters[0]
            if kind == "lora":
                if adapter in getattr(module, "lora_embedding_A", {}):
                    a, b = module.lora_embedding_A[adapter], module.lora_embedding_B[adapter]  # (r, n), (d, r)
                    out[f"{module_name}.weight"] = Subspace("tangent", u=_orth(a.T), v=_orth(b))
                else:
                    a, b = module.lora_A[adapter], module.lora_B[adapter]
                    a = a.weight if isinstance(a, nn.Module) else a  # AdaLoRA keeps bare parameters
                    b = b.weight if isinstance(b, nn.Module) else b
                    out[f"{module_name}.weight"] = Subspace("tangent", u=_orth(b), v=_orth(a.T))
            else:
                weight, scale, bias = _ia3_factors(module)
                rows = scale.shape[0] != 1
                eff = weight * scale
                eff_bias = bias * scale.flatten() if bias is not None and rows else None
                out[f"{module_name}.weight"] = Subspace("scale", axis=0 if rows else 1, ref=eff, bias_ref=eff_bias)
                if eff_bias is not None:
                    out[f"{module_name}.bias"] = Subspace("scale_bias")  # projected jointly with its weight
        for name, param in model.named_parameters():
            key = canonical(name)
            if key is not None and param.requires_grad and not _is_adapter_param(name):
                out[key] = Subspace("full")
    return out


def project(perturbation: dict[str, torch.Tensor], spaces: dict[str, Subspace]) -> dict[str, torch.Tensor]:
    """The part of a perturbation inside the trainable subspace (orthogonal projection per tensor)."""
    inside: dict[str, torch.Tensor] = {}
    for name, eps in perturbation.items():
        space = spaces.get(name)
        if space is None or space.kind == "scale_bias":
            continue
        if space.kind == "full":
            inside[name] = eps.clone()
        elif space.kind == "tangent":
            u, v = space.u, space.v
            ue = u @ (u.T @ eps)
            inside[name] = ue + (eps @ v) @ v.T - (ue @ v) @ v.T
        elif space.kind == "scale":
            ref = space.ref
            bias_name = name[: -len("weight")] + "bias"
            eps_bias = perturbation.get(bias_name) if space.bias_ref is not None else None
            if space.axis == 0:
                num = (eps * ref).sum(dim=1)
                den = (ref * ref).sum(dim=1)
                if eps_bias is not None:
                    num = num + eps_bias * space.bias_ref
                    den = den + space.bias_ref ** 2
                coef = torch.where(den > 0, num / den.clamp_min(1e-30), torch.zeros_like(num))
                inside[name] = coef[:, None] * ref
                if eps_bias is not None:
                    inside[bias_name] = coef * space.bias_ref
            else:
                den = (ref * ref).sum(dim=0)
                coef = torch.where(den > 0, (eps * ref).sum(dim=0) / den.clamp_min(1e-30), torch.zeros_like(den))
                inside[name] = ref * coef[None, :]
    return inside
