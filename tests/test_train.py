"""The training recipe on the tiny BERT: padding, batching, determinism, learning,
divergence detection and best-epoch restore."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest
import torch

from pefteval.config import FFTMethod, LoraMethod, TrainingConfig
from pefteval.errors import TrainingDiverged
from pefteval.kinds.classification import encode, predict
from pefteval.methods import apply_method, trainable_state
from pefteval.metrics import accuracy
from pefteval.tasks import Example
from pefteval.train import (
    Encoded,
    batch_order,
    collate,
    steps_per_epoch,
    train_model,
)

from .conftest import trigger_sentences


def trigger_task(n: int, seed: int) -> list[Example]:
    """label 1 iff the sentence contains the trigger word: learnable from scratch."""
    return [Example(text, None, label) for text, label in trigger_sentences(n, seed)]


def hp(**kw):
    base = dict(lr=5e-3, weight_decay=0.0, batch_size=32, epochs=8, warmup_ratio=0.1, max_grad_norm=1.0,
                precision="bf16", eval_batch_size=64, group_by_length=True)
    base.update(kw)
    return TrainingConfig(**base)


def accuracy_of(model, data, pad_id, batch_size, precision):
    return accuracy(predict(model, data, pad_id, batch_size, precision), data.labels)


def val_acc(val, tokenizer):
    """What train_model scores each epoch with: accuracy on ``val`` (eval batch 64, bf16, as hp())."""
    return lambda m: accuracy_of(m, val, tokenizer.pad_token_id, 64, "bf16")


@pytest.fixture(scope="module")
def tokenizer(tiny_bert_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_bert_dir))


@pytest.fixture
def load_model(tiny_bert_dir):
    from pefteval.models import load_for_classification

    def load():
        return load_for_classification(str(tiny_bert_dir), 2)[0]

    return load


@pytest.fixture(scope="module")
def data(tokenizer):
    return encode(trigger_task(192, 0), tokenizer, 16), encode(trigger_task(96, 1), tokenizer, 16)


def params_of(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


# ---------------------------------------------------------------- encode / collate / batch_order


def test_encode_single_and_pairs(tokenizer):
    enc = encode([Example("a good film", None, 1), Example("bad", None, 0)], tokenizer, 16)
    assert len(enc) == 2 and enc.labels == [1, 0]
    ids = enc.features[0]["input_ids"]
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert len(ids) == 5  # [CLS] a good film [SEP]
    assert set(enc.features[0]) == {"input_ids", "token_type_ids", "attention_mask"}
    pairs = encode([Example("a cat sat", "on the mat today", 0)], tokenizer, 8)
    f = pairs.features[0]
    assert len(f["input_ids"]) == 8  # truncated to max_length
    assert f["token_type_ids"][0] == 0 and f["token_type_ids"][-1] == 1
    assert encode([], tokenizer, 8).labels == []


def test_collate_pads_correctly():
    feats = [
        {"input_ids": [101, 5, 6, 102], "token_type_ids": [0, 0, 0, 0], "attention_mask": [1, 1, 1, 1]},
        {"input_ids": [101, 7, 102], "token_type_ids": [0, 1, 1], "attention_mask": [1, 1, 1]},
        {"input_ids": [101, 102], "token_type_ids": [0, 0], "attention_mask": [1, 1]},
    ]
    batch = collate(feats, pad_id=9)
    assert set(batch) == {"input_ids", "token_type_ids", "attention_mask"}
    for t in batch.values():
        assert t.shape == (3, 4) and t.dtype == torch.long
    assert batch["input_ids"].tolist() == [[101, 5, 6, 102], [101, 7, 102, 9], [101, 102, 9, 9]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]]


def _fake(lengths):
    return Encoded([{"input_ids": [1] * n} for n in lengths], [0] * len(lengths))


@pytest.mark.parametrize("group", [False, True])
@pytest.mark.parametrize("n,bs", [(1, 4), (37, 8), (1000, 7), (64, 64)])
def test_batch_order_covers_each_index_once(group, n, bs):
    rng = random.Random(n)
    data = _fake([rng.randint(1, 50) for _ in range(n)])
    batches = batch_order(data, bs, group, torch.Generator().manual_seed(3))
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(n))
    assert all(1 <= len(b) <= bs for b in batches)
    assert len(batches) == (math.ceil(n / bs) if not group else
                            sum(math.ceil(min(bs * 50, n - s) / bs) for s in range(0, n, bs * 50)))
    again = batch_order(data, bs, group, torch.Generator().manual_seed(3))
    assert again == batches  # the generator fixes the order


def test_batch_order_groups_by_length():
    rng = random.Random(0)
    lengths = [rng.randint(1, 100) for _ in range(400)]
    data = _fake(lengths)
    grouped = batch_order(data, 8, True, torch.Generator().manual_seed(0))
    for b in grouped:
        assert [lengths[i] for i in b] == sorted(lengths[i] for i in b)
    pad = lambda batches: sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)  # noqa: E731
    plain = batch_order(data, 8, False, torch.Generator().manual_seed(0))
    assert pad(grouped) < pad(plain) / 3
    # batch order is shuffled, not sorted by length
    maxima = [max(lengths[i] for i in b) for b in grouped]
    assert maxima != sorted(maxima)


def test_steps_per_epoch():
    assert steps_per_epoch(64, 32) == 2 and steps_per_epoch(65, 32) == 3 and steps_per_epoch(0, 32) == 1


def test_predict_keeps_input_order(load_model, tokenizer):
    model = load_model()
    examples = trigger_task(23, 5)
    enc = encode(examples, tokenizer, 16)
    preds = predict(model, enc, tokenizer.pad_token_id, batch_size=4, precision="fp32")
    assert len(preds) == 23
    one_by_one = []
    with torch.no_grad():
        for f in enc.features:
            batch = {k: torch.tensor([v]) for k, v in f.items()}
            one_by_one.append(int(model(**batch).logits.argmax(-1)))
    assert preds == one_by_one
    acc = accuracy_of(model, enc, tokenizer.pad_token_id, 4, "fp32")
    assert acc == sum(p == y for p, y in zip(preds, enc.labels)) / 23


# ---------------------------------------------------------------- train_model


def test_training_is_deterministic(load_model, tokenizer, data):
    train, val = data
    runs = []
    for _ in range(2):
        model = load_model()
        result = train_model(model, train, val_acc(val, tokenizer), hp(epochs=2), seed=7, pad_id=tokenizer.pad_token_id)
        runs.append((result, params_of(model)))
    (r1, p1), (r2, p2) = runs
    assert r1.curve == r2.curve and r1.best_epoch == r2.best_epoch
    assert all(torch.equal(p1[n], p2[n]) for n in p1)
    assert r1.examples_seen == 2 * 192
    other = train_model(load_model(), train, val_acc(val, tokenizer), hp(epochs=2), seed=8,
                        pad_id=tokenizer.pad_token_id)
    assert [c["train_loss"] for c in other.curve] != [c["train_loss"] for c in r1.curve]


def test_fft_learns_a_learnable_task(load_model, tokenizer, data):
    train, val = data
    model = load_model()
    before = accuracy_of(model, val, tokenizer.pad_token_id, 64, "bf16")
    events = []
    result = train_model(model, train, val_acc(val, tokenizer), hp(), seed=0, pad_id=tokenizer.pad_token_id,
                         progress=events.append)
    assert len(result.curve) == 8
    assert [c["epoch"] for c in result.curve] == list(range(1, 9))
    assert result.curve[-1]["train_loss"] < 0.5 * result.curve[0]["train_loss"]
    assert result.best_validation >= 0.9 > before + 0.2
    assert result.best_validation == max(c["validation_accuracy"] for c in result.curve)
    # best_epoch is the first epoch reaching the best accuracy
    accs = [c["validation_accuracy"] for c in result.curve]
    assert result.best_epoch == accs.index(max(accs)) + 1
    assert accuracy_of(model, val, tokenizer.pad_token_id, 64, "bf16") == result.best_validation
    # progress: one step event per optimiser step, one epoch event per epoch
    steps = [e for e in events if e["event"] == "step"]
    assert len(steps) == 8 * 6 and steps[-1]["step"] == steps[-1]["total_steps"] == 48
    assert [e["epoch"] for e in events if e["event"] == "epoch"] == list(range(1, 9))
    assert result.train_seconds > 0 and result.examples_seen == 8 * 192


def test_lora_learns_and_leaves_base_weights_untouched(load_model, tokenizer, data):
    train, val = data
    applied = apply_method(load_model(), LoraMethod(type="lora", r=8), 100)
    frozen_before = {n: p.detach().clone() for n, p in applied.model.named_parameters() if not p.requires_grad}
    result = train_model(applied.model, train, val_acc(val, tokenizer), hp(lr=2e-2, epochs=3), seed=0,
                         pad_id=tokenizer.pad_token_id)
    assert result.curve[-1]["train_loss"] < result.curve[0]["train_loss"]
    after = dict(applied.model.named_parameters())
    assert all(torch.equal(after[n], v) for n, v in frozen_before.items())


def test_nan_loss_raises_training_diverged(load_model, tokenizer, data):
    train, val = data
    model = load_model()
    with torch.no_grad():
        model.classifier.weight.fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match=r"loss became nan at epoch 1, step 1"):
        train_model(model, train, val_acc(val, tokenizer), hp(epochs=1), seed=0, pad_id=tokenizer.pad_token_id)


def test_huge_learning_rate_diverges(load_model, tokenizer, data):
    train, val = data
    with pytest.raises(TrainingDiverged, match="lower the learning rate"):
        train_model(load_model(), train, val_acc(val, tokenizer), hp(lr=1e30, epochs=2, warmup_ratio=0.0), seed=0,
                    pad_id=tokenizer.pad_token_id)


def test_best_epoch_weights_are_restored(load_model, tokenizer, data):
    train, val = data
    model = load_model()
    epochs = 8
    snapshots = {}

    def progress(event):
        if event["event"] == "step" and event["epoch"] == epochs:
            # wreck the last epoch: the head now predicts class 0 for everything
            with torch.no_grad():
                model.classifier.bias.copy_(torch.tensor([100.0, -100.0]))
        if event["event"] == "epoch":
            snapshots[event["epoch"]] = trainable_state(model)

    result = train_model(model, train, val_acc(val, tokenizer), hp(epochs=epochs), seed=0,
                         pad_id=tokenizer.pad_token_id, progress=progress)
    share_of_class0 = Counter(val.labels)[0] / len(val)
    assert result.curve[-1]["validation_accuracy"] == share_of_class0
    assert result.best_epoch < epochs
    best = result.curve[result.best_epoch - 1]["validation_accuracy"]
    assert best >= 0.9 and best == result.best_validation
    assert accuracy_of(model, val, tokenizer.pad_token_id, 64, "bf16") == best
    restored = dict(model.named_parameters())
    assert all(torch.equal(restored[n], v) for n, v in snapshots[result.best_epoch].items())
    assert not model.training


def test_last_epoch_best_keeps_final_weights(load_model, tokenizer, data):
    train, val = data
    model = load_model()
    finals = {}

    def progress(event):
        if event["event"] == "epoch":
            finals[event["epoch"]] = trainable_state(model)

    result = train_model(model, train, val_acc(val, tokenizer), hp(epochs=1), seed=0, pad_id=tokenizer.pad_token_id,
                         progress=progress)
    assert result.best_epoch == 1
    now = dict(model.named_parameters())
    assert all(torch.equal(now[n], v) for n, v in finals[1].items())


def test_trainable_only_changes_under_top_k(load_model, tokenizer, data):
    train, val = data
    applied = apply_method(load_model(), FFTMethod(type="fft", top_k_layers=1), 10)
    before = params_of(applied.model)
    train_model(applied.model, train, val_acc(val, tokenizer), hp(epochs=1, lr=1e-2, warmup_ratio=0.0), seed=0,
                pad_id=tokenizer.pad_token_id)
    after = params_of(applied.model)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and all(n.startswith(("bert.encoder.layer.1.", "classifier.")) for n in changed)
    assert "classifier.weight" in changed and "bert.encoder.layer.1.output.dense.weight" in changed
