"""What a trial saves loads where users load models: peft adapters with PeftModel.from_pretrained,
FFT models with AutoModelFor...from_pretrained, BitFit with pefteval.load_bitfit; each loaded
model predicts exactly what the trial recorded in predictions.json. `pefteval export` writes
standalone models (merged with --merge); save_weights: selected keeps only the selected grid
point's weights; results written before these formats (trainable.safetensors) still load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from .conftest import run_cli, write_sst2_layout
from .test_integration import records, write_config

METHODS = ["fft", "lora", "adalora", "prefix", "ia3", "bitfit"]
TRAINING = {"epochs": 1, "batch_size": 16, "max_seq_length": 32, "lr": 1e-3}


@pytest.fixture(scope="module")
def six(tmp_path_factory, tiny_bert_dir):
    root = tmp_path_factory.mktemp("artefacts")
    data = write_sst2_layout(root / "data", n_train=64, n_dev=32, n_adv=16)
    cfg = write_config(root / "exp.yaml", name="six", model=str(tiny_bert_dir), tasks=["sst2"], seeds=[0],
                       training=TRAINING, save_weights="all", methods=[{"type": m} for m in METHODS])
    out = root / "out"
    proc = run_cli("run", cfg, "--out", out, "--data-dir", data, "--max-train-examples", "32")
    assert proc.returncode == 0, proc.stderr[-3000:]
    recs = {r["config"]["method_label"]: r for r in records(out)}
    return out, data, recs, root


def predict_like_the_trial(model, run_dir: Path, data: Path, split: str = "test") -> list:
    """The model's predictions on the trial's own examples of ``split``, through the trial's kind."""
    from pefteval.config import TrialConfig
    from pefteval.kinds import prepare
    from pefteval.models import load_tokenizer

    trial = TrialConfig.from_json(json.loads((run_dir / "trial.json").read_text()))
    task, kind, source, _config = prepare(trial)
    kind.tokenizer = load_tokenizer(source)
    examples = task.splits(data, trial.data, trial.seed).eval_splits()[split]
    predicted = kind.predict(model.eval(), examples)
    labels = task.label_names
    return [labels[p] if labels and isinstance(p, int) else p for p in predicted]


def recorded(run_dir: Path, split: str = "test") -> list:
    return [row["prediction"] for row in json.loads((run_dir / "predictions.json").read_text())[split]]


def test_each_method_saves_the_ecosystem_format(six):
    out, _data, recs, _ = six
    for method, rec in recs.items():
        run_dir = out / rec["run_dir"]
        assert not (run_dir / "trainable.safetensors").exists()
        if method == "fft":
            names = {p.name for p in (run_dir / "model").iterdir()}
            assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
            config = json.loads((run_dir / "model" / "config.json").read_text())
            assert config["id2label"] == {"0": "negative", "1": "positive"}
        elif method == "bitfit":
            names = {p.name for p in (run_dir / "bitfit").iterdir()}
            assert {"bitfit.safetensors", "bitfit_config.json"} <= names
        else:
            adapter = run_dir / "adapter"
            config = json.loads((adapter / "adapter_config.json").read_text())
            assert (adapter / "adapter_model.safetensors").is_file()
            assert config["peft_type"] == {"lora": "LORA", "adalora": "ADALORA", "prefix": "PREFIX_TUNING",
                                           "ia3": "IA3"}[method]
            assert config["task_type"] == "SEQ_CLS"
            assert config["base_model_name_or_path"] == rec["config"]["model"]
        # the record lists the weight files (provenance): their sizes are what is on disk
        weights = {n: s for n, s in rec["files"].items() if n.split("/")[0] in ("adapter", "model", "bitfit")}
        assert weights and all((run_dir / n).stat().st_size == s for n, s in weights.items())


def test_every_saved_model_loads_with_its_own_library_and_predicts_what_the_trial_did(six, tiny_bert_dir):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from pefteval import load_bitfit

    out, data, recs, _ = six
    for method, rec in recs.items():
        run_dir = out / rec["run_dir"]
        if method == "fft":
            model = AutoModelForSequenceClassification.from_pretrained(run_dir / "model")
            assert model.config.id2label == {0: "negative", 1: "positive"}
            assert AutoTokenizer.from_pretrained(run_dir / "model")("a test")["input_ids"]
        elif method == "bitfit":
            model = load_bitfit(run_dir / "bitfit")
        else:
            base = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=2)
            model = PeftModel.from_pretrained(base, run_dir / "adapter")
        for split in ("test", "advglue"):
            assert predict_like_the_trial(model, run_dir, data, split) == recorded(run_dir, split), (method, split)


def test_rebuilding_a_trial_gives_its_trained_model_with_the_same_trainable_tensors(six):
    """What the analyses and attacks use: the trial's model rebuilt from its saved weights, the same
    tensors trainable as in training (prefix tuning's prompt encoder too), the same predictions."""
    from pefteval.kinds import rebuild

    out, data, recs, _ = six
    for method, rec in recs.items():
        run_dir = out / rec["run_dir"]
        model, _kind, _trial = rebuild(run_dir)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if method != "adalora":  # AdaLoRA comes back at its final ranks, smaller than init_r
            assert trainable == rec["params"]["trainable"], method
        assert predict_like_the_trial(model, run_dir, data) == recorded(run_dir), method


def test_export_writes_standalone_models(six):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    out, data, recs, root = six
    lora, prefix, bitfit = recs["lora"], recs["prefix"], recs["bitfit"]
    merged = root / "export_lora_merged"
    proc = run_cli("export", out, "--trial", lora["key"][:8], "--to", merged, "--merge")
    assert proc.returncode == 0, proc.stderr
    assert "as a transformers-model" in proc.stdout
    model = AutoModelForSequenceClassification.from_pretrained(merged)
    assert not any("lora" in n for n, _ in model.named_parameters())
    assert predict_like_the_trial(model, out / lora["run_dir"], data) == recorded(out / lora["run_dir"])

    adapter = root / "export_lora"
    assert run_cli("export", out, "--trial", lora["key"], "--to", adapter).returncode == 0
    assert (adapter / "adapter_config.json").is_file() and (adapter / "tokenizer.json").is_file()
    base = AutoModelForSequenceClassification.from_pretrained(json.loads(
        (adapter / "adapter_config.json").read_text())["base_model_name_or_path"], num_labels=2)
    loaded = PeftModel.from_pretrained(base, adapter)
    assert predict_like_the_trial(loaded, out / lora["run_dir"], data) == recorded(out / lora["run_dir"])

    whole = root / "export_bitfit"
    assert run_cli("export", out, "--trial", bitfit["key"], "--to", whole, "--merge").returncode == 0
    model = AutoModelForSequenceClassification.from_pretrained(whole)
    assert predict_like_the_trial(model, out / bitfit["run_dir"], data) == recorded(out / bitfit["run_dir"])

    # what cannot be exported is exit 2, naming why and what to do, and writes nothing
    for args, needle in [(["--trial", prefix["key"], "--to", root / "p", "--merge"], "cannot be merged"),
                         (["--trial", "ffffffffffff", "--to", root / "u"], "no complete trial"),
                         (["--trial", lora["key"], "--to", merged], "not an empty directory")]:
        proc = run_cli("export", out, *args)
        assert proc.returncode == 2 and needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (root / "p").exists() and not (root / "u").exists()


def test_results_written_before_these_formats_still_load(six, tmp_path):
    """A run directory of an earlier release holds trainable.safetensors (the trained tensors under
    the trial's parameter names): rebuilding, the analyses and export read it."""
    from safetensors.torch import save_file

    from pefteval.kinds import rebuild

    out, data, recs, _ = six
    old = tmp_path / "old"
    shutil.copytree(out, old)
    for method in ("lora", "fft", "bitfit"):
        run_dir = old / recs[method]["run_dir"]
        model, _kind, _trial = rebuild(run_dir)
        state = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        for entry in ("adapter", "model", "bitfit"):
            shutil.rmtree(run_dir / entry, ignore_errors=True)
        save_file(state, str(run_dir / "trainable.safetensors"))
        again, _kind, _trial = rebuild(run_dir)
        assert predict_like_the_trial(again, run_dir, data) == recorded(run_dir), method
    proc = run_cli("export", old, "--trial", recs["lora"]["key"], "--to", tmp_path / "merged")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "merged" / "model.safetensors").is_file()
    proc = run_cli("analyze", "increments", old)
    assert proc.returncode == 0, proc.stderr


def test_selected_keeps_the_weights_of_the_selected_grid_point_only(tmp_path, tiny_bert_dir):
    data = write_sst2_layout(tmp_path / "data", n_train=64, n_dev=32, n_adv=16)
    cfg = write_config(tmp_path / "exp.yaml", name="grid", model=str(tiny_bert_dir), tasks=["sst2"], seeds=[0, 1],
                       training={**TRAINING, "lr": [1e-4, 3e-3]}, methods=[{"type": "lora"}])
    out = tmp_path / "out"
    proc = run_cli("run", cfg, "--out", out, "--data-dir", data, "--max-train-examples", "32")
    assert proc.returncode == 0, proc.stderr[-3000:]
    recs = records(out)
    by_lr: dict[float, list] = {}
    for rec in recs:
        by_lr.setdefault(rec["config"]["training"]["lr"], []).append(rec)
    score = {lr: sum(r["metrics"]["validation"]["accuracy"] for r in rs) / 2 for lr, rs in by_lr.items()}
    best = max(sorted(score), key=lambda lr: score[lr])  # ties: the smaller learning rate, as the report
    assert "save_weights: selected: sst2 lora: kept the weights of the 2 trial(s)" in proc.stderr
    for rec in recs:
        run_dir = out / rec["run_dir"]
        kept = rec["config"]["training"]["lr"] == best
        assert (run_dir / "adapter").is_dir() == kept
        assert bool(rec.get("weights_removed")) == (not kept)
        assert any(n.startswith("adapter/") for n in rec["files"]) == kept
        # what the analyses read is always kept
        assert (run_dir / "increments.json").is_file() and (run_dir / "probe.safetensors").is_file()
    # a rerun finds every trial complete (removed weights are not damage) and redoes none
    again = run_cli("run", cfg, "--out", out, "--data-dir", data, "--max-train-examples", "32")
    assert again.returncode == 0 and "ran 0 trial(s), skipped 4 already complete" in again.stderr, again.stderr
    removed = next(r for r in recs if r["config"]["training"]["lr"] != best)
    proc = run_cli("export", out, "--trial", removed["key"], "--to", tmp_path / "x")
    assert proc.returncode == 2 and "removed under save_weights: selected" in proc.stderr
    assert run_cli("analyze", "increments", out).returncode == 0


def test_save_weights_none_and_the_old_booleans(tmp_path, tiny_bert_dir):
    from pefteval.config import parse_config

    base = {"name": "x", "model": str(tiny_bert_dir), "tasks": ["sst2"], "methods": [{"type": "lora"}]}
    assert parse_config(base, "t.yaml").save_weights == "selected"
    assert parse_config({**base, "save_weights": True}, "t.yaml").save_weights == "all"
    assert parse_config({**base, "save_weights": False}, "t.yaml").save_weights == "none"
    data = write_sst2_layout(tmp_path / "data", n_train=64, n_dev=32, n_adv=16)
    cfg = write_config(tmp_path / "exp.yaml", **base, seeds=[0], training=TRAINING, save_weights="none")
    out = tmp_path / "out"
    proc = run_cli("run", cfg, "--out", out, "--data-dir", data, "--max-train-examples", "32")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (rec,) = records(out)
    run_dir = out / rec["run_dir"]
    assert not (run_dir / "adapter").exists() and (run_dir / "increments.json").is_file()
    bad = write_config(tmp_path / "bad.yaml", **base, save_weights="some")
    proc = run_cli("run", bad, "--out", tmp_path / "o2", "--dry-run")
    assert proc.returncode == 2 and "save_weights" in proc.stderr and "selected" in proc.stderr


@pytest.mark.integration
def test_a_decoder_loaded_from_gguf_saves_as_a_plain_model(tmp_path):
    """The packaged SmolLM2 loads from a GGUF file, dequantized (what pefteval trains): its FFT
    model/ (and a merged export) is a plain safetensors model, not refused as a "quantized" one,
    and it loads back with the same outputs and without the GGUF reader."""
    import torch
    from transformers import AutoModelForCausalLM

    from pefteval.artifacts import save_trained
    from pefteval.errors import UserError
    from pefteval.models import load_lm_or_span, resolve_model

    try:
        source = resolve_model("smollm2-135m")
    except UserError as err:
        pytest.skip(f"packaged SmolLM2 not installed: {err}")
    model, tokenizer, decoder = load_lm_or_span(source)
    assert decoder and model.hf_quantizer is not None
    entry = save_trained(model, tmp_path, "fft", tokenizer, source)
    assert model.hf_quantizer is not None and model.config.quantization_config is not None  # left as it was
    config = json.loads((entry / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    again = AutoModelForCausalLM.from_pretrained(entry)
    ids = tokenizer("Give the meaning representation of: a game", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(model(ids).logits, again(ids).logits)
