"""Results store, atomic writes, trial planning and the comparison table."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest

from pefteval.config import parse_config
from pefteval.errors import UserError
from pefteval.files import atomic_write_json, atomic_write_text
from pefteval.metrics import accuracy, mean_std
from pefteval.plan import plan_trials, trial_key
from pefteval.reporting import build_table, render, render_csv, render_latex, render_markdown
from pefteval.store import ResultStore

TRAINING = {"epochs": 3, "warmup_ratio": 0.06, "batch_size": 32, "max_seq_length": 128, "precision": "bf16",
            "weight_decay": 0.0, "max_grad_norm": 1.0, "group_by_length": True, "eval_batch_size": 128}
TOTAL = 1_000_000


def record(task, method, lr, seed, val, test, adv, trainable=TOTAL, status="complete", secs=10.0, data=None):
    config = {"model": "tiny", "task": task, "method_label": method, "method": {"type": method},
              "training": {**TRAINING, "lr": lr}, "data": data or {"max_train_examples": None},
              "data_source": "local", "seed": seed, "save_weights": True}
    rec = {"key": trial_key(config), "status": status, "config": config, "experiment": "exp",
           "metrics": {"validation": {"accuracy": val, "n": 100}, "test": {"accuracy": test, "n": 100},
                       "advglue": {"accuracy": adv, "n": 50}},
           "params": {"trainable": trainable, "base": TOTAL, "total": TOTAL, "head": 66},
           "train_seconds": secs, "peak_rss_mb": 500.0, "notes": [f"note for {task}"],
           "device": "cpu (test)", "versions": {"torch": "x"}}
    if status != "complete":
        rec = {"key": rec["key"], "status": status, "config": config, "error": "boom"}
    return rec


def fake_records():
    return [
        # fft on sst2: lr 1e-5 mean validation 0.82, lr 2e-5 mean 0.87 -> 2e-5 selected
        record("sst2", "fft", 1e-5, 0, 0.80, 0.99, 0.99, secs=10),
        record("sst2", "fft", 1e-5, 1, 0.84, 0.99, 0.99, secs=10),
        record("sst2", "fft", 2e-5, 0, 0.86, 0.90, 0.40, secs=20),
        record("sst2", "fft", 2e-5, 1, 0.88, 0.92, 0.50, secs=30),
        # lora on sst2: lr 5e-4 has the best single validation (0.95) but lr 1e-4 the best mean
        record("sst2", "lora", 1e-4, 0, 0.80, 0.85, 0.30, trainable=2_114, secs=5),
        record("sst2", "lora", 1e-4, 1, 0.80, 0.87, 0.34, trainable=2_114, secs=5),
        record("sst2", "lora", 5e-4, 0, 0.95, 0.10, 0.10, trainable=2_114, secs=5),
        record("sst2", "lora", 5e-4, 1, 0.60, 0.10, 0.10, trainable=2_114, secs=5),
        # rte: one seed each (std undefined)
        record("rte", "fft", 2e-5, 0, 0.70, 0.60, 0.30, secs=40),
        record("rte", "lora", 1e-4, 0, 0.65, 0.55, 0.25, trainable=2_114, secs=5),
        # failed trials are left out of the table
        record("sst2", "fft", 3e-5, 0, 0, 0, 0, status="failed"),
    ]


# ---------------------------------------------------------------- metrics


def test_accuracy_and_mean_std():
    assert accuracy([1, 0, 1, 1], [1, 1, 1, 0]) == 0.5
    assert math.isnan(accuracy([], []))
    with pytest.raises(ValueError):
        accuracy([1], [1, 0])
    mean, std = mean_std([0.90, 0.92])
    assert mean == pytest.approx(0.91) and std == pytest.approx(math.sqrt(2 * 0.01**2))  # sample std, n-1
    mean, std = mean_std([0.5])
    assert mean == 0.5 and math.isnan(std)
    assert all(math.isnan(v) for v in mean_std([]))


# ---------------------------------------------------------------- store


def test_store_put_get_complete_keys(tmp_path):
    recs = fake_records()
    path = tmp_path / "sub" / "results.sqlite"
    with ResultStore(path) as store:
        for r in recs:
            store.put(r)
        assert store.get(recs[0]["key"]) == recs[0]
        assert store.get("no-such-key") is None
        failed_key = recs[-1]["key"]
        assert failed_key not in store.complete_keys()
        assert store.complete_keys() == {r["key"] for r in recs[:-1]}
        assert [r["key"] for r in store.records()] == [r["key"] for r in recs[:-1]]
        assert [r["key"] for r in store.records("failed")] == [failed_key]
        assert len(list(store.records(None))) == len(recs)
    # persisted; a failed trial that is redone successfully replaces its row
    with ResultStore(path) as store:
        assert len(store.complete_keys()) == len(recs) - 1
        redone = record("sst2", "fft", 3e-5, 0, 0.5, 0.5, 0.5)
        assert redone["key"] == failed_key
        store.put(redone)
        assert failed_key in store.complete_keys()
        assert list(store.records("failed")) == []
        assert store.get(failed_key)["metrics"]["test"]["accuracy"] == 0.5


def test_store_rejects_unknown_status(tmp_path):
    import sqlite3

    with ResultStore(tmp_path / "r.sqlite") as store:
        with pytest.raises(sqlite3.IntegrityError):
            store.put({**record("sst2", "fft", 1e-5, 0, 1, 1, 1), "status": "running"})
        assert store.complete_keys() == set()


def test_atomic_write_leaves_no_tmp_file(tmp_path):
    target = tmp_path / "result.json"
    atomic_write_json(target, {"b": 1, "a": [1, 2]})
    assert json.loads(target.read_text()) == {"a": [1, 2], "b": 1}
    atomic_write_json(target, {"c": 3})  # overwrite
    assert json.loads(target.read_text()) == {"c": 3}
    atomic_write_text(tmp_path / "report.md", "hello\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md", "result.json"]
    assert (tmp_path / "report.md").read_text() == "hello\n"


# ---------------------------------------------------------------- report


def test_build_table_selects_by_mean_validation():
    table = build_table(fake_records(), failed=1)
    assert table.tasks == ["sst2", "rte"]
    assert [r.method for r in table.rows] == ["fft", "lora"]
    fft, lora = table.rows
    cell = fft.cells["sst2"]
    assert cell.hp["lr"] == 2e-5 and cell.seeds == 2
    assert cell.validation == pytest.approx(0.87)
    assert cell.orig[0] == pytest.approx(0.91) and cell.orig[1] == pytest.approx(0.0141421356, rel=1e-6)
    assert cell.adv[0] == pytest.approx(0.45) and cell.adv[1] == pytest.approx(0.0707106781, rel=1e-6)
    lcell = lora.cells["sst2"]
    assert lcell.hp["lr"] == 1e-4  # best mean (0.80), not best single run (0.95 at 5e-4)
    assert lcell.orig[0] == pytest.approx(0.86) and lcell.adv[0] == pytest.approx(0.32)
    assert fft.cells["rte"].seeds == 1 and math.isnan(fft.cells["rte"].orig[1])
    # per-method stats come from the selected trials only
    assert fft.train_seconds == [20, 30, 40]
    assert lora.trainable == [2_114] * 3
    assert table.averages(fft) == (pytest.approx((0.91 + 0.60) / 2), pytest.approx((0.45 + 0.30) / 2))
    assert any("1 trial(s) failed" in n for n in table.notes)
    assert "note for rte" in table.notes and "note for sst2" in table.notes


def test_selection_ties_go_to_earliest_grid_point():
    recs = [record("rte", "fft", 1e-5, 0, 0.7, 0.1, 0.1), record("rte", "fft", 2e-5, 0, 0.7, 0.2, 0.2)]
    assert build_table(recs).rows[0].cells["rte"].hp["lr"] == 1e-5


def test_missing_task_gives_dash_and_no_average():
    recs = [record("sst2", "fft", 1e-5, 0, 0.8, 0.8, 0.4), record("rte", "fft", 1e-5, 0, 0.7, 0.6, 0.3),
            record("sst2", "bitfit", 1e-3, 0, 0.7, 0.7, 0.2)]
    table = build_table(recs)
    bitfit = table.rows[1]
    assert all(math.isnan(v) for v in table.averages(bitfit))
    line = [ln for ln in render_markdown(table).splitlines() if ln.startswith("| bitfit")][0]
    assert line.split(" | ")[3:5] == ["–", "–"]  # RTE orig/adv


def test_render_markdown_numbers():
    text = render_markdown(build_table(fake_records(), failed=1))
    lines = text.splitlines()
    assert lines[0] == ("| Method | SST-2 orig | SST-2 adv | RTE orig | RTE adv | Avg orig | Avg adv | Trainable | % "
                        "| Time (s) | Peak MB |")
    assert lines[2] == ("| fft | 91.00 (1.41) | 45.00 (7.07) | 60.00 (–) | 30.00 (–) | 75.50 | 37.50 | 1,000,000 "
                        "| 100.000 | 30.0 | 500 |")
    assert lines[3] == ("| lora | 86.00 (1.41) | 32.00 (2.83) | 55.00 (–) | 25.00 (–) | 70.50 | 28.50 | 2,114 "
                        "| 0.211 | 5.0 | 500 |")
    assert "- fft / SST-2: lr 2e-05, warmup 0.06, batch 32; validation 87.00; 2 seed(s)" in lines
    assert "- lora / SST-2: lr 0.0001, warmup 0.06, batch 32; validation 80.00; 2 seed(s)" in lines
    assert any("seeds [0, 1]" in ln for ln in lines)


def test_cuda_trials_add_a_gpu_memory_column():
    # records as a CUDA trial writes them: the caching allocator's peaks beside the process RSS
    records = fake_records()
    for rec in records:
        if rec["status"] == "complete":
            rec.update(peak_device_allocated_mb=1200.0 if rec["config"]["seed"] else 1000.0,
                       peak_device_reserved_mb=2000.0)
    lines = render_markdown(build_table(records, failed=1)).splitlines()
    assert lines[0].endswith("| Time (s) | Peak MB | GPU MB |")
    assert lines[2].endswith("| 30.0 | 500 | 1067/2000 |")  # fft: seeds 0 and 1 on SST-2, seed 0 on RTE
    assert any("'GPU MB' is the mean peak device memory PyTorch allocated / reserved" in ln for ln in lines)
    rows = list(csv.reader(io.StringIO(render_csv(build_table(records, failed=1)))))
    assert rows[0][-3:] == ["mean_peak_rss_mb", "mean_peak_device_allocated_mb", "mean_peak_device_reserved_mb"]
    assert rows[1][-2:] == ["1067", "2000"]
    # a CPU-only store keeps its one memory column
    assert render_markdown(build_table(fake_records(), failed=1)).splitlines()[0].endswith("| Peak MB |")


def test_render_csv_numbers():
    table = build_table(fake_records())
    rows = list(csv.DictReader(io.StringIO(render_csv(table))))
    assert len(rows) == 2 * 2 * 2  # methods x tasks x (orig, adv)
    by = {(r["method"], r["task"], r["split"]): r for r in rows}
    fft = by[("fft", "sst2", "orig")]
    assert (fft["mean"], fft["std"], fft["seeds"], fft["lr"]) == ("0.910000", "0.014142", "2", "2e-05")
    assert fft["trainable_params"] == "1000000" and fft["trainable_pct"] == "100.000"
    assert fft["mean_train_seconds"] == "30.00"
    assert by[("fft", "sst2", "adv")]["mean"] == "0.450000" and by[("fft", "sst2", "adv")]["std"] == "0.070711"
    assert by[("lora", "rte", "orig")]["std"] == ""  # one seed: no std
    assert by[("lora", "sst2", "orig")]["lr"] == "0.0001"


def test_render_latex_numbers():
    tex = render_latex(build_table(fake_records()))
    assert tex.startswith("\\begin{table}") and "\\end{tabular}" in tex
    assert "\\begin{tabular}{lrrrrrrrrrr}" in tex
    assert ("Method & SST-2 orig & SST-2 adv & RTE orig & RTE adv & Avg orig & Avg adv & Trainable & \\% "
            "& Time (s) & Peak MB \\\\") in tex
    assert ("fft & 91.00 (1.41) & 45.00 (7.07) & 60.00 (--) & 30.00 (--) & 75.50 & 37.50 & 1,000,000 & 100.000 "
            "& 30.0 & 500 \\\\") in tex
    assert "lora & 86.00 (1.41)" in tex
    assert render(build_table(fake_records()), "latex") == tex


def test_latex_escapes_method_names():
    tex = render_latex(build_table([record("rte", "lora_r8&x", 1e-4, 0, 0.5, 0.5, 0.5)]))
    assert "lora\\_r8\\&x &" in tex


def test_report_does_not_pool_trials_of_different_experiments():
    # the same seed, task, method and training settings, but a different data config (e.g. a quick run with
    # --max-train-examples 32 and a full run written to the same OUT): these are not two seeds of one setting
    quick = record("sst2", "fft", 2e-5, 0, 0.6, 0.55, 0.5, data={"max_train_examples": 32})
    full = record("sst2", "fft", 2e-5, 0, 0.9, 0.91, 0.4, data={"max_train_examples": None})
    assert quick["key"] != full["key"]
    cell = build_table([quick, full]).rows[0].cells["sst2"]
    assert cell.seeds == 1


# ---------------------------------------------------------------- planning


def experiment(**extra):
    cfg = {"name": "e", "model": "tiny", "tasks": ["sst2", "rte"], "seeds": [0, 42, 421],
           "training": {"lr": [1e-5, 2e-5, 3e-5], "warmup_ratio": [0.0, 0.06]},
           "methods": [{"type": "fft"}, {"type": "lora", "training": {"lr": [1e-4, 5e-4], "warmup_ratio": 0.0}},
                       {"type": "bitfit", "name": "bias", "training": {"lr": 1e-3, "warmup_ratio": 0.1}}]}
    cfg.update(extra)
    return parse_config(cfg)


def test_plan_trials_counts_and_keys():
    exp = experiment()
    trials = plan_trials(exp, "local")
    # tasks x (fft 3x2 + lora 2x1 + bitfit 1) x seeds
    assert len(trials) == 2 * (6 + 2 + 1) * 3 == 54
    keys = [t.key for t in trials]
    assert len(set(keys)) == 54 and all(len(k) == 16 and int(k, 16) >= 0 for k in keys)
    assert [t.key for t in plan_trials(experiment(), "local")] == keys  # stable across runs
    assert Counter_of(trials, "method") == {"fft": 36, "lora": 12, "bias": 6}
    assert Counter_of(trials, "task") == {"sst2": 27, "rte": 27}
    lora = [t for t in trials if t.method == "lora"]
    assert {t.config["training"]["lr"] for t in lora} == {1e-4, 5e-4}
    assert all(t.config["training"]["warmup_ratio"] == 0.0 for t in lora)
    assert trials[0].config["method"] == {"type": "fft", "top_k_layers": None}
    assert "fft on sst2, seed 0, lr 1e-05, warmup 0, batch 32" == trials[0].describe()
    # the hash covers the data source
    assert not set(keys) & {t.key for t in plan_trials(exp, "hub")}


def Counter_of(trials, attr):
    from collections import Counter

    return dict(Counter(getattr(t, attr) for t in trials))


def test_trial_key_is_canonical():
    a = {"x": 1, "y": {"b": 2, "a": [1, 2]}}
    b = {"y": {"a": [1, 2], "b": 2}, "x": 1}
    assert trial_key(a) == trial_key(b)
    assert trial_key(a) != trial_key({**a, "x": 2})


def test_plan_filters_and_seed_override():
    exp = experiment()
    only = plan_trials(exp, "local", methods=["lora", "bias"], seeds=[7])
    assert len(only) == 2 * (2 + 1) * 1
    assert {t.method for t in only} == {"lora", "bias"} and {t.seed for t in only} == {7}
    with pytest.raises(UserError) as info:
        plan_trials(exp, "local", methods=["lora", "lorra"])
    assert "lorra" in str(info.value) and "fft, lora, bias" in str(info.value)


def test_plan_uses_per_task_data():
    exp = experiment(task_data={"rte": {"max_train_examples": 10}}, data={"max_train_examples": 100})
    trials = plan_trials(exp, "local")
    assert {t.config["data"]["max_train_examples"] for t in trials if t.task == "rte"} == {10}
    assert {t.config["data"]["max_train_examples"] for t in trials if t.task == "sst2"} == {100}
