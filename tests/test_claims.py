"""`pefteval claims`: each of the paper's claims decided on results directories with known effects
(synthetic per-example scores, increments and sensitivities written where `pefteval run` writes them)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pefteval.errors import UserError
from pefteval.reporting.claims import evaluate_claims, render
from pefteval.store import ResultStore

TRAINING = {"lr": 1e-4, "warmup_ratio": 0.0, "batch_size": 8, "epochs": 1, "max_seq_length": 64,
            "precision": "fp32"}
SEEDS = (0, 1, 2, 3, 4, 5)


def _write_run(out: Path, task: str, method: str, seed: int, splits: dict[str, list[float]], data: dict | None = None,
               increments: dict | None = None, sensitivity: float | None = None) -> dict:
    label = task if not data or data.get("k_shot") is None else f"{task}@k={data['k_shot']}"
    name = f"runs/{label.replace('@', '_')}__{method}__seed{seed}"
    run = out / name
    run.mkdir(parents=True)
    (run / "predictions.json").write_text(json.dumps(
        {split: [{"id": f"x{i}", "prediction": 0, "target": 0, "score": v} for i, v in enumerate(values)]
         for split, values in splits.items()}))
    if increments is not None:
        (run / "increments.json").write_text(json.dumps({"default_module": "enc.layer.5.query", "modules": {
            f"enc.layer.5.query.{t}": v for t, v in increments.items()}}))
    if sensitivity is not None:
        (run / "analysis").mkdir()
        (run / "analysis" / "sensitivity.json").write_text(json.dumps(
            {"delta_loss": {"full": {"0.001": [0.0, 0.0], "0.01": [sensitivity, sensitivity]}}}))
    metrics = {split: {"accuracy": float(np.mean(v)), "n": len(v)} for split, v in splits.items()}
    return {"key": name, "status": "complete", "run_dir": name, "experiment": "claims",
            "config": {"model": "tiny", "task": task, "method_label": method, "method": {"type": method},
                       "training": TRAINING, "data": data or {}, "seed": seed},
            "metrics": metrics, "params": {"trainable": 1, "base": 10, "total": 10, "head": 0}, "train_seconds": 1.0,
            **({"task_kind": "label_words", "k_shot": data["k_shot"]} if data and data.get("k_shot") else {})}


def _scores(rng, rate: float, n: int) -> list[float]:
    return [float(v) for v in (rng.random(n) < rate)]


def make_glue(out: Path, rates: dict[str, dict[str, float]], seeds=SEEDS, n=600) -> Path:
    """SST-2 and RTE trials: per method, its accuracy on the orig (test) and AdvGLUE splits, with an
    increment (std, kurtosis) and a sensitivity per method."""
    rng = np.random.default_rng(0)
    shape = {"fft": (1e-3, 0.0, 1e-3), "lora": (1e-4, 3.0, 3e-3), "bitfit": (2e-4, 2.0, 2e-3)}
    records = []
    for task in ("sst2", "rte"):
        for method, split_rates in rates.items():
            std, kurt, sens = shape[method]
            for seed in seeds:
                splits = {"validation": _scores(rng, 0.8, 50),
                          **{s: _scores(rng, r, n) for s, r in split_rates.items()}}
                tensor = "bias" if method == "bitfit" else "weight"
                incr = {tensor: {"std": std * (1 + 0.05 * rng.normal()), "kurtosis": kurt + 0.1 * rng.normal()}}
                if method == "fft":
                    incr["bias"] = {"std": std * 2, "kurtosis": 0.1 * rng.normal()}
                records.append(_write_run(out, task, method, seed, splits, increments=incr,
                                          sensitivity=sens * (1 + 0.05 * rng.normal())))
    with ResultStore(out / "results.sqlite") as store:
        for rec in records:
            store.put(rec)
    return out


def _by_claim(report) -> dict[str, object]:
    return {d.claim: d for d in report.decisions}


def test_glue_claims_are_decided_by_their_effects(tmp_path):
    out = make_glue(tmp_path / "glue", {"fft": {"test": 0.80, "advglue": 0.60},
                                        "lora": {"test": 0.80, "advglue": 0.45},
                                        "bitfit": {"test": 0.79, "advglue": 0.47}})
    report = evaluate_claims([out])
    got = _by_claim(report)
    # (a) LoRA equals FFT on clean GLUE: non-inferior within the 1-point margin needs a narrow interval;
    # it is not contradicted
    assert got["a"].verdict in ("held", "inconclusive") and got["a"].low < 0 < got["a"].high
    # (b) PEFT loses ~14 points on AdvGLUE: held, effect near -0.14
    assert got["b"].verdict == "held" and got["b"].high < 0
    assert got["b"].estimate == pytest.approx(-0.14, abs=0.03)
    assert "6 seeds" in got["b"].n and "2 test set(s)" in got["b"].n
    # (e) PEFT increments 10x/5x narrower, kurtosis +3/+2 against FFT's: held
    assert got["e"].verdict == "held"
    # (g) PEFT's ΔL 3x / 2x FFT's: held
    assert got["g"].verdict == "held" and got["g"].low > 0
    # what these results cannot test is listed, with its reason
    assert set(report.untestable) == {"c", "d", "f", "h"}
    assert "no SQuAD task" in report.untestable["c"][0]
    text = render(report, "markdown")
    assert "| (b) FFT > PEFT on AdvGLUE | **held** |" in text
    assert "Not testable with these results" in text
    assert json.loads(render(report, "json"))["decisions"]


def test_a_peft_win_on_advglue_contradicts_claim_b(tmp_path):
    out = make_glue(tmp_path / "glue", {"fft": {"test": 0.80, "advglue": 0.45},
                                        "lora": {"test": 0.70, "advglue": 0.60},
                                        "bitfit": {"test": 0.70, "advglue": 0.60}})
    got = _by_claim(evaluate_claims([out]))
    assert got["b"].verdict == "contradicted" and got["b"].low > 0
    assert got["a"].verdict == "contradicted" and got["a"].high < 0  # LoRA 10 points below FFT


def test_few_shot_claim_has_two_parts(tmp_path):
    rng = np.random.default_rng(1)
    out = tmp_path / "fewshot"
    records = []
    for k, rates in ((8, {"fft": 0.60, "lora": 0.75}), (32, {"fft": 0.85, "lora": 0.70})):
        for method, rate in rates.items():
            for seed in SEEDS:
                records.append(_write_run(out, "sst2", method, seed, {"validation": _scores(rng, 0.7, 20),
                                                                       "test": _scores(rng, rate, 500)},
                                          data={"k_shot": k}))
    with ResultStore(out / "results.sqlite") as store:
        for rec in records:
            store.put(rec)
    got = _by_claim(evaluate_claims([out]))
    assert got["f"].verdict == "held"
    assert "k < 20" in got["f"].effect and "k ≥ 20" in got["f"].effect


def test_one_seed_cannot_decide_and_says_so(tmp_path):
    out = make_glue(tmp_path / "one", {"fft": {"test": 0.8, "advglue": 0.6}, "lora": {"test": 0.5, "advglue": 0.3}},
                    seeds=(0,))
    report = evaluate_claims([out])
    assert not report.decisions
    assert "fewer than two seeds" in report.untestable["a"][0]


def test_several_directories_and_bad_input(tmp_path, cli):
    a = make_glue(tmp_path / "a", {"fft": {"test": 0.8, "advglue": 0.6}, "lora": {"test": 0.8, "advglue": 0.5}})
    b = make_glue(tmp_path / "b", {"fft": {"test": 0.8, "advglue": 0.6}, "lora": {"test": 0.8, "advglue": 0.6}})
    report = evaluate_claims([a, b])
    assert sorted(d.source for d in report.decisions if d.claim == "b") == [str(a), str(b)]
    with pytest.raises(UserError, match="does not exist"):
        evaluate_claims([tmp_path / "missing"])
    proc = cli("claims", str(a), str(tmp_path / "missing"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr
    proc = cli("claims", str(a), "--format", "csv")
    assert proc.returncode == 0 and proc.stdout.startswith("claim,text,verdict")
    proc = cli("claims", str(a), "--margin", "-1")
    assert proc.returncode == 2 and "--margin" in proc.stderr
