from __future__ import annotations

from torch import nn

from pefteval.methods.common import freeze_all_but


def apply_bitfit(model: nn.Module, head_names: set[str]) -> None:
    """Train only bias vectors (and the task head)."""
    biases = {n for n, _ in model.named_parameters() if n.endswith(".bias")}
    if not biases:
        raise RuntimeError(f"{type(model).__name__} has no bias terms, so BitFit cannot be applied")
    freeze_all_but(model, biases | head_names)
