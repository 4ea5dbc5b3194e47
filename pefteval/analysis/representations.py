"""What fine-tuning did to the model outside its task, on general text: forgetting and
representation similarity.

The general text is a fixed sample of Wikipedia paragraphs (SQuAD v1.1 dev contexts, which no
pefteval task trains on), tokenised by the trial's tokenizer and saved with the trial
(``general_probe.safetensors``, tens of kilobytes), so every method of an experiment is measured on
the same tokens.

- **forgetting** (Biderman et al. 2024, "LoRA Learns Less and Forgets Less"; PEFT's method
  comparison measures it the same way): the mean per-token loss of a decoder's language-modelling
  head on that text, before and after training. An encoder loaded for classification (MiniLM: the
  sentence-transformers package ships no masked-LM head) has no language-modelling loss to compare:
  forgetting does not apply, and ``similarity`` measures how far its representations moved instead.
- **similarity**: linear CKA (Kornblith et al. 2019) per layer between two models' hidden states on
  the text, each paragraph mean-pooled over its tokens. Training saves each layer's centred Gram
  matrix (paragraphs × paragraphs, so its size does not depend on the model's width) for the base
  and the trained model; CKA(base, trained) and, across trials of one seed, CKA(FFT, method) come
  from them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pefteval.device import model_device
from pefteval.probe import Probe
from pefteval.tasks.squad.data import DEV_FILE, hub_split, read_squad_json

BATCH = 8


def general_texts(data_dir: Path | None, n: int) -> list[str]:
    """``n`` Wikipedia paragraphs spread evenly over SQuAD v1.1 dev's contexts (every article's in
    file order, each once)."""
    if data_dir is not None:
        examples = read_squad_json(data_dir / DEV_FILE, "SQuAD dev file (the general text of forgetting/similarity)")
    else:
        examples = hub_split(None, "validation")
    contexts = list(dict.fromkeys(x.context for x in examples))
    step = max(1, len(contexts) // n)
    return contexts[::step][:n]


def make_general_probe(tokenizer: Any, data_dir: Path | None, n: int, max_tokens: int) -> Probe:
    texts = general_texts(data_dir, n)
    enc = tokenizer(texts, truncation=True, max_length=max_tokens, padding="max_length", return_tensors="pt")
    return Probe({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}, loss="text")


def _backbone_output(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, **kw: Any) -> Any:
    return model(input_ids=ids, attention_mask=mask, **kw)


def _last(x: torch.Tensor, length: int) -> torch.Tensor:
    """The positions of the real input: a prompt method prepends virtual tokens to the sequence."""
    return x[:, -length:] if x.shape[1] > length else x


def is_language_model(model: nn.Module) -> bool:
    base = getattr(model, "get_base_model", lambda: model)()
    return type(base).__name__.endswith("ForCausalLM")


@torch.no_grad()
def hidden_grams(model: nn.Module, probe: Probe) -> list[torch.Tensor]:
    """Per layer (embeddings first), the centred Gram matrix of the paragraphs' mean-pooled states."""
    model.eval()
    device = model_device(model)
    pooled: list[list[torch.Tensor]] = []
    ids_all, mask_all = probe.tensors["input_ids"], probe.tensors["attention_mask"]
    for start in range(0, ids_all.shape[0], BATCH):
        ids, mask = ids_all[start:start + BATCH].to(device), mask_all[start:start + BATCH].to(device)
        out = _backbone_output(model, ids, mask, output_hidden_states=True)
        weights = mask.float().unsqueeze(-1)
        for layer, states in enumerate(out.hidden_states):
            states = _last(states, ids.shape[1]).float()
            mean = (states * weights).sum(1) / weights.sum(1).clamp(min=1)
            if len(pooled) <= layer:
                pooled.append([])
            pooled[layer].append(mean.cpu())
    grams = []
    for chunks in pooled:
        x = torch.cat(chunks).double()
        x = x - x.mean(0, keepdim=True)
        grams.append((x @ x.T).float())
    return grams


def linear_cka(k1: torch.Tensor, k2: torch.Tensor) -> float:
    """Linear CKA from two centred Gram matrices: ⟨K1, K2⟩ / (‖K1‖ ‖K2‖)."""
    a, b = k1.double(), k2.double()
    denom = float(a.norm() * b.norm())
    return float((a * b).sum()) / denom if denom > 0 else float("nan")


@torch.no_grad()
def text_losses(model: nn.Module, probe: Probe) -> tuple[list[float], list[int]]:
    """Per paragraph: the mean next-token loss of a causal LM on it, and its number of predicted tokens."""
    model.eval()
    device = model_device(model)
    losses, counts = [], []
    ids_all, mask_all = probe.tensors["input_ids"], probe.tensors["attention_mask"]
    for start in range(0, ids_all.shape[0], BATCH):
        ids, mask = ids_all[start:start + BATCH].to(device), mask_all[start:start + BATCH].to(device)
        logits = _last(_backbone_output(model, ids, mask).logits, ids.shape[1]).float()
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
        keep = mask[:, 1:].float()
        for row, weight in zip(nll, keep):
            n = int(weight.sum())
            losses.append(float((row * weight).sum()) / n if n else float("nan"))
            counts.append(n)
    return losses, counts


def measure_forgetting(trained: nn.Module, base: nn.Module, probe: Probe) -> dict[str, Any]:
    if not is_language_model(trained):
        return {"applies": False, "why": f"{type(getattr(trained, 'get_base_model', lambda: trained)()).__name__} "
                "has no language-modelling head: the loss on general text is not defined for it"}
    base_losses, counts = text_losses(base, probe)
    trained_losses, _ = text_losses(trained, probe)
    return {"applies": True, "texts": len(counts), "tokens": sum(counts), "base_loss": base_losses,
            "trained_loss": trained_losses}


def measure_similarity(trained: nn.Module, base: nn.Module, probe: Probe) -> tuple[dict[str, Any],
                                                                                   dict[str, torch.Tensor]]:
    """CKA(base, trained) per layer, and the Gram matrices that CKA against other trials needs."""
    base_grams, trained_grams = hidden_grams(base, probe), hidden_grams(trained, probe)
    cka = [linear_cka(a, b) for a, b in zip(base_grams, trained_grams)]
    tensors = {**{f"base.{i}": g for i, g in enumerate(base_grams)},
               **{f"trained.{i}": g for i, g in enumerate(trained_grams)}}
    return {"layers": len(cka), "texts": len(probe), "cka_base": cka}, tensors


def finite_mean(values: list[float]) -> float:
    good = [v for v in values if not math.isnan(v)]
    return sum(good) / len(good) if good else float("nan")
