"""The Python API: pefteval.run does what `pefteval run` does and returns a summary,
pefteval.load_results gives one DataFrame row per trial, pefteval.report renders the report."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from .conftest import REPO_ROOT, cli_env, run_cli, write_sst2_layout
from .test_integration import records

TRAINING = {"epochs": 2, "batch_size": 16, "max_seq_length": 32, "lr": 1e-3}


@pytest.fixture(scope="module")
def api_run(tmp_path_factory, tiny_bert_dir):
    import pefteval

    root = tmp_path_factory.mktemp("api")
    data = write_sst2_layout(root / "data", n_train=64, n_dev=32, n_adv=16)
    experiment = {"name": "api", "model": str(tiny_bert_dir), "tasks": ["sst2"], "seeds": [0, 1],
                  "training": TRAINING, "methods": [{"type": "fft"}, {"type": "lora", "r": 4}],
                  "analyses": {"capture": False}}
    stream = io.StringIO()
    summary = pefteval.run(experiment, root / "out", data_dir=data, max_train_examples=32, methods="fft,lora",
                           seeds=[0, 1], stream=stream)
    return summary, root / "out", data, experiment, stream.getvalue()


def test_run_returns_what_the_sweep_did(api_run):
    summary, out, _data, _exp, log = api_run
    assert (summary.planned, summary.completed, summary.skipped, summary.failed) == (4, 4, 0, [])
    assert summary.ok and not summary.interrupted and summary.report_error is None
    assert summary.report == (out / "report.md").read_text()
    assert "| fft |" in summary.report and "| lora |" in summary.report
    assert "ran 4 trial(s), skipped 0 already complete, 0 failed" in log
    assert (out / "report.html").is_file()


def test_load_results_has_one_row_per_trial_with_config_metrics_params_and_times(api_run):
    import pefteval

    _summary, out, _data, _exp, _log = api_run
    df = pefteval.load_results(out)
    recs = {r["key"]: r for r in records(out)}
    assert len(df) == 4 and set(df["key"]) == set(recs)
    assert set(df["method"]) == {"fft", "lora"} and set(df["seed"]) == {0, 1} and set(df["task"]) == {"sst2"}
    for column in ("status", "training.lr", "training.epochs", "method.type", "method.r", "data.max_train_examples",
                   "test.accuracy", "validation.accuracy", "advglue.accuracy", "test.n", "params.trainable",
                   "params.total", "train_seconds", "eval_seconds", "peak_rss_mb", "best_epoch", "curve"):
        assert column in df.columns, column
    for row in df.to_dict("records"):
        rec = recs[row["key"]]
        assert row["status"] == "complete"
        assert row["test.accuracy"] == rec["metrics"]["test"]["accuracy"]
        assert row["params.trainable"] == rec["params"]["trainable"]
        assert row["training.lr"] == rec["config"]["training"]["lr"]
        assert row["curve"] == rec["curve"]
    lora = df[df["method"] == "lora"]
    assert (lora["method.r"] == 4).all() and (lora["params.trainable"] < df[df["method"] == "fft"][
        "params.trainable"].min()).all()
    assert len(pefteval.load_results(out, status="failed")) == 0


def test_report_renders_every_format_and_matches_the_cli(api_run):
    import pefteval

    _summary, out, _data, _exp, _log = api_run
    markdown = pefteval.report(out, "markdown", save=False)
    cli = run_cli("report", out)
    assert cli.returncode == 0 and cli.stdout == markdown
    csv = pefteval.report(out, "csv")
    assert csv == (out / "report.csv").read_bytes().decode() and csv.splitlines()[0].startswith("method")
    assert "\\begin{tabular}" in pefteval.report(out, "latex", save=False)


def test_a_rerun_resumes_and_bad_input_raises_user_errors(api_run):
    import pefteval
    from pefteval.errors import ConfigError, UserError

    _summary, out, data, experiment, _log = api_run
    again = pefteval.run(experiment, out, data_dir=data, max_train_examples=32, stream=io.StringIO())
    assert (again.completed, again.skipped) == (0, 4)
    plan = pefteval.run(experiment, dry_run=True, data_dir=data)
    assert plan.dry_run and len(plan.plan) == 4 and plan.report is None
    with pytest.raises(ConfigError, match="methods"):
        pefteval.run({**experiment, "methods": [{"type": "lorra"}]}, out / "x", data_dir=data)
    with pytest.raises(UserError, match="choose one of"):
        pefteval.report(out, "pdf")
    with pytest.raises(UserError, match="no results store"):
        pefteval.load_results(out / "missing")
    assert not (out / "x").exists()


def test_import_pefteval_loads_no_torch():
    code = "import sys, pefteval; pefteval.run; pefteval.load_results; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, env=cli_env())
    assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stderr
