"""Devices and number formats on this CPU-only machine: device resolution and its errors, the
bf16/fp16/fp32 training paths (fp16 with a gradient scaler), the weights' dtype (never a
checkpoint's declared one), gradient accumulation as the same update as the whole batch, and
which of these settings are part of a trial's identity."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from pefteval.config import LoraMethod, TrainingConfig, TrialConfig, parse_config
from pefteval.device import Placement, autocast, available_devices, peak_memory, resolve_device, to_model_device
from pefteval.errors import UserError
from pefteval.kinds.classification import SequenceClassification, encode
from pefteval.methods import apply_method
from pefteval.models import resolve_model
from pefteval.plan import plan_trials
from pefteval.tasks import Example, get_task
from pefteval.train import Encoded, micro_batches, train_model

from .conftest import run_cli, trigger_sentences, write_sst2_layout

# ---------------------------------------------------------------- device resolution


def test_auto_is_cpu_without_cuda_and_cpu_is_cpu():
    assert not torch.cuda.is_available()  # this machine; on a CUDA machine auto picks cuda
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert available_devices() == ["cpu"]


@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:3"])
def test_a_cuda_device_that_is_not_here(name):
    with pytest.raises(UserError, match=rf"device '{name}' is not here: this machine has no CUDA device; "
                                        r"available: cpu"):
        resolve_device(name)


def test_mps_off_apple_is_not_here():
    with pytest.raises(UserError, match="device 'mps' is not here; available: cpu"):
        resolve_device("mps")


@pytest.mark.parametrize("name", ["gpu", "tpu", "cuda:x", "cuda0"])
def test_unknown_device_names_are_config_errors(name):
    from pefteval.errors import ConfigError

    with pytest.raises(ConfigError, match=r"training.device: device must be auto, cpu, cuda, cuda:N or mps"):
        parse_config({"name": "d", "model": "minilm-l6", "tasks": ["sst2"], "methods": [{"type": "fft"}],
                      "training": {"device": name}})


def test_cli_device_that_is_not_here_exits_2_before_anything(tmp_path, tiny_bert_dir):
    data = write_sst2_layout(tmp_path / "data", n_train=32, n_dev=16, n_adv=8)
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(json.dumps({"name": "d", "model": str(tiny_bert_dir), "tasks": ["sst2"], "seeds": [0],
                               "methods": [{"type": "lora"}], "training": {"epochs": 1}}))
    proc = run_cli("run", cfg, "--out", tmp_path / "out", "--data-dir", data, "--device", "cuda:1")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip() == ("error: device 'cuda:1' is not here: this machine has no CUDA device; "
                                   "available: cpu")
    assert not (tmp_path / "out").exists()
    # a method's own training.device is overridden by --device too
    cfg.write_text(json.dumps({"name": "d", "model": str(tiny_bert_dir), "tasks": ["sst2"], "seeds": [0],
                               "methods": [{"type": "lora", "training": {"device": "cuda"}}],
                               "training": {"epochs": 1}}))
    dry = run_cli("run", cfg, "--dry-run", "--device", "cpu")
    assert dry.returncode == 0, dry.stderr[-2000:]


def test_batches_follow_the_model_and_cpu_has_no_device_peaks():
    model = torch.nn.Linear(2, 2)
    batch = {"input_ids": torch.ones(2, 3, dtype=torch.long), "note": "kept"}
    assert to_model_device(batch, model) is batch  # on the CPU nothing is copied
    assert peak_memory(torch.device("cpu")) == {}


# ---------------------------------------------------------------- precision and the weights' dtype


def _trigger(n: int, seed: int) -> list[Example]:
    return [Example(text, None, label) for text, label in trigger_sentences(n, seed)]


def _kind(**training) -> SequenceClassification:
    hp = TrainingConfig(**{"epochs": 1, "batch_size": 8, "max_seq_length": 32, "lr": 5e-3, **training})
    return SequenceClassification(get_task("sst2"), hp, 0)


@pytest.mark.parametrize("precision", ["bf16", "fp16", "fp32"])
def test_every_precision_trains_the_tiny_bert(tiny_bert_dir, precision):
    kind = _kind(precision=precision, epochs=3)
    model = kind.load_model(resolve_model(str(tiny_bert_dir)), None)
    train = kind.encode_train(_trigger(64, 0))
    place = Placement(torch.device("cpu"), precision, "fp32")
    assert place.grad_scaler().is_enabled() == (precision == "fp16")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = train_model(model, train, lambda m: 0.0, kind.hp, 0, kind.pad_id)
    losses = [c["train_loss"] for c in result.curve]
    assert all(map(lambda x: x == x and x < 10, losses)), losses  # finite
    assert losses[-1] < losses[0]
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert all(p.dtype == torch.float32 for p in model.parameters())  # fp32 master weights


def test_autocast_is_a_no_op_in_fp32():
    with autocast("fp32", "cpu"):
        assert not torch.is_autocast_enabled("cpu")
    with autocast("bf16", "cpu"):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
    with autocast("fp16", "cpu"):
        assert torch.get_autocast_dtype("cpu") == torch.float16


@pytest.fixture(scope="module")
def bf16_declared_dir(tmp_path_factory, tiny_bert_dir):
    """The tiny BERT saved in bf16: its config.json declares dtype bfloat16, as most hub LLMs do."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path_factory.mktemp("bf16_declared")
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir)
    model.to(torch.bfloat16).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(out)
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    return out


def test_a_declared_bf16_checkpoint_loads_in_fp32_unless_asked(bf16_declared_dir):
    from transformers import AutoModelForSequenceClassification

    # transformers alone would load the declared dtype
    assert AutoModelForSequenceClassification.from_pretrained(bf16_declared_dir).dtype == torch.bfloat16
    source = resolve_model(str(bf16_declared_dir))
    assert _kind().load_model(source, None).dtype == torch.float32
    model = _kind(model_dtype="bf16").load_model(source, None)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_pure_bf16_weights_train_lora(bf16_declared_dir):
    kind = _kind(model_dtype="bf16", precision="fp32", epochs=2)
    model = kind.load_model(resolve_model(str(bf16_declared_dir)), None)
    applied = apply_method(model, LoraMethod(type="lora", r=4), 8, "classification")
    train = kind.encode_train(_trigger(32, 0))
    result = train_model(applied.model, train, lambda m: 0.0, kind.hp, 0, kind.pad_id)
    assert all(c["train_loss"] == c["train_loss"] for c in result.curve)
    named = dict(applied.model.named_parameters())
    assert {p.dtype for p in named.values() if not p.requires_grad} == {torch.bfloat16}  # the base
    # peft keeps the adapters themselves in fp32 (its autocast_adapter_dtype), as for QLoRA
    assert {p.dtype for n, p in named.items() if "lora_" in n} == {torch.float32}
    assert Placement.of(kind.hp).describe()["model_dtype"] == "bfloat16"


def test_records_say_where_and_how_a_trial_ran(tmp_path, tiny_bert_dir):
    data = write_sst2_layout(tmp_path / "data", n_train=32, n_dev=16, n_adv=8)
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(json.dumps({
        "name": "d", "model": str(tiny_bert_dir), "tasks": ["sst2"], "seeds": [0],
        "training": {"epochs": 1, "batch_size": 8, "max_seq_length": 32, "lr": 1e-3},
        "methods": [{"type": "fft", "training": {"precision": "fp16", "gradient_accumulation_steps": 2}},
                    {"type": "lora", "training": {"model_dtype": "bf16", "precision": "fp32",
                                                  "gradient_checkpointing": True}}]}))
    proc = run_cli("run", cfg, "--out", tmp_path / "out", "--data-dir", data, "--device", "cpu", "--threads", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    from pefteval.store import ResultStore

    with ResultStore(tmp_path / "out" / "results.sqlite", read_only=True) as store:
        records = {r["config"]["method_label"]: r for r in store.records()}
    fft, lora = records["fft"], records["lora"]
    assert (fft["device"], fft["device_type"], fft["threads"]) == ("cpu (x86_64, 1 threads)", "cpu", 1)
    assert (fft["model_dtype"], fft["autocast_dtype"]) == ("float32", "float16")
    assert (lora["model_dtype"], lora["autocast_dtype"]) == ("bfloat16", None)
    assert "peak_device_allocated_mb" not in fft  # a CPU trial: its peak RSS is the measure
    trial = json.loads(next((tmp_path / "out" / "runs").glob("sst2__lora__*/trial.json")).read_text())
    assert trial["training"]["device"] == "cpu" and trial["threads"] == 1


# ---------------------------------------------------------------- gradient accumulation


def _no_dropout_bert(tiny_bert_dir):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, hidden_dropout_prob=0.0,
                                                              attention_probs_dropout_prob=0.0)


@pytest.mark.parametrize("parts", [2, 4, 8])
def test_gradient_accumulation_is_the_same_update_as_the_whole_batch(tiny_bert_dir, parts):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    train = encode(_trigger(16, 3), tokenizer, 32)
    base = _no_dropout_bert(tiny_bert_dir)
    trained = {}
    for steps in (1, parts):
        model = copy.deepcopy(base)
        hp = TrainingConfig(epochs=2, batch_size=8, lr=1e-3, warmup_ratio=0.0, precision="fp32",
                            group_by_length=False, gradient_accumulation_steps=steps, max_grad_norm=0.5)
        train_model(model, train, lambda m: 0.0, hp, 0, tokenizer.pad_token_id)
        trained[steps] = {n: p.detach() for n, p in model.named_parameters()}
    worst = max(float((trained[1][n] - trained[parts][n]).abs().max()) for n in trained[1])
    assert worst < 1e-5, worst  # 4 optimiser steps, clipping included


def test_micro_batch_weights_follow_the_loss_items(tiny_llama_dir):
    # token labels: each micro-batch's mean loss counts by its target tokens (after the causal shift)
    features = [{"input_ids": [5] * n, "attention_mask": [1] * n, "labels": [-100] * 2 + [7] * (n - 2)}
                for n in (4, 10, 6, 12)]
    data = Encoded(features, [])
    parts = micro_batches(data, [0, 1, 2, 3], [0, 1, 2, 3], 0, 2, True)
    # micro-batch 0 holds examples 0 and 2 (2 + 4 target tokens), 1 holds 1 and 3 (8 + 10)
    assert [round(w, 6) for _, w in parts] == [round(6 / 24, 6), round(18 / 24, 6)]
    whole = micro_batches(data, [0, 1, 2, 3], [0, 1, 2, 3], 0, 1, True)
    assert len(whole) == 1 and whole[0][1] == 1.0


def test_gradient_accumulation_on_a_decoder_lm_loss(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    lengths = [5, 9, 7, 12, 6, 10, 8, 11]
    features = [{"input_ids": [(3 * i + j) % 50 + 10 for j in range(n)], "attention_mask": [1] * n,
                 "labels": [-100] * 3 + [(3 * i + j) % 50 + 10 for j in range(3, n)]}
                for i, n in enumerate(lengths)]
    train = Encoded(features, [])
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, attention_dropout=0.0)
    trained = {}
    for steps in (1, 4):
        model = copy.deepcopy(base)
        hp = TrainingConfig(epochs=1, batch_size=8, lr=1e-3, warmup_ratio=0.0, precision="fp32",
                            group_by_length=False, gradient_accumulation_steps=steps)
        train_model(model, train, lambda m: 0.0, hp, 0, 0)
        trained[steps] = {n: p.detach() for n, p in model.named_parameters()}
    worst = max(float((trained[1][n] - trained[4][n]).abs().max()) for n in trained[1])
    assert worst < 1e-5, worst


def test_accumulation_cannot_exceed_the_batch():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="cannot exceed batch_size"):
        TrainingConfig(batch_size=[4, 16], gradient_accumulation_steps=8)


# ---------------------------------------------------------------- what the trial key holds


def _keys(**training) -> dict[str, str]:
    exp = parse_config({"name": "k", "model": "minilm-l6", "tasks": ["sst2"], "seeds": [0],
                        "methods": [{"type": "lora"}], "training": training})
    return {t.method: t.key for t in plan_trials(exp, "local")}


def test_device_is_not_part_of_the_key_and_new_fields_count_only_when_set():
    plain = _keys()
    assert _keys(device="cpu") == plain == _keys(device="cuda:1")
    assert _keys(model_dtype="fp32", gradient_accumulation_steps=1, gradient_checkpointing=False,
                 attn_implementation="sdpa") == plain
    for changed in ({"model_dtype": "bf16"}, {"gradient_accumulation_steps": 2}, {"gradient_checkpointing": True},
                    {"attn_implementation": "eager"}, {"precision": "fp16"}):
        assert _keys(**changed) != plain, changed


def test_trial_json_carries_the_runtime_settings_back():
    exp = parse_config({"name": "k", "model": "minilm-l6", "tasks": ["sst2"], "seeds": [3],
                        "methods": [{"type": "lora"}], "training": {"device": "cpu", "model_dtype": "bf16"}})
    trial = plan_trials(exp, "local")[0].resolved.model_copy(update={"threads": 2})
    back = TrialConfig.from_json(json.loads(json.dumps({**trial.to_json(), "key": "k"})))
    assert back == trial
    assert back.training.device == "cpu" and back.threads == 2
    assert "device" not in trial.identity()["training"]
