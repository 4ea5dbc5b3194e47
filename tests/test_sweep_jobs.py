"""Several trials at once on this machine (``--jobs N``): the same records as one at a time with the
same thread count per trial, every trial in its own process, and GPU sets handed out per trial."""

from __future__ import annotations

import json
import re
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


@pytest.mark.parametrize("args, message", [
    (["--executor", "slurm"], "--executor 'slurm': choose local or ray"),
    (["--ray-address", "auto"], "--ray-address needs --executor ray"),
])
def test_bad_executor_options_are_refused_before_anything(tmp_path, tiny_bert_dir, args, message):
    data = write_sst2_layout(tmp_path / "data", n_train=32, n_dev=16, n_adv=8)
    cfg = write_config(tmp_path / "exp.yaml", tiny_bert_dir)
    proc = run_cli("run", cfg, "--out", tmp_path / "out", "--data-dir", data, *args)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "out").exists()


@pytest.mark.integration
def test_on_a_terminal_each_running_trial_has_a_line_above_a_sweep_line(tmp_path, tiny_bert_dir):
    data = write_sst2_layout(tmp_path / "data", n_train=32, n_dev=16, n_adv=8)
    cfg = write_config(tmp_path / "exp.yaml", tiny_bert_dir)  # FFT and LoRA, seed 0
    screen = _run_on_terminal(["run", str(cfg), "--out", str(tmp_path / "out"), "--data-dir", str(data),
                               "--threads", "1", "--jobs", "2"], columns=200)
    # the live block: a line per running trial, then the sweep line, redrawn in place
    assert "sweep: 0/2 done, 0 failed, 2 running" in screen
    assert "\x1b[" in screen and "F\x1b[J" in screen  # cursor up and clear below: the block is redrawn
    assert screen.count("] done in ") == 2
    assert "ran 2 trial(s), skipped 0 already complete, 0 failed" in screen


def redrawn_lines(screen: str) -> list[str]:
    """Every line a terminal's progress display drew to be redrawn: the lines of each block (several
    trials at once), which the next ``ESC[nF ESC[J`` clears (n its line count), and each line after
    ``CR ESC[K`` that the next one overwrites (no newline after it: a final line ends with one)."""
    screen = screen.replace("\r\n", "\n")  # the pty's own translation of a newline
    pieces = re.split(r"\x1b\[(\d+)F\x1b\[J", screen)
    lines = [line for text, count in zip(pieces[::2], pieces[1::2]) for line in text.split("\n")[:-1][-int(count):]]
    lines += [piece for piece in screen.split("\r\x1b[K")[1:] if "\n" not in piece and "\x1b" not in piece]
    return lines


def _run_on_terminal(args: list[str], columns: int) -> str:
    """``pefteval ARGS`` with stderr on a pseudo-terminal of ``columns`` columns; what it showed there."""
    import fcntl
    import os
    import pty
    import struct
    import subprocess
    import sys
    import termios

    from .conftest import REPO_ROOT, cli_env

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    env = cli_env()
    env.pop("COLUMNS", None)  # the terminal's own size, as on a user's terminal
    proc = subprocess.Popen([sys.executable, "-m", "pefteval.cli", *args], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=slave, stdin=subprocess.DEVNULL)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the other end closed: the run is over
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert proc.wait(timeout=600) == 0, b"".join(chunks).decode(errors="replace")[-3000:]
    os.close(master)
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.integration
@pytest.mark.parametrize(("columns", "jobs"), [(80, 1), (40, 2)], ids=["80-columns-one-line", "40-columns-block"])
def test_redrawn_progress_lines_fit_the_terminal(tmp_path, tiny_bert_dir, columns, jobs):
    data = write_sst2_layout(tmp_path / "data", n_train=32, n_dev=16, n_adv=8)
    cfg = write_config(tmp_path / "exp.yaml", tiny_bert_dir)  # FFT and LoRA, seed 0
    screen = _run_on_terminal(["run", str(cfg), "--out", str(tmp_path / "out"), "--data-dir", str(data),
                               "--threads", "1", "--jobs", str(jobs)], columns)
    live = redrawn_lines(screen)
    if jobs == 1:
        assert any(re.match(r"\[(trial )?1/2\] .* left$", line) for line in live), live  # a step line, redrawn
    else:
        # a block of both trials' lines and the sweep's line, redrawn; whether a trial's line shows a step
        # with its time left when the block is drawn depends on how fast the tiny trials run
        assert any(re.match(r"\[(trial )?[12]/2\] ", line) for line in live), live
        assert any(line.startswith("sweep: ") for line in live), live
    too_wide = [line for line in live if len(line) >= columns]
    assert not too_wide, too_wide
    assert screen.count("] done in ") == 2  # the final lines are all there
