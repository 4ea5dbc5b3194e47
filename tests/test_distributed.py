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

from pefteval.artifacts import saved_tensors

from .conftest import DATA_DIR, run_cli, write_sst2_layout

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


_BASELINES: dict[str, tuple[dict, Path]] = {}  # one-process runs, shared by the tests that compare with them


def _run(tmp_path: Path, name: str, model: Path, method: dict, *extra: str, capture: bool = False,
         accumulate: int = 1) -> tuple[dict, Path]:
    if name == "one":  # the one-process baseline of this model, method and settings: run once per session
        key = json.dumps([str(model), method, capture, accumulate], sort_keys=True)
        if key not in _BASELINES:
            _BASELINES[key] = _run(tmp_path, "baseline", model, method, capture=capture, accumulate=accumulate)
        return _BASELINES[key]
    data = tmp_path / "data"
    if not data.exists():
        write_sst2_layout(data, n_train=72, n_dev=24, n_adv=8)
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(yaml.safe_dump({
        "name": "ddp", "model": str(model), "tasks": ["sst2"], "seeds": [0], "methods": [method],
        # 65 training examples after validation: the last batch of 16 has one, so one process gets none
        "training": {"epochs": 2, "batch_size": 16, "max_seq_length": 32, "lr": 2e-3, "precision": "fp32",
                     "gradient_accumulation_steps": accumulate},
        "analyses": {"capture": capture}}))
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
    weights_one = saved_tensors(one_dir)
    weights_two = saved_tensors(two_dir)
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


BAD_LAUNCHES = {
    "unknown type": ("distributed_type: MEGATRON_LM\n", [], "distributed_type MEGATRON_LM is not supported"),
    "FSDP1": ("distributed_type: FSDP\nfsdp_config: {fsdp_version: 1}\n", [], "pefteval runs FSDP2 only"),
    "FSDP on CPU": ("distributed_type: FSDP\nfsdp_config: {fsdp_version: 2}\n", ["--device", "cpu"],
                    "FSDP runs on CUDA devices only"),
    "AdaLoRA under ZeRO": ("distributed_type: DEEPSPEED\ndeepspeed_config: {zero_stage: 2}\n",
                           ["--methods", "adalora"], "AdaLoRA's rank allocation reads every adapter weight's gradient"),
    "fp16 under ZeRO": ("distributed_type: DEEPSPEED\ndeepspeed_config: {zero_stage: 3}\n",
                        ["--set-fp16", "--methods", "lora"], "precision fp16 needs pefteval's gradient scaler"),
    "ZeRO accumulation": ("distributed_type: DEEPSPEED\ndeepspeed_config: {zero_stage: 2, "
                          "gradient_accumulation_steps: 4}\n", [], "sets gradient_accumulation_steps: 4"),
    "ZeRO JSON clipping": ("distributed_type: DEEPSPEED\ndeepspeed_config: {deepspeed_config_file: ds.json}\n",
                           [], "sets gradient_clipping: 0.5"),
    "ZeRO JSON missing": ("distributed_type: DEEPSPEED\ndeepspeed_config: {deepspeed_config_file: nope.json}\n",
                          [], "deepspeed_config_file"),
}


@pytest.mark.parametrize("case", list(BAD_LAUNCHES))
def test_launches_that_cannot_train_as_one_process_are_refused_before_anything(tmp_path, case):
    if "ZeRO" in case:
        pytest.importorskip("deepspeed")
    text, extra, message = BAD_LAUNCHES[case]
    config = tmp_path / "acc.yaml"
    config.write_text(text + "num_processes: 2\n")
    (tmp_path / "ds.json").write_text(json.dumps({"gradient_clipping": 0.5, "zero_optimization": {"stage": 2}}))
    experiment = Path("configs/quickstart.yaml")
    if "--set-fp16" in extra:
        extra = extra[1:]
        experiment = tmp_path / "fp16.yaml"
        settings = yaml.safe_load(Path("configs/quickstart.yaml").read_text())
        settings["training"] = {**settings.get("training", {}), "precision": "fp16"}
        experiment.write_text(yaml.safe_dump(settings))
    proc = run_cli("run", experiment, "--out", tmp_path / "o", "--accelerate-config", config,
                   "--data-dir", DATA_DIR, *extra)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr and "Traceback" not in proc.stderr
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


@pytest.mark.parametrize("stage,case", [("zero2", "fft-bert"), ("zero3", "fft-bert"), ("zero3", "lora-llama")])
def test_deepspeed_on_two_processes_matches_one(tmp_path, no_dropout_bert, tiny_llama_dir, stage, case):
    """DeepSpeed ZeRO-2 (optimizer state and gradients partitioned) and ZeRO-3 (the weights too) on
    two CPU processes over gloo: the same steps as one process, and one record whose saved weights
    are whole (gathered from the shards). LoRA on the decoder also accumulates gradients over two
    micro-batches and captures the analyses' files (from an unsharded copy on the main process)."""
    pytest.importorskip("deepspeed")
    config = Path(__file__).resolve().parents[1] / "configs" / "accelerate" / f"{stage}.yaml"
    model, method = {"fft-bert": (no_dropout_bert, {"type": "fft"}),
                     "lora-llama": (tiny_llama_dir, {"type": "lora", "r": 4, "dropout": 0.0})}[case]
    options = {"capture": True, "accumulate": 2} if case == "lora-llama" else {}
    if case == "lora-llama":  # and built partitioned as it loads (deepspeed.zero.Init), as a 70B model must be
        flagged = tmp_path / "zero3_init.yaml"
        flagged.write_text(config.read_text().replace("zero3_init_flag: false", "zero3_init_flag: true"))
        config = flagged
    one, one_dir = _run(tmp_path, "one", model, method, **options)
    two, two_dir = _run(tmp_path, stage, model, method, "--num-processes", "2", "--accelerate-config", config,
                        **options)
    assert (one["parallelism"], two["processes"], two["parallelism"]) == ("none", 2, f"deepspeed-{stage}")
    for a, b in zip(one["curve"], two["curve"], strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4, abs=1e-6)
    assert two["metrics"] == one["metrics"]
    weights_one = saved_tensors(one_dir)
    weights_two = saved_tensors(two_dir)
    assert {k: v.shape for k, v in weights_two.items()} == {k: v.shape for k, v in weights_one.items()}
    worst = max(float((weights_one[k] - weights_two[k]).abs().max()) for k in weights_one)
    assert worst < 1e-4, worst
    assert set(two["files"]) == set(one["files"])
    if options:
        increments_one = json.loads((one_dir / "increments.json").read_text())["modules"]
        increments_two = json.loads((two_dir / "increments.json").read_text())["modules"]
        assert set(increments_two) == set(increments_one)
        for name, stats in increments_one.items():
            assert increments_two[name]["std"] == pytest.approx(stats["std"], rel=1e-3, abs=1e-6)


SHIPPED = sorted(p for d in ("configs/accelerate", "configs/paper/accelerate")
                 for p in (Path(__file__).resolve().parents[1] / d).glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_accelerate_configs_load_and_launch(path, tmp_path):
    """Every shipped accelerate config is one accelerate's own parser reads (no unknown keys) and
    pefteval launches: one machine gets a free port per trial, several keep the file's port."""
    from accelerate.commands.config.config_args import ClusterConfig

    from pefteval.distributed import check_accelerate_config, launch_command

    cluster = ClusterConfig.from_yaml_file(str(path))
    if cluster.distributed_type.value == "DEEPSPEED":
        pytest.importorskip("deepspeed")
    settings = check_accelerate_config(path)
    command = launch_command(tmp_path / "run", None, 4, path)
    assert command[:3] == [command[0], "-m", "pefteval.distributed"]
    assert command[command.index("--num_processes") + 1] == "4"
    assert command[command.index("--config_file") + 1] == str(path)
    assert ("--main_process_port" in command) == (int(settings.get("num_machines", 1)) == 1)
    assert command[-3:] == ["-m", "pefteval.worker", str(tmp_path / "run")]


def test_generation_under_zero3_matches_one_process(tmp_path, tiny_llama_dir):
    """A generative trial (ViGGO) under ZeRO-3 on two CPU processes: every process generates through
    the partitioned model (transformers keeps them in step), and the main one writes the same
    predictions and metrics as one process."""
    pytest.importorskip("deepspeed")
    from .test_generation_trial import write_generation_layout

    data = write_generation_layout(tmp_path / "data")
    cfg = tmp_path / "gen.yaml"
    cfg.write_text(yaml.safe_dump({
        "name": "gen", "model": str(tiny_llama_dir), "tasks": ["viggo"], "seeds": [0], "methods": [{"type": "fft"}],
        "training": {"epochs": 1, "batch_size": 8, "lr": 1e-3, "max_seq_length": 256, "max_new_tokens": 6,
                     "precision": "fp32"},
        "data": {"max_train_examples": 16, "validation_size": 4, "max_validation_examples": 4,
                 "max_eval_examples": 6},
        "analyses": {"capture": False}}))
    zero3 = Path(__file__).resolve().parents[1] / "configs" / "accelerate" / "zero3.yaml"
    records, predictions = [], []
    for name, extra in (("one", []), ("zero3", ["--num-processes", "2", "--accelerate-config", zero3])):
        proc = run_cli("run", cfg, "--out", tmp_path / name, "--data-dir", data, "--threads", "1", *extra)
        assert proc.returncode == 0, proc.stderr[-4000:]
        # the report says how the trials ran
        assert ("× 2 processes (deepspeed-zero3)" in proc.stdout) == (name == "zero3")
        (record,) = _records(tmp_path / name)
        records.append(record)
        run_dir = next((tmp_path / name / "runs").iterdir())
        predictions.append(json.loads((run_dir / "predictions.json").read_text()))
    assert records[1]["parallelism"] == "deepspeed-zero3"
    assert records[1]["metrics"] == records[0]["metrics"]
    assert predictions[1] == predictions[0]
    assert len(predictions[0]["test"]) == 6
