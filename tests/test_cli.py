"""The `pefteval` command line: `list`, and every user error exits 2 with one clear
message and no traceback (nothing is trained in any of these tests)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from .conftest import write_sst2_layout


def config(tmp_path: Path, **overrides) -> Path:
    cfg = {"name": "cli", "model": "minilm-l6", "tasks": ["sst2"], "seeds": [0],
           "training": {"epochs": 1, "max_seq_length": 32}, "methods": [{"type": "fft"}, {"type": "lora"}]}
    cfg.update(overrides)
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def assert_user_error(proc, *needles: str) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    assert proc.stderr.startswith("error: ") or "Usage:" in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr)
    return proc.stderr


@pytest.fixture
def small_data(tmp_path) -> Path:
    return write_sst2_layout(tmp_path / "data", n_train=40, n_dev=10, n_adv=5)


def test_list_prints_aliases_tasks_methods(cli):
    proc = cli("list")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for alias in ("minilm-l6", "smollm2-135m"):
        assert f"  {alias} " in out
    for task in ("sst2", "qqp", "mnli", "mnli-mm", "qnli", "rte"):
        assert f"\n  {task} " in out
    for method in ("fft", "bitfit", "lora", "adalora", "prefix", "ia3", "peft"):
        assert f"\n  {method} " in out
    assert "adversarial: advglue" in out
    assert out.index("Models") < out.index("Tasks:") < out.index("Methods:")


def test_no_args_shows_help(cli):
    proc = cli()
    assert "run" in proc.stdout + proc.stderr and "report" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


def test_missing_config_file(cli, tmp_path):
    assert_user_error(cli("run", tmp_path / "nope.yaml", "--out", tmp_path / "out"),
                      "config file not found", "nope.yaml")
    assert not (tmp_path / "out").exists()


def test_invalid_yaml(cli, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: [unclosed\n")
    assert_user_error(cli("run", path, "--out", tmp_path / "out"), "not valid YAML", "bad.yaml")


def test_unknown_model(cli, tmp_path):
    assert_user_error(cli("run", config(tmp_path, model="no-such-model-xyz"), "--out", tmp_path / "out"),
                      "unknown model 'no-such-model-xyz'", "minilm-l6")
    assert not (tmp_path / "out").exists()


def test_unknown_model_directory(cli, tmp_path):
    assert_user_error(cli("run", config(tmp_path), "--out", tmp_path / "out", "--model", str(tmp_path / "gone")),
                      "no such directory")
    (tmp_path / "empty_model").mkdir()
    assert_user_error(cli("run", config(tmp_path), "--out", tmp_path / "out", "--model",
                          str(tmp_path / "empty_model")), "no config.json")


def test_unknown_task(cli, tmp_path):
    assert_user_error(cli("run", config(tmp_path, tasks=["sst3"]), "--out", tmp_path / "out"),
                      "tasks", "unknown task 'sst3'", "did you mean 'sst2'?")
    # the same check applies to a --tasks override
    assert_user_error(cli("run", config(tmp_path), "--out", tmp_path / "out", "--tasks", "sst2,rtee"),
                      "command-line overrides", "unknown task 'rtee'")


def test_unknown_method_type(cli, tmp_path):
    assert_user_error(cli("run", config(tmp_path, methods=[{"type": "loraa"}]), "--out", tmp_path / "out"),
                      "methods[0].type", "unknown method type 'loraa'")


def test_misspelt_config_field(cli, tmp_path):
    stderr = assert_user_error(
        cli("run", config(tmp_path, methods=[{"type": "fft"}, {"type": "lora", "alhpa": 16}]), "--out", tmp_path / "o"),
        "methods[1].alhpa", "did you mean 'alpha'?")
    assert "exp.yaml" in stderr


def test_missing_data_dir(cli, tmp_path):
    assert_user_error(cli("run", config(tmp_path), "--out", tmp_path / "out", "--data-dir", tmp_path / "no_data"),
                      "data directory not found", "no_data")


def test_offline_without_data_dir(cli, tmp_path, tiny_bert_dir):
    # no --data-dir and no PEFTEVAL_DATA_DIR: the hub is tried, and offline that is a clear user error
    proc = cli("run", config(tmp_path, model=str(tiny_bert_dir)), "--out", tmp_path / "out")
    assert_user_error(proc, "could not load nyu-mll/glue", "--data-dir")
    assert not (tmp_path / "out").exists()


def test_malformed_data_row(cli, tmp_path, tiny_bert_dir):
    rows = "".join(f"sentence {i}\t{i % 2}\n" for i in range(5))
    data = write_sst2_layout(tmp_path / "data", train_text="sentence\tlabel\n" + rows + "broken row without label\n")
    proc = cli("run", config(tmp_path, model=str(tiny_bert_dir)), "--out", tmp_path / "out", "--data-dir", data)
    assert_user_error(proc, str(data / "glue" / "SST-2" / "train.tsv") + ":7:", "expected 2 tab-separated columns")
    assert not (tmp_path / "out").exists()


def test_missing_data_file(cli, tmp_path, tiny_bert_dir, small_data):
    (small_data / "advglue" / "dev.json").unlink()
    proc = cli("run", config(tmp_path, model=str(tiny_bert_dir)), "--out", tmp_path / "out", "--data-dir", small_data)
    assert_user_error(proc, "AdvGLUE dev.json not found", str(small_data / "advglue" / "dev.json"))


def test_unknown_methods_filter(cli, tmp_path, tiny_bert_dir, small_data):
    proc = cli("run", config(tmp_path, model=str(tiny_bert_dir)), "--out", tmp_path / "out",
               "--data-dir", small_data, "--methods", "fft,lorra")
    assert_user_error(proc, "--methods", "lorra", "fft, lora")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("seeds", ["0,x", ",", "1.5"])
def test_bad_seeds(cli, tmp_path, tiny_bert_dir, small_data, seeds):
    proc = cli("run", config(tmp_path, model=str(tiny_bert_dir)), "--out", tmp_path / "out",
               "--data-dir", small_data, "--seeds", seeds)
    assert_user_error(proc, "--seeds")
    assert not (tmp_path / "out").exists()


def test_too_few_training_examples(cli, tmp_path, tiny_bert_dir, small_data):
    proc = cli("run", config(tmp_path, model=str(tiny_bert_dir)), "--out", tmp_path / "out",
               "--data-dir", small_data, "--max-train-examples", "1")
    assert_user_error(proc, "only 1 training example(s)")


def test_usage_error_exits_2(cli, tmp_path):
    proc = cli("run", config(tmp_path))  # --out is required
    assert proc.returncode == 2 and "--out" in proc.stderr and "Traceback" not in proc.stderr
    proc = cli("run", config(tmp_path), "--out", tmp_path / "o", "--max-train-examples", "0")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_report_errors(cli, tmp_path):
    assert_user_error(cli("report", tmp_path), "no results store", "pefteval run")
    assert_user_error(cli("report", tmp_path, "--format", "xml"), "--format 'xml'", "markdown, csv, latex")
    from pefteval.store import ResultStore

    ResultStore(tmp_path / "results.sqlite").close()
    assert_user_error(cli("report", tmp_path), "holds no complete trials")
