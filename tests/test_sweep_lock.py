"""One sweep per results directory: a second `pefteval run` on a directory in use exits 2 naming
the process that holds it and leaves the first one untouched; the lock of a killed run is taken
over; report reads without the lock."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from .conftest import REPO_ROOT, cli_env, run_cli, write_sst2_layout
from .test_resume_safety import _start, _wait_for_text, write_config

pytestmark = pytest.mark.integration


@pytest.fixture
def sweep(tmp_path, tiny_bert_dir):
    data = write_sst2_layout(tmp_path / "data", n_train=400, n_dev=16, n_adv=8)
    # two trials (FFT, LoRA) of several seconds each: long enough to be caught running
    training = {"epochs": 12, "batch_size": 8, "max_seq_length": 32, "lr": 1e-3, "precision": "fp32"}
    return write_config(tmp_path / "exp.yaml", tiny_bert_dir, training=training), data, tmp_path / "out"


def test_a_second_run_on_a_directory_in_use_exits_2_and_the_first_finishes(sweep, tmp_path):
    cfg, data, out = sweep
    log = tmp_path / "first.txt"
    first = _start(cfg, out, data, log)
    try:
        _wait_for_text(first, log, "[trial 1/2]")
        held = json.loads((out / ".pefteval.lock").read_text())
        assert held["pid"] == first.pid and held["command"].startswith("pefteval run")
        second = run_cli("run", cfg, "--out", out, "--data-dir", data)
        assert second.returncode == 2, second.stderr[-2000:]
        lines = [line for line in second.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith(f"error: {out} is in use by another `pefteval run` "
                                                       f"(pid {first.pid} on "), second.stderr
        assert "pefteval status" in lines[0] and f"kill {first.pid}" in lines[0]
        assert first.poll() is None  # untouched: still running
        # reading needs no lock: status says what runs where
        deadline = time.time() + 60
        while True:  # the trial is announced a moment before its process starts
            status = run_cli("status", out)
            assert status.returncode == 0, status.stderr
            text = status.stdout
            if "running   1" in text or time.time() > deadline:
                break
        assert f"{out}: safety, 2 trial(s) planned (from experiment.yaml)" in text
        assert f"running   1 (pefteval run, pid {first.pid} on " in text and "1 at a time" in text
        assert re.search(r"\[trial [12]\] (fft|lora) on sst2, seed 0, .*, pid \d+, for \d+s", text), text
        assert re.search(r"remaining [12] \(running ones included\)", text), text
        report = run_cli("report", out)
        assert "in use" not in report.stderr
        assert first.wait(timeout=600) == 0, log.read_text()[-3000:]
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert _statuses(out) == ["complete"] * 2
    assert "ran 2 trial(s), skipped 0 already complete, 0 failed" in log.read_text()
    assert (out / ".pefteval.lock").read_text() == ""  # released: the next run takes over nothing
    done = run_cli("status", out)
    assert done.returncode == 0, done.stderr
    assert "complete  2" in done.stdout and "failed    0" in done.stdout
    assert "running   0 (no `pefteval run` holds this directory now)" in done.stdout
    assert "remaining 0" in done.stdout and "time left ~0s (mean " in done.stdout


def _statuses(out) -> list[str]:
    import sqlite3

    conn = sqlite3.connect(out / "results.sqlite")
    try:
        return [s for (s,) in conn.execute("SELECT status FROM trials")]
    finally:
        conn.close()


def test_status_names_failed_trials_and_refuses_a_non_results_directory(tmp_path, tiny_bert_dir):
    data = write_sst2_layout(tmp_path / "data", n_train=32, n_dev=16, n_adv=8)
    cfg = write_config(tmp_path / "exp.yaml", tiny_bert_dir, methods=[
        {"type": "fft"}, {"type": "peft", "name": "broken", "peft_type": "LOHA", "kwargs": {"no_such_option": 1}}])
    proc = run_cli("run", cfg, "--out", tmp_path / "out", "--data-dir", data)
    assert proc.returncode == 1
    status = run_cli("status", tmp_path / "out")
    assert status.returncode == 0, status.stderr
    assert "complete  1" in status.stdout and "failed    1" in status.stdout
    failed = next(line for line in status.stdout.splitlines() if line.startswith("    broken on sst2"))
    assert "no_such_option" in failed
    assert "remaining 1" in status.stdout
    nothing = run_cli("status", tmp_path / "data")
    assert nothing.returncode == 2 and "holds no experiment.yaml" in nothing.stderr


def test_the_lock_of_a_killed_run_is_taken_over(sweep, tmp_path):
    cfg, data, out = sweep
    log = tmp_path / "first.txt"
    first = _start(cfg, out, data, log)
    _wait_for_text(first, log, "[trial 1/2] fft sst2 seed 0 | epoch 1/12 done")
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert json.loads((out / ".pefteval.lock").read_text())["pid"] == first.pid  # left behind
    again = subprocess.run([sys.executable, "-m", "pefteval", "run", str(cfg), "--out", str(out),
                            "--data-dir", str(data)], cwd=REPO_ROOT, env=cli_env(), capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"taking over {out} from an earlier run that is no longer running (pid {first.pid} on " in again.stderr
    assert _statuses(out) == ["complete"] * 2


def test_lock_primitives(tmp_path):
    from pefteval.errors import UserError
    from pefteval.lock import ResultsLock, holder, is_held

    assert not is_held(tmp_path) and holder(tmp_path) is None
    with ResultsLock(tmp_path) as lock:
        assert lock.takeover_note() is None
        assert is_held(tmp_path) and holder(tmp_path)["pid"] == os.getpid()
        # another open file description in this very process is refused too (flock is per description)
        with pytest.raises(UserError, match="is in use by another `pefteval run`"):
            ResultsLock(tmp_path).__enter__()
        started = holder(tmp_path)["started"]
        assert abs(started - time.time()) < 60
    assert not is_held(tmp_path) and holder(tmp_path) is None
