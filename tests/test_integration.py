"""End to end through the `pefteval` command: the packaged MiniLM on real SST-2, resume
after an interrupted sweep, and every method on the tiny local model."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from .conftest import REPO_ROOT, cli_env, run_cli, write_sst2_layout

pytestmark = pytest.mark.integration


def write_config(path: Path, **cfg) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def rows(out: Path) -> list[tuple[str, str, str, int, str]]:
    conn = sqlite3.connect(out / "results.sqlite")
    try:
        return conn.execute("SELECT key, task, method, seed, status FROM trials ORDER BY rowid").fetchall()
    finally:
        conn.close()


def records(out: Path) -> list[dict]:
    conn = sqlite3.connect(out / "results.sqlite")
    try:
        return [json.loads(r) for (r,) in conn.execute("SELECT record FROM trials ORDER BY rowid")]
    finally:
        conn.close()


def table_lines(text: str) -> dict[str, list[str]]:
    """The comparison table's rows (the report's first table) by method name."""
    out = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        if line.startswith("| ") and not line.startswith("| Method"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            out[cells[0]] = cells
    return out


# ---------------------------------------------------------------- packaged MiniLM on real SST-2

MINILM_ARGS = ("--max-train-examples", "32", "--max-eval-examples", "32")
MINILM_METHODS = ["fft", "lora", "bitfit"]


@pytest.fixture(scope="module")
def minilm_run(tmp_path_factory, data_dir, minilm_path):
    work = tmp_path_factory.mktemp("minilm")
    cfg = write_config(
        work / "exp.yaml", name="it_minilm", model="minilm-l6", tasks=["sst2"], seeds=[0],
        training={"epochs": 1, "batch_size": 16, "max_seq_length": 64, "lr": 5e-5},
        methods=[{"type": "fft"}, {"type": "lora", "r": 8, "training": {"lr": 5e-4}},
                 {"type": "bitfit", "training": {"lr": 1e-3}}],
    )
    out = work / "out"
    started = time.time()
    proc = run_cli("run", cfg, "--out", out, "--data-dir", data_dir, *MINILM_ARGS)
    print(f"\n  MiniLM run: {time.time() - started:.1f}s")
    return cfg, out, proc


def test_minilm_run_completes(minilm_run):
    _, out, proc = minilm_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "3 trial(s) planned" in proc.stderr
    assert "ran 3 trial(s), skipped 0 already complete, 0 failed" in proc.stderr
    assert "Traceback" not in proc.stderr
    stored = rows(out)
    assert [(t, m, s, st) for _, t, m, s, st in stored] == [("sst2", m, 0, "complete") for m in MINILM_METHODS]
    assert (out / "experiment.yaml").is_file()
    assert yaml.safe_load((out / "experiment.yaml").read_text())["data"]["max_train_examples"] == 32


def test_minilm_records(minilm_run):
    _, out, proc = minilm_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    recs = {r["config"]["method_label"]: r for r in records(out)}
    assert set(recs) == set(MINILM_METHODS)
    for rec in recs.values():
        assert rec["train_examples"] == 32 and rec["train_source"] == "train"
        assert rec["metrics"]["test"]["n"] == 32 and rec["metrics"]["advglue"]["n"] == 32
        assert 1 <= rec["metrics"]["validation"]["n"] <= 32
        for split in ("validation", "test", "advglue"):
            assert 0.0 <= rec["metrics"][split]["accuracy"] <= 1.0
        assert len(rec["curve"]) == 1 and rec["best_epoch"] == 1
        assert rec["params"]["base"] == rec["params"]["total"] or rec["config"]["method"]["type"] == "lora"
        assert rec["config"]["training"]["max_seq_length"] == 64
    # all-MiniLM-L6-v2 with a 2-way head: 22.7M parameters, all trained by FFT
    assert recs["fft"]["params"]["trainable"] == recs["fft"]["params"]["base"] == 22_713_986
    head = 384 * 2 + 2
    assert recs["lora"]["params"]["trainable"] == 6 * 2 * (8 * 384 + 384 * 8) + head
    assert recs["lora"]["params"]["total"] == 22_713_986 + 6 * 2 * (8 * 384 + 384 * 8) + head
    assert head < recs["bitfit"]["params"]["trainable"] < 30_000


def test_minilm_run_dirs(minilm_run):
    from pefteval.artifacts import saved_tensors

    _, out, proc = minilm_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dirs = sorted((out / "runs").iterdir())
    assert len(run_dirs) == 3
    by_key = {r["key"]: r for r in records(out)}
    for run_dir in run_dirs:
        trial = json.loads((run_dir / "trial.json").read_text())
        assert run_dir.name == f"sst2__{trial['method_label']}__seed0__{trial['key']}"
        result = json.loads((run_dir / "result.json").read_text())
        assert result["status"] == "complete"
        stored = by_key[trial["key"]]
        assert stored["run_dir"] == f"runs/{run_dir.name}"
        assert result["metrics"] == stored["metrics"]
        weights = saved_tensors(run_dir)
        assert sum(t.numel() for t in weights.values()) == stored["params"]["trainable"]
        assert not list(run_dir.glob(".*.tmp"))
    lora_dir = next(d for d in run_dirs if "__lora__" in d.name)
    lora = saved_tensors(lora_dir)
    assert sum("lora_A" in n for n in lora) == 12 and any("classifier" in n for n in lora)
    assert (lora_dir / "adapter" / "adapter_config.json").is_file()
    fft_dir = next(d for d in run_dirs if "__fft__" in d.name)
    assert (fft_dir / "model" / "config.json").is_file() and (fft_dir / "model" / "model.safetensors").is_file()


def test_minilm_report_markdown(minilm_run):
    _, out, proc = minilm_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = (out / "report.md").read_text()
    assert proc.stdout.strip() == report.strip()
    lines = table_lines(report)
    assert list(lines) == MINILM_METHODS
    recs = {r["config"]["method_label"]: r for r in records(out)}
    for method, cells in lines.items():
        rec = recs[method]
        assert cells[1] == f"{100 * rec['metrics']['test']['accuracy']:.2f} (–)"
        assert cells[2] == f"{100 * rec['metrics']['advglue']['accuracy']:.2f} (–)"
        assert cells[5] == f"{rec['params']['trainable']:,}"
    assert "SST-2 orig" in report and "Selected grid points" in report


def test_minilm_rerun_trains_nothing(minilm_run, data_dir):
    cfg, out, proc = minilm_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    before = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*")}
    again = run_cli("run", cfg, "--out", out, "--data-dir", data_dir, *MINILM_ARGS)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "ran 0 trial(s), skipped 3 already complete, 0 failed" in again.stderr
    assert "[trial" not in again.stderr
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*")} == before
    assert len(rows(out)) == 3
    assert table_lines(again.stdout) == table_lines((out / "report.md").read_text())


@pytest.mark.parametrize("fmt,suffix", [("csv", "csv"), ("latex", "tex")])
def test_minilm_report_formats(minilm_run, fmt, suffix):
    _, out, proc = minilm_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    db_mtime = (out / "results.sqlite").stat().st_mtime_ns
    rep = run_cli("report", out, "--format", fmt, timeout=120)
    assert rep.returncode == 0, rep.stderr
    assert (out / f"report.{suffix}").read_text() == rep.stdout
    recs = {r["config"]["method_label"]: r for r in records(out)}
    if fmt == "csv":
        body = rep.stdout.splitlines()
        assert body[0].startswith("method,task,split,mean,std")
        assert len(body) == 1 + 2 * len(MINILM_METHODS)
        for m in MINILM_METHODS:
            assert f"{m},sst2,orig,{recs[m]['metrics']['test']['accuracy']:.6f}," in rep.stdout
    else:
        assert "\\begin{tabular}" in rep.stdout
        for m in MINILM_METHODS:
            assert f"{m} & {100 * recs[m]['metrics']['test']['accuracy']:.2f} (--)" in rep.stdout
    assert (out / "results.sqlite").stat().st_mtime_ns == db_mtime
    assert len(list((out / "runs").iterdir())) == 3


# ---------------------------------------------------------------- resume after an interrupted sweep


def _wait_for(predicate, proc, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            pytest.fail(f"sweep exited ({proc.returncode}) before {what}")
        time.sleep(0.02)
    pytest.fail(f"timed out waiting for {what}")



def _signal_when(proc: subprocess.Popen, sig: int, conditions: list) -> int:
    """Wait for each (predicate, description) in turn, then signal the run's process group;
    the group is killed whatever happens, so no trial process outlives the test."""
    try:
        for predicate, what in conditions:
            _wait_for(predicate, proc, 300, what)
        os.killpg(proc.pid, sig)
        return proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

def _complete_count(out: Path) -> int:
    if not (out / "results.sqlite").is_file():
        return 0
    try:
        return sum(1 for row in rows(out) if row[4] == "complete")
    except sqlite3.OperationalError:  # the table is being created
        return 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["sigint", "sigkill"])
def test_resume_after_interrupt(tmp_path, tiny_bert_dir, sig):
    data = write_sst2_layout(tmp_path / "data", n_train=1000, n_dev=64, n_adv=16)
    cfg = write_config(
        tmp_path / "exp.yaml", name="resume", model=str(tiny_bert_dir), tasks=["sst2"], seeds=[0, 1, 2],
        training={"epochs": 3, "batch_size": 16, "max_seq_length": 32, "lr": 1e-3, "precision": "fp32"},
        methods=[{"type": "fft"}],
    )
    out = tmp_path / "out"
    args = [sys.executable, "-m", "pefteval.cli", "run", str(cfg), "--out", str(out), "--data-dir", str(data)]
    log = tmp_path / "stderr.txt"
    with open(log, "w") as err:
        proc = subprocess.Popen(args, cwd=REPO_ROOT, env=cli_env(), stdout=subprocess.DEVNULL, stderr=err,
                                start_new_session=True)
    # mid-way through the second trial: its first epoch is done, two more to go
    rc = _signal_when(proc, sig, [
        (lambda: _complete_count(out) >= 1, "the first trial's row"),
        (lambda: "[trial 2/3] fft sst2 seed 1 | epoch 1/3 done" in log.read_text(), "the second trial's first epoch"),
    ])
    stderr = log.read_text()
    if sig == signal.SIGINT:
        assert rc == 130, stderr[-3000:]
        assert "interrupted: finished trials are saved" in stderr
        assert "Traceback" not in stderr
    else:
        assert rc == -signal.SIGKILL
    assert "[trial 3/3]" not in stderr
    stored = rows(out)
    assert [(s, st) for _, _, _, s, st in stored] == [(0, "complete")]  # the interrupted trial left no row
    interrupted_dir = next(d for d in (out / "runs").iterdir() if "__seed1__" in d.name)
    assert not (interrupted_dir / "result.json").exists()
    first_dir = next(d for d in (out / "runs").iterdir() if "__seed0__" in d.name)
    first_mtime = (first_dir / "result.json").stat().st_mtime_ns

    again = run_cli("run", cfg, "--out", out, "--data-dir", data)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "ran 2 trial(s), skipped 1 already complete, 0 failed" in again.stderr
    started = [ln for ln in again.stderr.splitlines() if " on sst2, seed " in ln]
    assert len(started) == 2 and "seed 1," in started[0] and "seed 2," in started[1]  # seed 0 is not redone
    final = rows(out)
    assert sorted((s, st) for _, _, _, s, st in final) == [(0, "complete"), (1, "complete"), (2, "complete")]
    assert len({k for k, *_ in final}) == 3
    assert (first_dir / "result.json").stat().st_mtime_ns == first_mtime
    assert json.loads((interrupted_dir / "result.json").read_text())["status"] == "complete"
    assert len(list((out / "runs").iterdir())) == 3
    assert len(table_lines((out / "report.md").read_text())) == 1
    assert "seeds [0, 1, 2]" in (out / "report.md").read_text()


# ---------------------------------------------------------------- every method on the tiny model


def test_all_methods_on_tiny_model(tmp_path, tiny_bert_dir):
    data = write_sst2_layout(tmp_path / "data", n_train=64, n_dev=32, n_adv=16)
    methods = ["fft", "lora", "adalora", "prefix", "ia3", "bitfit"]
    cfg = write_config(
        tmp_path / "exp.yaml", name="six", model=str(tiny_bert_dir), tasks=["sst2"], seeds=[0],
        training={"epochs": 1, "batch_size": 16, "max_seq_length": 32, "lr": 1e-3},
        methods=[{"type": m} for m in methods]
        + [{"type": "peft", "name": "broken", "peft_type": "LOHA", "kwargs": {"no_such_option": 1}}],
    )
    out = tmp_path / "out"
    proc = run_cli("run", cfg, "--out", out, "--data-dir", data, "--max-train-examples", "32")
    # one trial fails (bad peft kwargs): it is reported and the sweep exits 1, the others complete
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "ran 6 trial(s), skipped 0 already complete, 1 failed" in proc.stderr
    assert "failed: broken on sst2" in proc.stderr and "bad kwargs" in proc.stderr
    stored = {m: st for _, _, m, _, st in rows(out)}
    assert stored == {**{m: "complete" for m in methods}, "broken": "failed"}
    recs = {r["config"]["method_label"]: r for r in records(out) if r["status"] == "complete"}
    expected = {"fft": 999_138, "lora": 2_114, "adalora": 3_186, "prefix": 2_626, "ia3": 386, "bitfit": 706}
    assert {m: r["params"]["trainable"] for m, r in recs.items()} == expected
    for rec in recs.values():
        assert rec["train_examples"] == 32
        entry = {"fft": "model", "bitfit": "bitfit"}.get(rec["config"]["method"]["type"], "adapter")
        assert (out / rec["run_dir"] / entry).is_dir()
    report = (out / "report.md").read_text()
    assert list(table_lines(report)) == methods
    assert "1 trial(s) failed" in report
    # a failed trial is not complete, so the next run retries it (and only it)
    again = run_cli("run", cfg, "--out", out, "--data-dir", data, "--max-train-examples", "32",
                    "--methods", "broken,bitfit")
    assert again.returncode == 1
    assert "ran 0 trial(s), skipped 1 already complete, 1 failed" in again.stderr


# ---------------------------------------------------------------- exit status when nothing completed


def test_interrupt_during_first_trial_exits_130(tmp_path, tiny_bert_dir):
    # Ctrl-C before any trial finished: the sweep was interrupted (130, "run again to resume"), not a user error
    data = write_sst2_layout(tmp_path / "data", n_train=1000, n_dev=64, n_adv=16)
    cfg = write_config(
        tmp_path / "exp.yaml", name="early", model=str(tiny_bert_dir), tasks=["sst2"], seeds=[0, 1],
        training={"epochs": 3, "batch_size": 16, "max_seq_length": 32, "lr": 1e-3, "precision": "fp32"},
        methods=[{"type": "fft"}],
    )
    out = tmp_path / "out"
    log = tmp_path / "stderr.txt"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "pefteval.cli", "run", str(cfg), "--out", str(out),
                                 "--data-dir", str(data)], cwd=REPO_ROOT, env=cli_env(),
                                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    rc = _signal_when(proc, signal.SIGINT, [
        (lambda: "[trial 1/2] fft sst2 seed 0 | epoch 1/3 done" in log.read_text(), "the first trial's first epoch"),
    ])
    stderr = log.read_text()
    assert _complete_count(out) == 0
    assert "Traceback" not in stderr
    assert rc == 130, stderr[-2000:]
    assert "interrupted: finished trials are saved" in stderr


def test_sweep_where_every_trial_fails_exits_1(tmp_path, tiny_bert_dir):
    # failed trials exit 1 (as when some fail); exit 2 is reserved for user errors caught before training
    data = write_sst2_layout(tmp_path / "data", n_train=64, n_dev=32, n_adv=16)
    cfg = write_config(
        tmp_path / "exp.yaml", name="allfail", model=str(tiny_bert_dir), tasks=["sst2"], seeds=[0],
        training={"epochs": 1, "batch_size": 16, "max_seq_length": 32},
        methods=[{"type": "peft", "name": "broken", "peft_type": "LOHA", "kwargs": {"no_such_option": 1}}],
    )
    out = tmp_path / "out"
    proc = run_cli("run", cfg, "--out", out, "--data-dir", data)
    assert "ran 0 trial(s), skipped 0 already complete, 1 failed" in proc.stderr
    assert "failed: broken on sst2" in proc.stderr
    assert [st for *_, st in rows(out)] == ["failed"]
    assert proc.returncode == 1, proc.stderr[-2000:]
