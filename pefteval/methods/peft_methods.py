"""LoRA, AdaLoRA, Prefix, IA3 and any other peft method, built with the peft library.

peft's SEQ_CLS task type marks the classification head (``classifier``/``score``)
as a module to save, so the head trains under every method here too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import peft
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
from torch import nn

from pefteval.config import AdaLoraMethod, IA3Method, LoraMethod, PeftMethod, PrefixMethod, _MethodBase
from pefteval.errors import UserError


def peft_task_type(head: str) -> Any:
    """SEQ_CLS and QUESTION_ANS keep the new head trainable (modules_to_save); CAUSAL_LM trains
    a decoder that answers with its own LM head."""
    return {"classification": peft.TaskType.SEQ_CLS, "span": peft.TaskType.QUESTION_ANS,
            "lm": peft.TaskType.CAUSAL_LM}[head]


# the paper's LoRA targets for decoder generation tasks (LLaMA naming): attention and MLP
# projections plus the input embeddings and the LM head
PAPER_DECODER_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                              "embed_tokens", "lm_head")


def paper_targets_of(model: nn.Module) -> list[str]:
    """The paper's decoder LoRA targets that this model has (by module name suffix)."""
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    found = [t for t in PAPER_DECODER_LORA_TARGETS if t in names]
    if not found:
        raise UserError(f"{type(model).__name__} has none of the LLaMA-style modules the paper's LoRA targets "
                        f"({', '.join(PAPER_DECODER_LORA_TARGETS)}); set target_modules for the lora method")
    return found


def build_peft_config(method: _MethodBase, total_steps: int, task: Any = None) -> Any:
    task = task or peft.TaskType.SEQ_CLS
    if isinstance(method, LoraMethod):
        return peft.LoraConfig(task_type=task, r=method.r, lora_alpha=method.alpha, lora_dropout=method.dropout,
                               target_modules=method.target_modules)
    if isinstance(method, AdaLoraMethod):
        # AdaLoRA prunes from init_r to r over the middle of training: warm up for 10 %
        # of the steps, fix the budget for the last 20 %
        tinit, tfinal = int(0.1 * total_steps), int(0.2 * total_steps)
        return peft.AdaLoraConfig(task_type=task, init_r=method.init_r, target_r=method.r,
                                  lora_alpha=method.alpha, lora_dropout=method.dropout,
                                  target_modules=method.target_modules,
                                  total_step=adalora_total_step(total_steps, tfinal),
                                  tinit=tinit, tfinal=tfinal, deltaT=max(1, total_steps // 50))
    if isinstance(method, PrefixMethod):
        return peft.PrefixTuningConfig(task_type=task, num_virtual_tokens=method.num_virtual_tokens,
                                       prefix_projection=method.prefix_projection)
    if isinstance(method, IA3Method):
        return peft.IA3Config(task_type=task, target_modules=method.target_modules,
                              feedforward_modules=method.feedforward_modules)
    if isinstance(method, PeftMethod):
        return generic_peft_config(method.peft_type, method.kwargs, task)
    raise TypeError(f"not a peft method: {method!r}")


def adalora_total_step(total_steps: int, tfinal: int) -> int:
    """peft's ``total_step`` for a run of ``total_steps`` optimiser steps: the run's own length from
    2 steps on. peft fixes the final budget at step total_step - tfinal from importance scores that
    only the steps before it gather, so that step must be 2 or later: a one-step run is given
    total_step 2 and ends after one budget allocation, part of the way from init_r to r (with
    total_step 1 nothing was gathered, and peft's mask_to_budget raised a KeyError)."""
    return max(total_steps, tfinal + 2)


def generic_peft_config(peft_type: str, kwargs: dict[str, Any], task: Any = None) -> Any:
    key = peft_type.upper()
    if key not in PEFT_TYPE_TO_CONFIG_MAPPING:
        known = ", ".join(sorted(str(getattr(k, "value", k)) for k in PEFT_TYPE_TO_CONFIG_MAPPING))
        raise UserError(f"unknown peft_type '{peft_type}'; peft {peft.__version__} knows: {known}")
    config_cls = PEFT_TYPE_TO_CONFIG_MAPPING[key]
    try:
        return config_cls(task_type=task or peft.TaskType.SEQ_CLS, **kwargs)
    except TypeError as err:
        raise UserError(f"peft_type {key}: bad kwargs ({err}); see peft's {config_cls.__name__}") from None


def apply_peft(model: nn.Module, method: _MethodBase, total_steps: int, head: str = "classification",
               paper_lora_targets: bool = False) -> tuple[nn.Module, Callable[[int], None] | None, list[str]]:
    """The wrapped model, the hook to call after each optimiser step (AdaLoRA's rank allocation) and
    notes for the trial's record."""
    if isinstance(method, LoraMethod) and method.target_modules is None and paper_lora_targets:
        method = method.model_copy(update={"target_modules": paper_targets_of(model)})
    config = build_peft_config(method, total_steps, peft_task_type(head))
    try:
        wrapped = peft.get_peft_model(model, config)
    except ValueError as err:
        raise UserError(f"method {method.label}: peft could not apply it to {type(model).__name__}: {err}") from None
    on_step = None
    notes = []
    if isinstance(method, AdaLoraMethod):
        def on_step(step: int) -> None:
            wrapped.base_model.update_and_allocate(step)

        final = config.total_step - config.tfinal
        if final > total_steps:  # a one-step run (see adalora_total_step)
            notes.append(f"AdaLoRA: the run's {total_steps} optimiser step(s) end before its final rank allocation "
                         f"(step {final}), so the ranks were pruned only part of the way from init_r "
                         f"{method.init_r} to r {method.r}")
    return wrapped, on_step, notes
