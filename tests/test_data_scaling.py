"""Prompt-based few-shot trials (data.k_shot) and the data-scaling report: k-shot planning and
samples, the Table-7-shaped table, the crossing point, marginal benefits and their ratio, the
plot, and one tiny k-shot sweep through the CLI on a random LLaMA."""

from __future__ import annotations

import json

import pytest
import yaml

from pefteval.config import parse_config
from pefteval.plan import plan_trials, trial_key
from pefteval.reporting import build_table, render_csv, render_markdown
from pefteval.reporting.datascaling import plot_data_scaling
from pefteval.tasks import Example
from pefteval.tasks.fewshot import fewshot_samples

from .conftest import run_cli, write_sst2_layout


def test_k_shot_list_plans_one_trial_set_per_k_and_keeps_other_keys():
    base = {"name": "x", "model": "m", "tasks": ["sst2"], "seeds": [0, 1], "methods": [{"type": "fft"}]}
    plain = plan_trials(parse_config(base), "local")
    assert "k_shot" not in plain[0].config["data"]  # trials without k_shot keep their keys
    trials = plan_trials(parse_config({**base, "data": {"k_shot": [4, 8]}}), "local")
    assert [(t.k_shot, t.seed) for t in trials] == [(4, 0), (4, 1), (8, 0), (8, 1)]
    assert len({t.key for t in trials}) == 4
    assert "(k=4)" in trials[0].describe()
    with pytest.raises(Exception, match="k_shot"):
        parse_config({**base, "data": {"k_shot": [0]}})


def test_fewshot_samples_are_seeded_nested_and_disjoint():
    pool = [Example(f"{c}-{i}", None, c) for c in range(3) for i in range(40)]
    train4, val4, notes = fewshot_samples(pool, 3, 4, seed=0)
    train8, val8, _ = fewshot_samples(pool, 3, 8, seed=0)
    assert len(train4) == 12 and len(val4) == 12 and not notes
    assert {x.text_a for x in train4} <= {x.text_a for x in train8}  # a larger k adds to the same sample
    assert not {x.text_a for x in train8} & {x.text_a for x in val8}
    assert fewshot_samples(pool, 3, 4, seed=0)[0] == train4
    assert fewshot_samples(pool, 3, 4, seed=1)[0] != train4
    # a small class gives training what is left after validation, with a note
    small = pool + [Example("rare", None, 3), Example("rare2", None, 3), Example("rare3", None, 3)]
    train, val, notes = fewshot_samples(small, 4, 8, seed=0)
    assert sum(x.label == 3 for x in train) == 2 and sum(x.label == 3 for x in val) == 1
    assert notes and "only 2 training examples for k=8" in notes[0]


def ks_record(task, method, k, seed, acc, mtype=None):
    config = {"model": "tiny", "task": task, "method_label": method, "method": {"type": mtype or method},
              "training": {"lr": 1e-3, "warmup_ratio": 0.0, "batch_size": 8, "epochs": 1, "max_seq_length": 64,
                           "precision": "fp32"},
              "data": {"k_shot": k}, "data_source": "local", "seed": seed, "save_weights": False}
    return {"key": trial_key(config), "status": "complete", "config": config, "experiment": "e",
            "metrics": {"validation": {"accuracy": acc, "n": 8}, "test": {"accuracy": acc, "n": 100}},
            "params": {"trainable": 10 if method == "lora" else 100, "base": 100, "total": 100, "head": 0},
            "train_seconds": 1.0, "peak_rss_mb": 10.0, "notes": [], "device": "cpu", "versions": {}}


def test_data_scaling_table_crossing_and_marginal_benefit(tmp_path):
    # LoRA leads at k=4; FFT gains faster and overtakes at k=16
    acc = {("fft", 4): 0.50, ("fft", 8): 0.60, ("fft", 16): 0.80, ("lora", 4): 0.55, ("lora", 8): 0.62,
           ("lora", 16): 0.70}
    recs = [ks_record(task, m, k, s, a + (0.02 if s else 0.0) + (0.1 if task == "trec" else 0.0))
            for (m, k), a in acc.items() for task in ("sst2", "trec") for s in (0, 1)]
    table = build_table(recs)
    ds = table.data_scaling
    assert ds.tasks == ["sst2", "trec"] and ds.ks == [4, 8, 16] and (ds.fft, ds.lora) == ("fft", "lora")
    assert table.tasks == []  # k-shot trials are not rows of the GLUE table
    assert ds.average("fft", 16)[0] == pytest.approx(0.86)
    assert ds.crossing().startswith("FFT overtakes LoRA at k = 16")
    # (0.86 - 0.56) * 100 / 12 = 2.5 points per added example per class; LoRA (0.76 - 0.61) * 100 / 12
    assert ds.overall_marginal("fft") == pytest.approx(2.5)
    assert ds.overall_marginal("lora") == pytest.approx(1.25)
    text = render_markdown(table)
    assert "| fft | 16 | 81.00 (1.41) | 91.00 (1.41) | 86.00 (1.00) |" in text
    assert "Ratio FFT / LoRA of the whole-range marginal benefit (fft / lora): 2.00" in text
    assert "fft: 4→8: +2.500, 8→16: +2.500; whole range +2.500" in text
    assert "lora: 4→8: +1.750, 8→16: +1.000; whole range +1.250" in text
    assert "fft,trec,k=16:accuracy,0.910000,0.014142,2" in render_csv(table)
    png = plot_data_scaling(ds, tmp_path / "data_scaling.png")
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 5000


def test_crossing_wording_when_fft_always_ahead_or_never():
    always = [ks_record("sst2", m, k, 0, a) for m, k, a in
              [("fft", 4, 0.7), ("fft", 8, 0.8), ("lora", 4, 0.6), ("lora", 8, 0.7)]]
    assert build_table(always).data_scaling.crossing().startswith("FFT is ahead of LoRA at every k")
    never = [ks_record("sst2", m, k, 0, a) for m, k, a in
             [("fft", 4, 0.5), ("fft", 8, 0.6), ("lora", 4, 0.6), ("lora", 8, 0.7)]]
    assert build_table(never).data_scaling.crossing() == "FFT does not overtake LoRA in the k range run"


@pytest.mark.integration
def test_k_shot_sweep_through_the_cli(tmp_path, tiny_llama_dir, tiny_bert_dir):
    data = write_sst2_layout(tmp_path / "data", n_train=80, n_dev=24)
    cfg = {"name": "ks", "model": str(tiny_llama_dir), "tasks": ["sst2"], "seeds": [0, 1],
           "training": {"epochs": 2, "batch_size": 4, "lr": 1e-3, "max_seq_length": 96, "precision": "fp32"},
           "data": {"k_shot": [2, 4]},
           "methods": [{"type": "fft"}, {"type": "lora", "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    proc = run_cli("run", tmp_path / "c.yaml", "--out", out, "--data-dir", data)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Data scaling: prompt-based few-shot accuracy against k" in proc.stdout
    assert "| fft | 2 |" in proc.stdout and "| lora | 4 |" in proc.stdout and "Crossing:" in proc.stdout
    assert (out / "data_scaling.png").is_file()
    runs = sorted((out / "runs").iterdir())
    assert len(runs) == 8 and any(r.name.startswith("sst2-k4__lora__seed1") for r in runs)
    result = json.loads(next(r for r in runs if r.name.startswith("sst2-k4__fft__seed0")).joinpath("result.json")
                        .read_text())
    assert result["k_shot"] == 4 and result["train_examples"] == 8 and result["metrics"]["test"]["n"] == 24
    k2 = next(r for r in runs if r.name.startswith("sst2-k2__fft__seed0"))
    predictions = json.loads(k2.joinpath("predictions.json").read_text())
    assert set(predictions) == {"validation", "test"} and len(predictions["test"]) == 24
    assert set(predictions["test"][0]) == {"id", "prediction", "target", "score"}
    # the k-shot training sample is saved beside the predictions, and is what the trial's task draws
    # again from the trial's data settings and seed
    from pefteval.config import TrialConfig
    from pefteval.tasks import get_task

    saved = json.loads(k2.joinpath("train_sample.json").read_text())
    assert sorted(x["label"] for x in saved) == [0, 0, 1, 1]
    assert {x["label_name"] for x in saved} == {"negative", "positive"}
    trial = TrialConfig.from_json(json.loads(k2.joinpath("trial.json").read_text()))
    sample = get_task(trial.task).splits(data, trial.data, trial.seed).train
    assert [(x.text_a, x.label) for x in sample] == [(x["text"], x["label"]) for x in saved]
    assert json.loads(k2.joinpath("result.json").read_text())["train_examples"] == len(sample)
    # an encoder cannot score label words
    cfg["model"] = str(tiny_bert_dir)
    (tmp_path / "e.yaml").write_text(yaml.safe_dump(cfg))
    proc = run_cli("run", tmp_path / "e.yaml", "--out", tmp_path / "out2", "--data-dir", data, "--seeds", "0",
                   "--methods", "fft")
    assert proc.returncode == 1
    assert "decoder language model" in proc.stdout + proc.stderr
