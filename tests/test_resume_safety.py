"""No silent damage: a trial is complete only when everything it promises is on disk, a complete
row is trusted on resume only while its files and its data are as they were, and every bad
results directory (a file, read-only, full, a corrupt store) is one clear error that loses nothing.

Full and read-only file systems are real ones: tmpfs mounts (the tests that need one skip where
mounting is not allowed)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from .conftest import REPO_ROOT, cli_env, run_cli, write_sst2_layout

pytestmark = pytest.mark.integration

TRAINING = {"epochs": 1, "batch_size": 16, "max_seq_length": 32, "lr": 1e-3, "precision": "fp32"}


def write_config(path: Path, model: Path, **cfg) -> Path:
    full = {"name": "safety", "model": str(model), "tasks": ["sst2"], "seeds": [0], "training": TRAINING,
            "methods": [{"type": "fft"}, {"type": "lora"}], **cfg}
    path.write_text(yaml.safe_dump(full, sort_keys=False))
    return path


def store_rows(out: Path) -> dict[str, tuple[str, dict]]:
    """method -> (status, record)"""
    conn = sqlite3.connect(out / "results.sqlite")
    try:
        return {m: (s, json.loads(r)) for m, s, r in conn.execute("SELECT method, status, record FROM trials")}
    finally:
        conn.close()


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tmp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp") or ".tmp." in p.name]


def assert_one_error(proc: subprocess.CompletedProcess, *needles: str, code: int = 2) -> str:
    err = proc.stderr
    assert proc.returncode == code, err[-3000:]
    assert "Traceback" not in err + proc.stdout, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


class Mounts:
    """Real tmpfs file systems: small ones fill up, remounted read-only they refuse writes."""

    def __init__(self, root: Path):
        self.root = root
        self.mounted: list[Path] = []

    def tmpfs(self, name: str, size: str) -> Path:
        path = self.root / name
        path.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()}); these cases need a real file system")
        self.mounted.append(path)
        return path

    def remount(self, path: Path, options: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True)

    def unmount_all(self) -> None:
        for path in reversed(self.mounted):
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def mounts(tmp_path):
    m = Mounts(tmp_path)
    yield m
    m.unmount_all()


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_bert_dir):
    """A finished two-trial sweep (FFT and LoRA on a small SST-2 layout): copy it before changing it."""
    work = tmp_path_factory.mktemp("finished")
    data = write_sst2_layout(work / "data", n_train=32, n_dev=16, n_adv=8)
    cfg = write_config(work / "exp.yaml", tiny_bert_dir)
    out = work / "out"
    proc = run_cli("run", cfg, "--out", out, "--data-dir", data)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cfg, data, out


@pytest.fixture
def copy(finished, tmp_path):
    cfg, data, out = finished
    mine = tmp_path / "out"
    shutil.copytree(out, mine)
    return cfg, data, mine


# ---------------------------------------------------------------- complete means everything is on disk


def test_a_full_disk_fails_the_trial_and_a_rerun_redoes_it(mounts, tmp_path, tiny_bert_dir):
    # 3 MB: room for the store, LoRA's files and FFT's predictions, not for FFT's 4 MB of weights
    disk = mounts.tmpfs("disk", "3m")
    data = write_sst2_layout(tmp_path / "data", n_train=32, n_dev=16, n_adv=8)
    cfg = write_config(tmp_path / "exp.yaml", tiny_bert_dir)
    out = disk / "out"
    proc = run_cli("run", cfg, "--out", out, "--data-dir", data)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    fft_dir = next((out / "runs").glob("sst2__fft__*"))
    assert (f"[trial 1/2] FAILED: OutputError: no space left on device while writing "
            f"{fft_dir}/model") in proc.stderr
    assert "ran 1 trial(s), skipped 0 already complete, 1 failed" in proc.stderr
    rows = store_rows(out)
    assert rows["fft"][0] == "failed" and rows["lora"][0] == "complete"
    # the failed trial's partial files are gone; what says what happened stays
    assert sorted(p.name for p in fft_dir.iterdir()) == ["log.txt", "result.json", "trial.json"]
    assert tmp_files(out) == []
    lora_dir = next((out / "runs").glob("sst2__lora__*"))
    lora_result = (lora_dir / "result.json").stat().st_mtime_ns
    assert set(rows["lora"][1]["files"]) >= {"adapter/adapter_model.safetensors", "adapter/adapter_config.json",
                                             "predictions.json", "increments.json"}

    mounts.remount(disk, "size=20m")
    again = run_cli("run", cfg, "--out", out, "--data-dir", data)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "ran 1 trial(s), skipped 1 already complete, 0 failed" in again.stderr
    rows = store_rows(out)
    weights = fft_dir / "model" / "model.safetensors"
    assert rows["fft"][0] == "complete" and weights.is_file()
    assert rows["fft"][1]["files"]["model/model.safetensors"] == weights.stat().st_size
    assert (lora_dir / "result.json").stat().st_mtime_ns == lora_result


def test_a_disk_with_no_space_at_all_is_one_error(mounts, finished, tiny_bert_dir):
    cfg, data, done = finished
    disk = mounts.tmpfs("full", "12m")
    out = disk / "out"
    shutil.copytree(done, out)
    before = sha(out / "results.sqlite")
    fill(disk)
    proc = run_cli("run", cfg, "--out", out, "--data-dir", data, "--seeds", "3")
    assert_one_error(proc, "no space left on device", str(out))
    assert tmp_files(out) == []
    assert sha(out / "results.sqlite") == before
    assert len(list((out / "runs").iterdir())) == 2


def test_a_trial_json_that_cannot_be_written_stops_the_sweep_cleanly(mounts):
    from pefteval.errors import OutputError
    from pefteval.sweep import Progress, run_one

    disk = mounts.tmpfs("tiny", "256k")
    (disk / "runs" / "x").mkdir(parents=True)  # a stale attempt: removed, then the new one cannot be set up
    fill(disk)
    plan = _one_trial()
    run_dir = disk / "runs" / "x"
    with pytest.raises(OutputError, match="no space left on device while writing .*trial.json"):
        run_one(plan, run_dir, None, Progress(1))
    assert not run_dir.exists() or not any(run_dir.iterdir())
    assert tmp_files(disk) == []


def fill(disk: Path) -> None:
    """Leave no byte free on ``disk``."""
    with open(disk / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass


def _one_trial():
    from pefteval.config import parse_config
    from pefteval.plan import plan_trials

    exp = parse_config({"name": "x", "model": "minilm-l6", "tasks": ["sst2"], "seeds": [0],
                        "methods": [{"type": "lora"}]})
    return plan_trials(exp, "local")[0]


# ---------------------------------------------------------------- resume trusts only what still holds


def test_a_complete_trial_whose_files_are_gone_is_reported_and_redone(copy):
    cfg, data, out = copy
    lora_dir = next((out / "runs").glob("sst2__lora__*"))
    fft_dir = next((out / "runs").glob("sst2__fft__*"))
    shutil.rmtree(lora_dir)  # as another run's cleanup once did
    (fft_dir / "model" / "model.safetensors").write_bytes(b"")  # truncated
    proc = run_cli("run", cfg, "--out", out, "--data-dir", data)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"redoing lora on sst2, seed 0, lr 0.001, warmup 0.06, batch 16: complete in results.sqlite, but " \
           f"{lora_dir} lacks the whole directory" in proc.stderr
    assert f"{fft_dir} lacks model/model.safetensors (now 0 bytes, written " in proc.stderr
    assert "ran 2 trial(s), skipped 0 already complete, 0 failed" in proc.stderr
    assert (lora_dir / "result.json").is_file() and (fft_dir / "model" / "model.safetensors").stat().st_size > 0


def test_a_complete_trial_without_result_json_is_redone(copy):
    cfg, data, out = copy
    fft_dir = next((out / "runs").glob("sst2__fft__*"))
    (fft_dir / "result.json").unlink()
    proc = run_cli("run", cfg, "--out", out, "--data-dir", data)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{fft_dir} lacks result.json" in proc.stderr
    assert "ran 1 trial(s), skipped 1 already complete" in proc.stderr


def test_results_track_their_data(copy, tmp_path):
    cfg, data, out = copy
    recorded = store_rows(out)["fft"][1]["data_fingerprint"]
    assert set(recorded) == {"glue/SST-2/train.tsv", "glue/SST-2/dev.tsv", "advglue/dev.json"}
    assert recorded["glue/SST-2/train.tsv"] == "sha256:" + sha(data / "glue/SST-2/train.tsv")

    # the same files in another directory are the same data: resumed
    same = tmp_path / "same"
    shutil.copytree(data, same)
    proc = run_cli("run", cfg, "--out", out, "--data-dir", same)
    assert proc.returncode == 0 and "ran 0 trial(s), skipped 2 already complete" in proc.stderr

    # another train.tsv: refused, the store untouched
    changed = tmp_path / "changed"
    shutil.copytree(data, changed)
    with open(changed / "glue/SST-2/train.tsv", "a") as f:
        f.write("an extra excellent row \t1\n")
    before = sha(out / "results.sqlite")
    proc = run_cli("run", cfg, "--out", out, "--data-dir", changed)
    err = assert_one_error(proc, "2 complete trial(s)", "were trained on other data",
                           "glue/SST-2/train.tsv changed", "new --out", "--accept-data-change")
    assert "fft on sst2, seed 0" in err and "lora on sst2, seed 0" in err
    assert sha(out / "results.sqlite") == before

    # accepted: both retrained on the current data, their rows replaced
    proc = run_cli("run", cfg, "--out", out, "--data-dir", changed, "--accept-data-change")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "redoing fft on sst2, seed 0, lr 0.001, warmup 0.06, batch 16: its data changed" in proc.stderr
    assert "ran 2 trial(s), skipped 0 already complete" in proc.stderr
    now = store_rows(out)["fft"][1]["data_fingerprint"]["glue/SST-2/train.tsv"]
    assert now == "sha256:" + sha(changed / "glue/SST-2/train.tsv") != recorded["glue/SST-2/train.tsv"]
    assert store_rows(out)["fft"][1]["train_examples"] == 33 - 3  # one more row; validation holds out 10 %

    # a data file that is gone is a change too
    (changed / "advglue/dev.json").unlink()
    proc = run_cli("run", cfg, "--out", out, "--data-dir", changed)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_a_store_of_the_previous_release_still_resumes(copy):
    # records written before fingerprints and file lists: resumed as before on unchanged data
    cfg, data, out = copy
    conn = sqlite3.connect(out / "results.sqlite")
    with conn:
        for key, text in conn.execute("SELECT key, record FROM trials").fetchall():
            rec = json.loads(text)
            del rec["data_fingerprint"], rec["files"]
            conn.execute("UPDATE trials SET record = ? WHERE key = ?", (json.dumps(rec), key))
    conn.close()
    proc = run_cli("run", cfg, "--out", out, "--data-dir", data)
    assert proc.returncode == 0 and "ran 0 trial(s), skipped 2 already complete" in proc.stderr


# ---------------------------------------------------------------- results directories that cannot be used


def test_out_that_is_a_file_or_under_one(finished, tmp_path):
    cfg, data, _ = finished
    file = tmp_path / "results"
    file.write_text("not a directory\n")
    assert_one_error(run_cli("run", cfg, "--out", file, "--data-dir", data), f"{file} is a file, not a directory")
    assert_one_error(run_cli("run", cfg, "--out", file / "sub", "--data-dir", data),
                     f"cannot create {file / 'sub'}: {file} is a file, not a directory")
    assert file.read_text() == "not a directory\n"


def test_out_on_a_read_only_file_system(mounts, finished):
    cfg, data, done = finished
    disk = mounts.tmpfs("ro", "8m")
    shutil.copytree(done, disk / "out")
    mounts.remount(disk, "ro")
    before = sha(disk / "out" / "results.sqlite")
    assert_one_error(run_cli("run", cfg, "--out", disk / "new", "--data-dir", data),
                     f"cannot write in {disk}: it is on a read-only file system")
    assert_one_error(run_cli("run", cfg, "--out", disk / "out", "--data-dir", data, "--seeds", "5"),
                     "read-only file system")
    # report: the table on stdout, and where it could not be saved
    proc = run_cli("report", disk / "out")
    err = assert_one_error(proc, f"read-only file system while writing {disk / 'out' / 'report.md'}",
                           "the report is above")
    assert "| fft" in proc.stdout and "| lora" in proc.stdout, err
    html = run_cli("report", disk / "out", "--format", "html")
    assert_one_error(html, "report.html")
    assert html.stdout.lstrip().startswith("<!DOCTYPE html>")
    assert sha(disk / "out" / "results.sqlite") == before


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_corrupt_store_is_named_and_never_overwritten(copy, damage):
    cfg, data, out = copy
    store = out / "results.sqlite"
    if damage == "garbage":
        store.write_bytes(os.urandom(8192))
    else:
        raw = store.read_bytes()
        store.write_bytes(raw[: len(raw) // 2])
    before = sha(store)
    yaml_before = sha(out / "experiment.yaml")
    for proc in (run_cli("run", cfg, "--out", out, "--data-dir", data), run_cli("report", out),
                 run_cli("run", cfg, "--out", out, "--data-dir", data, "--dry-run")):
        err = assert_one_error(proc, f"{store} is not a readable pefteval results store", "it was left as it is")
        assert "trial(s) planned" not in err  # refused before the sweep writes anything
        assert sha(store) == before and sha(out / "experiment.yaml") == yaml_before
    assert len(list((out / "runs").iterdir())) == 2


@pytest.mark.parametrize("seeds, needle", [("0,0", "seeds must be distinct"),
                                           (str(2**64), "seed"), ("-1", "seed")])
def test_bad_seed_overrides_are_refused_before_training(finished, tmp_path, seeds, needle):
    cfg, data, _ = finished
    proc = run_cli("run", cfg, "--out", tmp_path / "o", "--data-dir", data, "--seeds", seeds)
    assert_one_error(proc, needle)
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- interrupts


def _start(cfg: Path, out: Path, data: Path, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    with open(log, "w") as err:
        return subprocess.Popen([sys.executable, "-m", "pefteval", "run", str(cfg), "--out", str(out),
                                 "--data-dir", str(data)], cwd=REPO_ROOT, env=env or cli_env(),
                                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)


def _wait_for_text(proc: subprocess.Popen, log: Path, text: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while text not in log.read_text():
        if proc.poll() is not None or time.time() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"never saw {text!r}: {log.read_text()[-2000:]}")
        time.sleep(0.02)


@pytest.mark.parametrize("delay", [0.3, 1.5])
def test_ctrl_c_while_the_fork_server_starts_is_one_line(finished, tmp_path, delay):
    # the fork server imports torch, transformers and peft for seconds after the first trial is announced
    cfg, data, _ = finished
    log = tmp_path / "stderr.txt"
    proc = _start(cfg, tmp_path / "out", data, log)
    try:
        _wait_for_text(proc, log, "[trial 1/2]")
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGINT)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    time.sleep(0.5)  # anything a dying child would still print
    text = log.read_text()
    assert rc == 130, text
    after = text.split("(sweep time left ~?)\n", 1)[1]
    assert after.splitlines() == [
        "interrupted: finished trials are saved (0 in this run); run the same command again to resume"], text
    assert "Traceback" not in text and "leaked" not in text


def test_a_killed_sweep_leaves_nothing_in_tmpdir_for_long(finished, tmp_path, request):
    cfg, data, _ = finished
    tmpdir = Path(tempfile.mkdtemp(prefix="pt-", dir="/tmp"))  # short: a socket path holds 107 bytes
    request.addfinalizer(lambda: shutil.rmtree(tmpdir, ignore_errors=True))
    env = {**cli_env(), "TMPDIR": str(tmpdir)}
    log = tmp_path / "stderr.txt"
    proc = _start(cfg, tmp_path / "out", data, log, env)
    _wait_for_text(proc, log, "[trial 1/2] fft sst2 seed 0 | epoch 1/1 done")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    left = [p.name for p in tmpdir.iterdir() if not p.name.startswith("torchinductor")]
    assert left == [f"pefteval-mp-{proc.pid}"]  # multiprocessing's socket directory, inside ours
    assert not [p for p in tmpdir.iterdir() if p.name.startswith("pymp-")]
    again = subprocess.run([sys.executable, "-m", "pefteval", "run", str(cfg), "--out", str(tmp_path / "out"),
                            "--data-dir", str(data)], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    assert [p.name for p in tmpdir.iterdir() if not p.name.startswith("torchinductor")] == []
