"""The paper's scale: a results store of 9,000 complete trials (the size of Table 7's plan), made
from one real record, is reported and its status read (benchmarks/sweep_scale.py times both, and
the dry runs of the paper's largest configs)."""

from __future__ import annotations

import copy
import json
import sqlite3

import pytest
import yaml

from .conftest import run_cli, write_sst2_layout
from .test_resume_safety import write_config

pytestmark = pytest.mark.integration


def test_report_and_status_over_9000_trials(tmp_path, tiny_bert_dir):
    from pefteval.api import plan_run
    from pefteval.store import ResultStore

    data = write_sst2_layout(tmp_path / "data", n_train=32, n_dev=16, n_adv=8)
    one = write_config(tmp_path / "one.yaml", tiny_bert_dir, methods=[{"type": "lora"}])
    proc = run_cli("run", one, "--out", tmp_path / "one", "--data-dir", data)
    assert proc.returncode == 0, proc.stderr[-2000:]
    conn = sqlite3.connect(tmp_path / "one" / "results.sqlite")
    (template,) = [json.loads(r) for (r,) in conn.execute("SELECT record FROM trials")]
    conn.close()
    # 9,000 trials: 3 methods x 3 learning rates x 1,000 seeds
    big_cfg = write_config(tmp_path / "big.yaml", tiny_bert_dir, seeds=list(range(1000)),
                           methods=[{"type": "lora"}, {"type": "lora", "name": "lora_r4", "r": 4},
                                    {"type": "bitfit"}],
                           training={**yaml.safe_load(one.read_text())["training"], "lr": [1e-3, 2e-3, 3e-3]})
    planned = plan_run(big_cfg, str(data), check_data=False)
    assert len(planned.trials) == 9000
    out = tmp_path / "big"
    out.mkdir()
    (out / "experiment.yaml").write_text(yaml.safe_dump(planned.exp.model_dump(mode="json"), sort_keys=False))
    with ResultStore(out / "results.sqlite") as store:
        for trial in planned.trials:
            record = copy.deepcopy(template)
            record["metrics"]["test"]["accuracy"] = (trial.seed % 10) / 10
            record.update(key=trial.key, config=trial.config, run_dir=f"runs/{trial.key}")
            store.put(record)
    report = run_cli("report", out, timeout=300)
    assert report.returncode == 0, report.stderr[-2000:]
    rows = {line.split("|")[1].strip(): line for line in report.stdout.splitlines() if line.startswith("| ")}
    assert {"lora", "lora_r4", "bitfit"} <= set(rows)
    assert "45.00" in rows["lora"]  # the mean test accuracy over the 1,000 seeds: (0 + ... + 0.9) / 10
    status = run_cli("status", out, timeout=300)
    assert status.returncode == 0, status.stderr[-2000:]
    assert "9000 trial(s) planned" in status.stdout and "complete  9000" in status.stdout
    assert "remaining 0" in status.stdout
