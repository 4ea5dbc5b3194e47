"""One entry point, ``apply_method``, turns a method config into a model whose
trainable parameters are exactly that method's (plus the task head, which trains
under every method), and counts them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from pefteval.config import BitFitMethod, FFTMethod, _MethodBase
from pefteval.methods.bitfit import apply_bitfit
from pefteval.methods.common import HEAD_MODULE_NAMES, count_parameters, head_parameter_names, numel
from pefteval.methods.full import apply_full
from pefteval.methods.peft_methods import apply_peft

__all__ = ["AppliedMethod", "apply_method", "HEAD_MODULE_NAMES", "HEADS"]

HEADS = ("classification", "span", "lm")



@dataclass
class AppliedMethod:
    model: nn.Module
    trainable_params: int
    total_params: int  # of the model as trained (adapters included)
    base_params: int  # of the pretrained model with its task head, before the method
    head_params: int
    on_step: Callable[[int], None] | None = None  # called after each optimiser step
    notes: list[str] = field(default_factory=list)


def apply_method(model: nn.Module, method: _MethodBase, total_steps: int, head: str = "classification",
                 paper_lora_targets: bool = False) -> AppliedMethod:
    """``head``: what trains besides the method: a new ``classification`` or ``span`` head, or
    none (``lm``: a decoder answering with its own LM head). ``paper_lora_targets``: LoRA without
    target_modules takes the paper's decoder targets instead of peft's defaults."""
    if head not in HEADS:
        raise ValueError(f"head must be one of {', '.join(HEADS)}, got {head!r}")
    base_params = count_parameters(model)
    head_names = head_parameter_names(model, required=head != "lm")
    head_params = sum(numel(p) for n, p in model.named_parameters() if n in head_names)
    on_step = None
    notes: list[str] = []
    if isinstance(method, FFTMethod):
        notes = apply_full(model, method.top_k_layers, head_names)
    elif isinstance(method, BitFitMethod):
        apply_bitfit(model, head_names)
    else:
        model, on_step, notes = apply_peft(model, method, total_steps, head, paper_lora_targets)
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
