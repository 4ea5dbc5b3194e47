"""Planning and reading at the paper's scale: `run --dry-run` of the paper's largest configs, and
`report` and `status` over a results store of 9,000 complete trials.

1. Dry runs, through the command line as a user runs them, of configs/paper/table3_advglue.yaml
   (1,620 trials), table8_param_scaling_advglue.yaml (2,430) and table7_data_scaling.yaml
   (9,000), with a packaged model in place of the hub's (offline: MiniLM for RoBERTa, SmolLM2
   for LLaMA-2). A dry run plans every trial and computes its key, as `run` does.
2. A synthetic store: one real few-shot trial (SmolLM2-135M, LoRA, SST-2 at k = 4) is trained
   and its record copied to every one of the 9,000 trials Table 7 plans (each with its own key,
   config and k, the accuracies shifted per seed), written through pefteval's own ResultStore;
   then `pefteval report` and `pefteval status` read it.

Run from the repository root:  .venv/bin/python benchmarks/sweep_scale.py [--data-dir DIR]
The last line gives the figures.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "configs" / "paper"


def pefteval(*args: str) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pefteval.cli", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    if proc.returncode != 0:
        raise SystemExit(f"pefteval {' '.join(map(str, args))} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - started, proc


def template_record(data_dir: Path, work: Path) -> dict:
    """The record of one real few-shot trial (a minute or two on a 2-core CPU)."""
    cfg = yaml.safe_load((PAPER / "table7_data_scaling.yaml").read_text())
    cfg.update(name="table7_template", model="smollm2-135m", tasks=["sst2"], seeds=[0],
               methods=[m for m in cfg["methods"] if m.get("type") == "lora"][:1])
    cfg["training"] = {**cfg.get("training", {}), "epochs": 1}
    for key in ("lr", "batch_size", "warmup_ratio"):  # one grid point
        if isinstance(cfg["training"].get(key), list):
            cfg["training"][key] = cfg["training"][key][0]
    cfg["data"] = {**cfg.get("data", {}), "k_shot": 4, "max_eval_examples": 40}
    cfg["analyses"] = {"capture": False}
    path = work / "template.yaml"
    path.write_text(yaml.safe_dump(cfg))
    pefteval("run", path, "--out", work / "template", "--data-dir", data_dir)
    import sqlite3

    conn = sqlite3.connect(work / "template" / "results.sqlite")
    try:
        (record,) = [json.loads(r) for (r,) in conn.execute("SELECT record FROM trials WHERE status = 'complete'")]
    finally:
        conn.close()
    return record


def synthetic_store(out: Path, template: dict, data_dir: Path) -> int:
    sys.path.insert(0, str(REPO))
    from pefteval.api import plan_run
    from pefteval.store import ResultStore
    from pefteval.sweep import run_dir_for

    planned = plan_run(PAPER / "table7_data_scaling.yaml", str(data_dir), model="smollm2-135m", check_data=False)
    out.mkdir(parents=True)
    (out / "experiment.yaml").write_text(yaml.safe_dump(planned.exp.model_dump(mode="json"), sort_keys=False))
    with ResultStore(out / "results.sqlite") as store:
        for trial in planned.trials:
            record = copy.deepcopy(template)
            shift = (trial.seed % 7) / 100
            for split in record["metrics"].values():
                for name, value in list(split.items()):
                    if isinstance(value, float) and name != "n":
                        split[name] = min(1.0, max(0.0, value + shift))
            record.update(key=trial.key, config=trial.config, experiment=planned.exp.name,
                          k_shot=trial.resolved.data.k_shot, run_dir=str(run_dir_for(out, trial).relative_to(out)))
            store.put(record)
    return len(planned.trials)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("PEFTEVAL_DATA_DIR",
                                                                             REPO.parent / "shared" / "data")))
    args = parser.parse_args()
    rows = []
    for name, model in (("table3_advglue", "minilm-l6"), ("table8_param_scaling_advglue", "minilm-l6"),
                        ("table7_data_scaling", "smollm2-135m")):
        seconds, proc = pefteval("run", PAPER / f"{name}.yaml", "--dry-run", "--model", model, "--data-dir",
                                 args.data_dir)
        count = int(re.search(r"(\d+) trial\(s\) planned", proc.stdout + proc.stderr).group(1))
        rows.append((name, count, seconds))
        print(f"dry run {name} (--model {model}): {count} trials planned in {seconds:.2f} s", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        template = template_record(args.data_dir, work)
        print(f"template trial trained in {time.perf_counter() - started:.0f} s", flush=True)
        started = time.perf_counter()
        n = synthetic_store(work / "big", template, args.data_dir)
        print(f"synthetic store: {n} complete records written in {time.perf_counter() - started:.1f} s", flush=True)
        report_s, report = pefteval("report", work / "big")
        tables = sum(1 for line in report.stdout.splitlines() if line.startswith("| Method"))
        print(f"report over {n} records: {report_s:.1f} s ({len(report.stdout.splitlines())} lines, "
              f"{tables} table(s))", flush=True)
        status_s, status = pefteval("status", work / "big")
        print(f"status over {n} records: {status_s:.1f} s", flush=True)
        print("\n".join("  " + line for line in status.stdout.splitlines()[:3]))
    dry = ", ".join(f"{name} {count} trials {s:.1f} s" for name, count, s in rows)
    print(f"headline: dry runs {dry}; report over {n} records {report_s:.1f} s, status {status_s:.1f} s")


if __name__ == "__main__":
    main()
