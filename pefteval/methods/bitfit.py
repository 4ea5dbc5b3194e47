from __future__ import annotations

from torch import nn

from pefteval.errors import UserError
from pefteval.methods.common import freeze_all_but


def apply_bitfit(model: nn.Module, head_names: set[str]) -> None:
    """Train only bias vectors (and the task head)."""
    biases = {n for n, _ in model.named_parameters() if n.endswith(".bias")}
    if not biases:
        raise UserError(f"{type(model).__name__} has no bias terms, so BitFit cannot be applied (LLaMA-family "
                        "models have none); use another method, or a model with biases such as BERT or RoBERTa")
    freeze_all_but(model, biases | head_names)
