"""apply_method on the tiny BERT: exact trainable-parameter counts, computed by hand
from the tiny config (hidden H=32, 2 layers, intermediate I=64, vocab V=30522)."""

from __future__ import annotations

import pytest
import torch

from pefteval.config import (
    AdaLoraMethod,
    BitFitMethod,
    FFTMethod,
    IA3Method,
    LoraMethod,
    PeftMethod,
    PrefixMethod,
)
from pefteval.errors import UserError
from pefteval.methods import apply_method

from .conftest import TINY

H, L, FF, P, T = TINY["hidden"], TINY["layers"], TINY["intermediate"], TINY["max_positions"], TINY["type_vocab"]
V = 30522  # the MiniLM (bert-base-uncased) vocabulary
N_LABELS = 2

EMBEDDINGS = V * H + P * H + T * H + 2 * H  # word, position, token type, LayerNorm
# q, k, v, attention output (weight+bias each), attention LayerNorm, intermediate, output, output LayerNorm
BLOCK = 4 * (H * H + H) + 2 * H + (H * FF + FF) + (FF * H + H) + 2 * H
POOLER = H * H + H
HEAD = H * N_LABELS + N_LABELS
TOTAL = EMBEDDINGS + L * BLOCK + POOLER + HEAD
# bias vectors outside the head: embeddings LayerNorm; per block q,k,v,attn-out, attn LN, intermediate,
# output, output LN; pooler
BIASES = H + L * (4 * H + H + FF + H + H) + H


@pytest.fixture
def tiny(tiny_bert_dir):
    from pefteval.models import load_for_classification

    def load():
        model, tokenizer, is_decoder = load_for_classification(str(tiny_bert_dir), N_LABELS)
        assert is_decoder is False
        return model, tokenizer

    return load


def _apply(tiny, method):
    model, tokenizer = tiny()
    applied = apply_method(model, method, total_steps=100)
    return applied, tokenizer


def _trainable(model):
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _head_trainable(model) -> int:
    return sum(p.numel() for n, p in _trainable(model).items() if "classifier" in n)


def _forward_ok(model, tokenizer):
    batch = tokenizer(["a good film", "a bad movie indeed"], padding=True, return_tensors="pt")
    out = model(**batch, labels=torch.tensor([1, 0]))
    assert out.logits.shape == (2, N_LABELS)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    grads = [p.grad for p in _trainable(model).values()]
    assert all(g is not None for g in grads[-2:])  # the head receives gradients


def test_tiny_model_total_matches_hand_count(tiny):
    model, _ = tiny()
    assert sum(p.numel() for p in model.parameters()) == TOTAL == 999_138


def test_fft_trains_everything(tiny):
    applied, _ = _apply(tiny, FFTMethod(type="fft"))
    assert applied.trainable_params == TOTAL
    assert applied.total_params == applied.base_params == TOTAL
    assert applied.head_params == HEAD == 66
    assert applied.notes == []


def test_fft_top1_trains_last_block_and_head(tiny):
    applied, _ = _apply(tiny, FFTMethod(type="fft", top_k_layers=1))
    assert applied.trainable_params == BLOCK + HEAD == 8_610
    names = _trainable(applied.model)
    assert any(n.startswith("bert.encoder.layer.1.") for n in names)
    assert not any(n.startswith("bert.encoder.layer.0.") for n in names)
    assert not any("embeddings" in n or "pooler" in n for n in names)
    assert {"classifier.weight", "classifier.bias"} <= set(names)
    assert applied.total_params == TOTAL


def test_fft_top_k_larger_than_depth_is_clipped(tiny):
    applied, _ = _apply(tiny, FFTMethod(type="fft", top_k_layers=5))
    assert applied.trainable_params == L * BLOCK + HEAD == 17_154
    assert len(applied.notes) == 1
    assert "clipped" in applied.notes[0] and "5" in applied.notes[0] and str(L) in applied.notes[0]


def test_bitfit_trains_biases_and_head(tiny):
    applied, tokenizer = _apply(tiny, BitFitMethod(type="bitfit"))
    assert applied.trainable_params == BIASES + HEAD == 706
    names = _trainable(applied.model)
    assert "classifier.weight" in names
    assert all(n.endswith(".bias") or n.startswith("classifier.") for n in names)
    _forward_ok(applied.model, tokenizer)


def test_lora_counts_and_only_the_head_copy_trains(tiny):
    r = 8
    applied, tokenizer = _apply(tiny, LoraMethod(type="lora", r=r, target_modules=["query", "value"]))
    adapters = L * 2 * (r * H + H * r)
    assert applied.trainable_params == adapters + HEAD == 2_114
    # peft keeps the original head frozen next to a trainable copy (modules_to_save)
    assert applied.total_params == TOTAL + adapters + HEAD
    assert applied.base_params == TOTAL and applied.head_params == HEAD
    named = dict(applied.model.named_parameters())
    head_copies = [n for n in named if "classifier" in n and "modules_to_save" in n]
    originals = [n for n in named if "classifier" in n and "original_module" in n]
    assert len(head_copies) == 2 and all(named[n].requires_grad for n in head_copies)
    assert originals and not any(named[n].requires_grad for n in originals)
    lora_names = [n for n in _trainable(applied.model) if "lora_" in n]
    assert len(lora_names) == L * 2 * 2
    assert all(".query." in n or ".value." in n for n in lora_names)
    _forward_ok(applied.model, tokenizer)


def test_lora_default_targets_match_explicit(tiny):
    applied, _ = _apply(tiny, LoraMethod(type="lora", r=4))
    assert applied.trainable_params == L * 2 * (4 * H + H * 4) + HEAD


def test_adalora_counts(tiny):
    applied, tokenizer = _apply(tiny, AdaLoraMethod(type="adalora", r=4, init_r=12))
    per_module = 12 * H + H * 12 + 12  # A, B and the singular values E at the initial rank
    assert applied.trainable_params == L * 2 * per_module + HEAD == 3_186
    assert applied.on_step is not None
    _forward_ok(applied.model, tokenizer)


def test_ia3_counts(tiny):
    applied, tokenizer = _apply(tiny, IA3Method(type="ia3"))
    # peft's BERT defaults: key, value (a vector over outputs) and "output.dense" as feed-forward
    # (a vector over inputs); "output.dense" matches attention.output.dense (in H) and output.dense (in FF)
    per_block = H + H + H + FF
    assert applied.trainable_params == L * per_block + HEAD == 386
    _forward_ok(applied.model, tokenizer)


def test_ia3_explicit_targets(tiny):
    applied, _ = _apply(tiny, IA3Method(type="ia3", target_modules=["key", "value", "intermediate.dense"],
                                        feedforward_modules=["intermediate.dense"]))
    assert applied.trainable_params == L * (H + H + H) + HEAD  # intermediate.dense has H inputs


@pytest.mark.parametrize("tokens", [20, 5])
def test_prefix_counts(tiny, tokens):
    applied, tokenizer = _apply(tiny, PrefixMethod(type="prefix", num_virtual_tokens=tokens))
    # one key and one value vector of width H per layer per virtual token
    assert applied.trainable_params == tokens * L * 2 * H + HEAD
    _forward_ok(applied.model, tokenizer)


@pytest.mark.parametrize("method", [
    FFTMethod(type="fft"), FFTMethod(type="fft", top_k_layers=1), BitFitMethod(type="bitfit"),
    LoraMethod(type="lora"), AdaLoraMethod(type="adalora"), PrefixMethod(type="prefix"), IA3Method(type="ia3"),
    PeftMethod(type="peft", peft_type="LOHA", kwargs={"r": 4}),
], ids=lambda m: m.type + (f"-top{m.top_k_layers}" if getattr(m, "top_k_layers", None) else ""))
def test_head_trains_under_every_method(tiny, method):
    applied, _ = _apply(tiny, method)
    assert _head_trainable(applied.model) == HEAD
    assert applied.head_params == HEAD


def test_generic_peft_loha(tiny):
    applied, tokenizer = _apply(tiny, PeftMethod(type="peft", peft_type="loha", kwargs={"r": 4, "alpha": 8}))
    # LoHa: two Hadamard factors, each (H x r) and (r x H), on query and value
    assert applied.trainable_params == L * 2 * 2 * (H * 4 + 4 * H) + HEAD
    assert any("hada_w1_a" in n for n in _trainable(applied.model))
    _forward_ok(applied.model, tokenizer)


def test_unknown_peft_type_is_user_error(tiny):
    with pytest.raises(UserError, match="unknown peft_type 'NOPE'") as info:
        _apply(tiny, PeftMethod(type="peft", peft_type="NOPE"))
    assert "LORA" in str(info.value)  # lists the known types


def test_bad_peft_kwargs_is_user_error(tiny):
    with pytest.raises(UserError, match="bad kwargs"):
        _apply(tiny, PeftMethod(type="peft", peft_type="LOHA", kwargs={"no_such_option": 1}))


def test_unmatched_target_modules_is_user_error(tiny):
    with pytest.raises(UserError, match="peft could not apply"):
        _apply(tiny, LoraMethod(type="lora", target_modules=["no_such_module"]))


# ---------------------------------------------------------------- model loading


def test_resolve_model_kinds(tiny_bert_dir, tmp_path, minilm_path):
    from pefteval.models import check_model, resolve_model

    alias = resolve_model("minilm-l6")
    assert alias.kind == "alias" and alias.path == minilm_path and alias.gguf_file is None
    local = resolve_model(str(tiny_bert_dir))
    assert local.kind == "local" and local.path == str(tiny_bert_dir)
    assert resolve_model("roberta-base").kind == "hub"
    with pytest.raises(UserError, match="no such directory"):
        resolve_model(str(tmp_path / "missing"))
    with pytest.raises(UserError, match="no config.json"):
        resolve_model(str(tmp_path))
    with pytest.raises(UserError, match="unknown model 'no-such-model-xyz'"):
        check_model("no-such-model-xyz")  # offline: the hub cannot provide it


def test_load_minilm_alias_for_classification(minilm_path):
    from pefteval.models import load_for_classification

    model, tokenizer, is_decoder = load_for_classification("minilm-l6", 3, ["entailment", "neutral", "contradiction"])
    assert is_decoder is False
    assert model.config.num_labels == 3 and model.classifier.out_features == 3
    assert model.config.id2label == {0: "entailment", 1: "neutral", 2: "contradiction"}
    assert model.config.hidden_size == 384 and model.config.num_hidden_layers == 6
    assert tokenizer.pad_token_id == model.config.pad_token_id == 0


def test_head_is_fresh_for_a_task_with_another_label_count(tiny_bert_dir):
    # the tiny checkpoint already holds a 2-way sequence-classification head; a 3-way task (MNLI) must get a
    # fresh 3-way head ("Model with a fresh sequence-classification head"), not crash on the size mismatch
    from pefteval.models import load_for_classification

    model, _, _ = load_for_classification(str(tiny_bert_dir), 3)
    assert model.classifier.out_features == 3
