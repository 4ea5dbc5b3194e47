"""Several trials at once on this machine (``--jobs N``): the same records as one at a time with the
same thread count per trial, every trial in its own process, and GPU sets handed out per trial."""

from __future__ import annotations

import json
import sqlite3

import pytest

from .conftest import run_cli, write_sst2_layout
from .test_resume_safety import write_config


def _records(out) -> dict[str, dict]:
    conn = sqlite3.connect(out / "results.sqlite")
    try:
        return {key: json.loads(r) for key, r in conn.execute("SELECT key, record FROM trials")}
    finally:
        conn.close()


@pytest.mark.integration
def test_two_jobs_give_the_records_of_one(tmp_path, tiny_bert_dir):
    data = write_sst2_layout(tmp_path / "data", n_train=32, n_dev=16, n_adv=8)
    cfg = write_config(tmp_path / "exp.yaml", tiny_bert_dir, seeds=[0, 1])
    one = run_cli("run", cfg, "--out", tmp_path / "one", "--data-dir", data, "--threads", "1")
    assert one.returncode == 0, one.stderr[-3000:]
    two = run_cli("run", cfg, "--out", tmp_path / "two", "--data-dir", data, "--threads", "1", "--jobs", "2")
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = _records(tmp_path / "one"), _records(tmp_path / "two")
    assert len(a) == 4 and set(a) == set(b)
    for key in a:
        assert b[key]["status"] == a[key]["status"] == "complete"
        assert b[key]["metrics"] == a[key]["metrics"]
        assert b[key]["curve"] == a[key]["curve"]
        assert b[key]["threads"] == a[key]["threads"] == 1
    assert "ran 4 trial(s), skipped 0 already complete, 0 failed" in two.stderr
    # a line per event, each naming its trial; the trials overlapped in time
    lines = two.stderr.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("[trial ") and "(sweep time left" in line]
    done = [i for i, line in enumerate(lines) if " done in " in line]
    assert len(starts) == 4 and len(done) == 4
    assert starts[1] < done[0]  # the second trial started before the first ended
    # the report is the same, but for the timings and memory
    assert _scores(two.stdout) == _scores(one.stdout) and _scores(one.stdout)


def _scores(report: str) -> list[list[str]]:
    """The report's table rows up to its timing columns."""
    rows = [line.split("|") for line in report.splitlines() if line.startswith("| ")]
    width = rows[0].index(" Time (s) ")
    return [row[:width] for row in rows]


def test_gpu_sets_per_trial():
    from pefteval.errors import UserError
    from pefteval.sweep import gpu_slots

    gpus = [str(i) for i in range(8)]
    assert gpu_slots(8, 1, gpus) == gpus
    assert gpu_slots(4, 2, gpus) == ["0,1", "2,3", "4,5", "6,7"]
    assert gpu_slots(2, 2, ["3", "5", "6", "7"]) == ["3,5", "6,7"]  # what CUDA_VISIBLE_DEVICES allowed
    assert gpu_slots(2, 1, []) is None  # no GPU: trials share the CPU
    assert gpu_slots(4, 0, gpus) is None
    with pytest.raises(UserError, match="--jobs 5 with 2 GPU.s. per trial needs 10 GPUs, and 8 are here"):
        gpu_slots(5, 2, gpus)


def test_jobs_with_more_gpus_than_there_are_is_refused(tmp_path, tiny_bert_dir, monkeypatch):
    data = write_sst2_layout(tmp_path / "data", n_train=32, n_dev=16, n_adv=8)
    cfg = write_config(tmp_path / "exp.yaml", tiny_bert_dir, resources={"gpus_per_trial": 2})
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    proc = run_cli("run", cfg, "--out", tmp_path / "out", "--data-dir", data, "--jobs", "2")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "--jobs 2 with 2 GPU(s) per trial needs 4 GPUs, and 2 are here (0,1)" in proc.stderr
    assert "Traceback" not in proc.stderr
