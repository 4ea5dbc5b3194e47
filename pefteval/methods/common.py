from __future__ import annotations

import torch
from torch import nn

# new task heads: AutoModelForSequenceClassification (BERT/RoBERTa: classifier, decoders: score) and
# AutoModelForQuestionAnswering (qa_outputs); a causal LM answering generatively keeps its pretrained lm_head
HEAD_MODULE_NAMES = ("classifier", "score", "qa_outputs")


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(numel(p) for p in model.parameters() if p.requires_grad or not trainable_only)


def numel(param: torch.Tensor) -> int:
    """A parameter's size, also when DeepSpeed ZeRO-3 built it partitioned (its data then empty)."""
    return int(getattr(param, "ds_numel", param.numel()))


def head_parameter_names(model: nn.Module, required: bool = True) -> set[str]:
    names = {n for n, _ in model.named_parameters() if n.split(".")[0] in HEAD_MODULE_NAMES}
    if not names and required:
        raise RuntimeError(f"no task head ({' or '.join(HEAD_MODULE_NAMES)}) found on {type(model).__name__}")
    return names


def freeze_all_but(model: nn.Module, keep: set[str]) -> None:
    for name, param in model.named_parameters():
        param.requires_grad = name in keep


def transformer_blocks(model: nn.Module) -> tuple[str, int]:
    """Name prefix of the stack of transformer blocks and how many there are."""
    best: tuple[str, int] = ("", 0)
    for name, module in model.named_modules():
        is_stack = isinstance(module, nn.ModuleList) and name.endswith(("layer", "layers", "h", "blocks"))
        if is_stack and len(module) > best[1]:
            best = (name, len(module))
    if not best[1]:
        raise RuntimeError(f"cannot find the transformer blocks of {type(model).__name__}")
    return best
