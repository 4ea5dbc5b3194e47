"""`pefteval run --executor ray` against a real Ray cluster started here, on loopback only (one head
with 2 CPUs, shared by every test of this module): the same records as the local executor, a Ray
worker killed mid-trial, and Ctrl-C on the driver."""

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

from .conftest import REPO_ROOT, cli_env, run_cli, write_sst2_layout
from .test_resume_safety import write_config

pytestmark = pytest.mark.integration
ray = pytest.importorskip("ray")


# the test cluster and its drivers: Ray's single-machine switch keeps every Ray process on
# 127.0.0.1; `ray start` turns token authentication on, so the drivers send the token
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}


def ray_env() -> dict[str, str]:
    return {**cli_env(), **RAY_ENV}


def ray_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pefteval.cli", *map(str, args)], cwd=REPO_ROOT, env=ray_env(),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    import secrets

    from pefteval.distributed import free_port

    # `ray start` with token authentication needs a token to exist: one of the test's own, in a
    # temporary file its drivers read too (never the user's ~/.ray/auth_token)
    token = tmp_path_factory.mktemp("ray_auth") / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    RAY_ENV["RAY_AUTH_TOKEN_PATH"] = str(token)

    ray_bin = str(Path(sys.executable).with_name("ray"))
    port = free_port()
    start = subprocess.run([ray_bin, "start", "--head", f"--port={port}", "--num-cpus=2", "--num-gpus=0",
                            "--include-dashboard=false", "--disable-usage-stats"], env=ray_env(), capture_output=True,
                           text=True, timeout=180)
    assert start.returncode == 0, start.stdout + start.stderr
    assert "Local node IP: 127.0.0.1" in start.stdout + start.stderr
    yield f"127.0.0.1:{port}"
    subprocess.run([ray_bin, "stop", "--force"], env=ray_env(), capture_output=True, timeout=120)


def _records(out: Path) -> dict[str, dict]:
    conn = sqlite3.connect(out / "results.sqlite")
    try:
        return {key: json.loads(r) for key, r in conn.execute("SELECT key, record FROM trials")}
    finally:
        conn.close()


@pytest.fixture
def sweep(tmp_path, tiny_bert_dir):
    data = write_sst2_layout(tmp_path / "data", n_train=32, n_dev=16, n_adv=8)
    return write_config(tmp_path / "exp.yaml", tiny_bert_dir), data  # FFT and LoRA, seed 0


def test_ray_gives_the_records_of_the_local_executor(cluster, sweep, tmp_path):
    cfg, data = sweep
    local = run_cli("run", cfg, "--out", tmp_path / "local", "--data-dir", data, "--threads", "1")
    assert local.returncode == 0, local.stderr[-3000:]
    on_ray = ray_cli("run", cfg, "--out", tmp_path / "ray", "--data-dir", data, "--executor", "ray",
                     "--ray-address", cluster)
    assert on_ray.returncode == 0, on_ray.stderr[-3000:]
    a, b = _records(tmp_path / "local"), _records(tmp_path / "ray")
    assert len(a) == 2 and set(a) == set(b)
    for key in a:
        assert b[key]["status"] == "complete"
        assert b[key]["metrics"] == a[key]["metrics"] and b[key]["curve"] == a[key]["curve"]
        assert b[key]["threads"] == 1  # a task's CPUs (resources.cpus_per_trial, default 1)
        assert set(b[key]["files"]) == set(a[key]["files"])
    task = json.loads((tmp_path / "ray" / b[key]["run_dir"] / "ray_task.json").read_text())
    assert task["node_ip"] == "127.0.0.1"
    assert "ran 2 trial(s), skipped 0 already complete, 0 failed" in on_ray.stderr


def _start(cfg: Path, out: Path, data: Path, log: Path, cluster: str) -> subprocess.Popen:
    with open(log, "w") as err:
        return subprocess.Popen([sys.executable, "-m", "pefteval", "run", str(cfg), "--out", str(out), "--data-dir",
                                 str(data), "--executor", "ray", "--ray-address", cluster], cwd=REPO_ROOT,
                                env=ray_env(), stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)


def _trial_processes(out: Path) -> list[int]:
    """The pefteval.worker processes still running a trial of ``out``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"pefteval.worker" in cmdline and any(str(out).encode() in part for part in cmdline):
                found.append(int(entry.name))
    return found


def _wait_for_a_running_trial(proc: subprocess.Popen, out: Path, log: Path, timeout: float = 300) -> Path:
    deadline = time.time() + timeout
    while time.time() < deadline:
        for run_dir in (out / "runs").glob("*") if (out / "runs").is_dir() else []:
            events = run_dir / "events.jsonl"
            if (run_dir / "ray_task.json").is_file() and events.is_file() and '"step"' in events.read_text():
                return run_dir
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail(f"no trial seen running: {log.read_text()[-3000:]}")


def test_a_killed_ray_worker_fails_its_trial_only_and_a_rerun_completes_it(cluster, sweep, tmp_path):
    cfg, data = sweep
    out, log = tmp_path / "out", tmp_path / "driver.txt"
    driver = _start(cfg, out, data, log, cluster)
    try:
        run_dir = _wait_for_a_running_trial(driver, out, log)
        worker = json.loads((run_dir / "ray_task.json").read_text())["pid"]
        os.kill(worker, signal.SIGKILL)  # the Ray worker process running that trial's task
        assert driver.wait(timeout=600) == 1, log.read_text()[-3000:]
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    text = log.read_text()
    assert "ran 1 trial(s), skipped 0 already complete, 1 failed" in text, text[-3000:]
    records = _records(out)
    failed = [r for r in records.values() if r["status"] != "complete"]
    assert len(records) == 2 and len(failed) == 1
    assert "the Ray task running this trial died" in failed[0]["error"]
    assert failed[0]["run_dir"] == str(run_dir.relative_to(out))
    assert _trial_processes(out) == []  # the killed worker's trial process went with it
    complete_before = {k: r["wall_seconds"] for k, r in records.items() if r["status"] == "complete"}
    again = ray_cli("run", cfg, "--out", out, "--data-dir", data, "--executor", "ray", "--ray-address", cluster)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "ran 1 trial(s), skipped 1 already complete, 0 failed" in again.stderr
    after = _records(out)
    assert all(r["status"] == "complete" for r in after.values())
    assert {k: after[k]["wall_seconds"] for k in complete_before} == complete_before  # not redone


def test_ctrl_c_on_the_driver_cancels_the_tasks_and_exits_130(cluster, sweep, tmp_path):
    cfg, data = sweep
    out, log = tmp_path / "out", tmp_path / "driver.txt"
    driver = _start(cfg, out, data, log, cluster)
    try:
        _wait_for_a_running_trial(driver, out, log)
        os.kill(driver.pid, signal.SIGINT)
        assert driver.wait(timeout=120) == 130, log.read_text()[-3000:]
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert log.read_text().strip().splitlines()[-1].startswith("interrupted: finished trials are saved (")
    deadline = time.time() + 30
    while _trial_processes(out) and time.time() < deadline:
        time.sleep(0.2)
    assert _trial_processes(out) == []  # cancelled: nothing goes on training into OUT


def test_a_task_on_a_node_that_cannot_see_out_fails_saying_so(tmp_path):
    """--out must be storage every node sees: a task that finds no trial.json fails at once, naming
    the node and the fix, and writes nothing (there is nothing of the trial's to lose)."""
    from pefteval.ray_executor import run_trial_task

    missing = tmp_path / "elsewhere" / "runs" / "sst2__fft__seed0__0123456789abcdef"
    record = run_trial_task(str(missing), None, None)
    assert record["status"] == "failed"
    assert f"{missing / 'trial.json'} is not there on Ray node " in record["error"]
    assert "--out must be on storage every node of the cluster sees at the same path" in record["error"]
    assert not (tmp_path / "elsewhere").exists()
