from __future__ import annotations

from torch import nn

# task heads created by AutoModelForSequenceClassification (BERT/RoBERTa: classifier, decoders: score)
HEAD_MODULE_NAMES = ("classifier", "score")


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def head_parameter_names(model: nn.Module) -> set[str]:
    names = {n for n, _ in model.named_parameters() if n.split(".")[0] in HEAD_MODULE_NAMES}
    if not names:
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
