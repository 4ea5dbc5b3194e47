"""One entry point, ``apply_method``, turns a method config into a model whose
trainable parameters are exactly that method's (plus the task head, which trains
under every method), and counts them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from pefteval.config import BitFitMethod, FFTMethod, _MethodBase
from pefteval.methods.common import HEAD_MODULE_NAMES, count_parameters, head_parameter_names

__all__ = ["AppliedMethod", "apply_method", "HEAD_MODULE_NAMES", "METHOD_HELP"]

METHOD_HELP = {
    "fft": "full fine-tuning of every weight; top_k_layers: k trains only the last k transformer blocks",
    "bitfit": "bias terms only (BitFit)",
    "lora": "low-rank adapters B·A on target modules (r, alpha, dropout, target_modules), via peft",
    "adalora": "LoRA with SVD-form adapters and adaptive rank budget (r, init_r, alpha), via peft",
    "prefix": "prefix tuning: learned key/value prefixes in every layer (num_virtual_tokens), via peft",
    "ia3": "IA3: learned rescaling vectors on keys, values and feed-forward activations, via peft",
    "peft": "any other peft method: peft_type (e.g. LOHA, VERA, OFT) plus its config kwargs",
}


@dataclass
class AppliedMethod:
    model: nn.Module
    trainable_params: int
    total_params: int  # of the model as trained (adapters included)
    base_params: int  # of the pretrained model with its task head, before the method
    head_params: int
    on_step: Callable[[int], None] | None = None  # called after each optimiser step
    notes: list[str] = field(default_factory=list)


def apply_method(model: nn.Module, method: _MethodBase, total_steps: int, is_decoder: bool,
                 task_kind: str = "classification") -> AppliedMethod:
    """task_kind: "classification" (a new classification head), "qa" (a span head for an
    encoder; a decoder answers generatively with its own LM head, so there is no new head)."""
    base_params = count_parameters(model)
    generative = task_kind in ("qa", "generation") and is_decoder
    head_names = head_parameter_names(model, required=not generative)
    head_params = sum(p.numel() for n, p in model.named_parameters() if n in head_names)
    on_step = None
    notes: list[str] = []
    if isinstance(method, FFTMethod):
        from pefteval.methods.full import apply_full

        notes = apply_full(model, method.top_k_layers, head_names)
    elif isinstance(method, BitFitMethod):
        from pefteval.methods.bitfit import apply_bitfit

        apply_bitfit(model, head_names)
    else:
        from pefteval.methods.peft_methods import apply_peft

        model, on_step = apply_peft(model, method, total_steps, is_decoder, task_kind)
    trainable = count_parameters(model, trainable_only=True)
    if trainable == 0:
        raise RuntimeError(f"method {method.label} left no trainable parameters")
    return AppliedMethod(model, trainable, count_parameters(model), base_params, head_params, on_step, notes)


def trainable_state(model: nn.Module) -> dict[str, Any]:
    """A detached copy of every trainable tensor (what a method changes)."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: nn.Module, state: dict[str, Any]) -> None:
    params = dict(model.named_parameters())
    for name, value in state.items():
        params[name].data.copy_(value)
