"""The same tiny sweep under each executor, in one run: the local executor one trial at a time
(``--jobs 1``), two at a time (``--jobs 2``), and Ray (``--executor ray``, a local Ray instance
started for the run, as many trials at once as there are cores).

The sweep: the packaged MiniLM encoder on SST-2 (the real release files), FFT and LoRA, three
seeds, 200 training and 200 evaluation examples, one epoch; `--threads 1` for the local runs (Ray
gives each trial one CPU, and so one thread). Each executor runs it into a fresh results
directory. Figures: wall time of the whole `pefteval run`, trials per minute and the ratio to
`--jobs 1`. The per-trial overhead is the sweep's wall time times the trials running at once,
minus the time spent inside the trials (their records' `wall_seconds`: loading, training,
evaluating, saving), per trial. It covers process start, the fork server or the Ray task, and the
driver's bookkeeping.

On 2 cores expect little gain from parallel trials: the point is that the overhead is small.

Run from the repository root:  .venv/bin/python benchmarks/sweep_throughput.py [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def run(config: Path, out: Path, data_dir: Path, *extra: str) -> float:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pefteval.cli", "run", str(config), "--out", str(out), "--data-dir",
                           str(data_dir), *extra], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"pefteval run {' '.join(extra)} failed:\n{proc.stderr[-3000:]}")
    return seconds


def inside(out: Path) -> tuple[int, float]:
    conn = sqlite3.connect(out / "results.sqlite")
    try:
        records = [json.loads(r) for (r,) in conn.execute("SELECT record FROM trials WHERE status = 'complete'")]
    finally:
        conn.close()
    return len(records), sum(r["wall_seconds"] for r in records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("PEFTEVAL_DATA_DIR",
                                                                             REPO.parent / "shared" / "data")))
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        config = work / "sweep.yaml"
        config.write_text(yaml.safe_dump({
            "name": "sweep_throughput", "model": "minilm-l6", "tasks": ["sst2"], "seeds": [0, 1, 2],
            "methods": [{"type": "fft", "training": {"lr": 1e-4}}, {"type": "lora", "r": 8, "training": {"lr": 2e-3}}],
            "training": {"epochs": 1, "batch_size": 32, "max_seq_length": 64},
            "data": {"max_train_examples": 200, "max_eval_examples": 200},
            "analyses": {"capture": False}, "save_weights": False}))
        runs = [("local --jobs 1", ["--threads", "1"], 1), ("local --jobs 2", ["--threads", "1", "--jobs", "2"], 2),
                ("ray (local instance)", ["--executor", "ray"], cores)]
        rows = []
        for name, extra, parallel in runs:
            out = work / name.split()[0] / name.replace(" ", "_")
            seconds = run(config, out, args.data_dir, *extra)
            trials, in_trials = inside(out)
            overhead = (seconds * min(parallel, trials) - in_trials) / trials
            rows.append((name, trials, seconds, trials / seconds * 60, overhead))
            print(f"{name}: {trials} trials in {seconds:.1f} s ({trials / seconds * 60:.1f} trials/min); "
                  f"{in_trials / trials:.1f} s inside each trial, overhead {overhead:.1f} s per trial", flush=True)
    base = rows[0][3]
    print("\n| executor | trials | wall s | trials/min | vs --jobs 1 | overhead s/trial |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, trials, seconds, per_min, overhead in rows:
        print(f"| {name} | {trials} | {seconds:.1f} | {per_min:.1f} | {per_min / base:.2f}x | {overhead:.1f} |")
    print(f"\nheadline: {cores} cores; trials/min " + ", ".join(f"{n} {p:.1f} ({p / base:.2f}x)"
                                                         for n, _, _, p, _ in rows)
          + f"; Ray overhead {rows[2][4]:.1f} s per trial")


if __name__ == "__main__":
    main()
