"""One trial on two processes: DDP through accelerate launch on this CPU (gloo), against the same
trial on one process with the same global batch. Without dropout the two compute the same
steps up to the order of float additions in the gradient all-reduce, so the losses, the metrics
and the trained weights must agree (tolerance 1e-4 on losses and weights, metrics equal)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from .conftest import run_cli, write_sst2_layout

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def no_dropout_bert(tmp_path_factory, tiny_bert_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path_factory.mktemp("bert_no_dropout")
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, hidden_dropout_prob=0.0,
                                                               attention_probs_dropout_prob=0.0)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(out)
    return out


def _records(out: Path) -> list[dict]:
    conn = sqlite3.connect(out / "results.sqlite")
    try:
        return [json.loads(r) for (r,) in conn.execute("SELECT record FROM trials ORDER BY rowid")]
    finally:
        conn.close()


def _run(tmp_path: Path, name: str, model: Path, method: dict, *extra: str) -> tuple[dict, Path]:
    data = tmp_path / "data"
    if not data.exists():
        write_sst2_layout(data, n_train=72, n_dev=24, n_adv=8)
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(yaml.safe_dump({
        "name": "ddp", "model": str(model), "tasks": ["sst2"], "seeds": [0], "methods": [method],
        # 65 training examples after validation: the last batch of 16 has one, so one process gets none
        "training": {"epochs": 2, "batch_size": 16, "max_seq_length": 32, "lr": 2e-3, "precision": "fp32"},
        "analyses": {"capture": False}}))
    out = tmp_path / name
    proc = run_cli("run", cfg, "--out", out, "--data-dir", data, "--threads", "1", *extra)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (record,) = _records(out)
    return record, next((out / "runs").iterdir())


@pytest.mark.parametrize("case", ["fft-bert", "lora-llama"])
def test_two_processes_match_one_with_the_same_global_batch(tmp_path, no_dropout_bert, tiny_llama_dir, case):
    model, method = {"fft-bert": (no_dropout_bert, {"type": "fft"}),
                     "lora-llama": (tiny_llama_dir, {"type": "lora", "r": 4, "dropout": 0.0})}[case]
    one, one_dir = _run(tmp_path, "one", model, method)
    two, two_dir = _run(tmp_path, "two", model, method, "--num-processes", "2")
    assert (one["processes"], two["processes"]) == (1, 2)
    assert one["config"] == two["config"]  # the same trial: the same key
    for a, b in zip(one["curve"], two["curve"], strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4, abs=1e-6)
    assert two["metrics"] == one["metrics"]
    assert two["train_examples"] == one["train_examples"] == 65
    weights_one = load_file(one_dir / "trainable.safetensors")
    weights_two = load_file(two_dir / "trainable.safetensors")
    assert set(weights_one) == set(weights_two)
    worst = max(float((weights_one[k] - weights_two[k]).abs().max()) for k in weights_one)
    assert worst < 1e-4, worst
    # only the main process wrote: one record, its files, the other rank's log
    assert (two_dir / "log.rank1.txt").is_file() and (two_dir / "result.json").is_file()
    assert set(two["files"]) == set(one["files"])
    # progress came through the events file
    events = [json.loads(line) for line in (two_dir / "events.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in events if e["event"] == "epoch"] == [1, 2]


def test_the_shipped_ddp_config_launches_the_same_trial(tmp_path, no_dropout_bert):
    one, _ = _run(tmp_path, "one", no_dropout_bert, {"type": "bitfit"})
    two, _ = _run(tmp_path, "two", no_dropout_bert, {"type": "bitfit"}, "--accelerate-config",
                  str(Path(__file__).resolve().parents[1] / "configs/accelerate/ddp.yaml"), "--num-processes", "2")
    assert two["processes"] == 2 and two["metrics"] == one["metrics"]


def test_an_accelerate_config_that_is_not_there(tmp_path, no_dropout_bert):
    proc = run_cli("run", "configs/quickstart.yaml", "--out", tmp_path / "o", "--accelerate-config",
                   tmp_path / "nope.yaml")
    assert proc.returncode == 2
    assert "--accelerate-config" in proc.stderr and "no such file" in proc.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("kind", ["FSDP", "DEEPSPEED"])
def test_sharded_accelerate_configs_are_refused_before_anything(tmp_path, kind):
    config = tmp_path / "acc.yaml"
    config.write_text(f"distributed_type: {kind}\nnum_processes: 2\n")
    proc = run_cli("run", "configs/quickstart.yaml", "--out", tmp_path / "o", "--accelerate-config", config)
    assert proc.returncode == 2
    assert f"distributed_type {kind} is not supported yet" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


def test_a_failing_distributed_trial_is_a_failed_record(tmp_path, no_dropout_bert):
    # a peft method that cannot apply fails on every rank; the main one records it, the sweep goes on
    data = write_sst2_layout(tmp_path / "data", n_train=32, n_dev=16, n_adv=8)
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump({
        "name": "ddp", "model": str(no_dropout_bert), "tasks": ["sst2"], "seeds": [0],
        "methods": [{"type": "peft", "name": "broken", "peft_type": "LOHA", "kwargs": {"no_such_option": 1}}],
        "training": {"epochs": 1, "batch_size": 8, "max_seq_length": 32}}))
    proc = run_cli("run", cfg, "--out", tmp_path / "out", "--data-dir", data, "--num-processes", "2")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "FAILED" in proc.stderr and "no_such_option" in proc.stderr
    (record,) = _records(tmp_path / "out")
    assert record["status"] == "failed"
    run_dir = next((tmp_path / "out" / "runs").iterdir())
    assert not list(run_dir.glob("*.safetensors"))
    assert torch.cuda.is_available() is False  # this machine: gloo on CPU
