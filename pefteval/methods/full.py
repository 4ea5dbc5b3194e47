from __future__ import annotations

from torch import nn

from pefteval.methods.common import freeze_all_but, transformer_blocks


def apply_full(model: nn.Module, top_k_layers: int | None, head_names: set[str]) -> list[str]:
    """FFT; with top_k_layers only the last k blocks (and the head) train."""
    if top_k_layers is None:
        for param in model.parameters():
            param.requires_grad = True
        return []
    prefix, depth = transformer_blocks(model)
    notes = []
    k = top_k_layers
    if k > depth:
        notes.append(f"top_k_layers={k} clipped to the model's depth {depth}")
        k = depth
    keep = set(head_names)
    for i in range(depth - k, depth):
        keep |= {n for n, _ in model.named_parameters() if n.startswith(f"{prefix}.{i}.")}
    freeze_all_but(model, keep)
    return notes
