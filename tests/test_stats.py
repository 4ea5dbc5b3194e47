"""The significance test (pefteval.stats): known answers, calibration by simulation, Holm, power, and
the report's significance table built from per-example scores."""

from __future__ import annotations

import csv
import io
import math

import numpy as np
import pytest
from scipy import stats as sps

from pefteval import stats
from pefteval.reporting import build_table, render_markdown
from pefteval.reporting.significance import build_significance, render_csv, scores_from
from pefteval.selection import select_grid_points


# Monte Carlo slack: three standard errors of a 5% rate over the replicates
def slack(reps: int, rate: float = stats.ALPHA) -> float:
    return 3 * math.sqrt(rate * (1 - rate) / reps)


@pytest.mark.parametrize("paired", [True, False])
@pytest.mark.parametrize("seed_sd", [0.0, 0.3, 1.0])
def test_no_difference_is_found_at_most_at_the_stated_rate(paired, seed_sd):
    """Where the two methods are the same (Δ = 0), the test rejects at most 5% of the time: seeds'
    spread none, moderate (the regime where Satterthwaite's df over-rejects), dominant."""
    reps = 1200
    result = stats.simulate(0.0, seeds=3, examples=300, reps=reps, paired_seeds=paired, seed_sd=seed_sd,
                            rng_seed=11)
    assert result["true_difference"] == 0.0
    assert result["reject_rate"] <= stats.ALPHA + slack(reps)
    assert result["coverage"] >= 1 - stats.ALPHA - slack(reps)


@pytest.mark.parametrize("paired", [True, False])
def test_a_large_difference_is_found(paired):
    """A difference of ~11 accuracy points with eight seeds per method is detected nearly always,
    in the right direction, and the interval covers the true difference at its nominal rate."""
    result = stats.simulate(0.8, seeds=8, examples=300, reps=200, paired_seeds=paired, rng_seed=3)
    assert 0.10 < result["true_difference"] < 0.13
    assert result["reject_rate"] >= 0.95
    assert result["coverage"] >= 0.90


def test_three_seeds_leave_a_moderate_difference_undecided_often():
    """The same ~11 points with three seeds: the seeds' two degrees of freedom leave it undetected about
    half the time (the power analysis is what the evidence configs are sized from)."""
    result = stats.simulate(0.8, seeds=3, examples=300, reps=300, rng_seed=5)
    assert 0.3 < result["reject_rate"] < 0.75


def test_paired_test_without_example_spread_is_the_paired_t_test_of_seed_means():
    rng = np.random.default_rng(0)
    base = (rng.random((4, 50)) < 0.7).astype(float)
    shift = np.array([0.02, 0.05, -0.01, 0.04])
    treated = base + shift[:, None]  # every example moves by its seed's shift: no example effect
    diff = stats.two_way_test(base, treated, paired_seeds=True)
    ref = sps.ttest_rel(treated.mean(axis=1), base.mean(axis=1))
    assert diff.estimate == pytest.approx(shift.mean())
    assert diff.df == 3
    assert diff.p == pytest.approx(ref.pvalue)
    half = sps.t.ppf(0.975, 3) * diff.se
    assert (diff.low, diff.high) == pytest.approx((shift.mean() - half, shift.mean() + half))


def test_example_spread_widens_the_interval_beyond_the_seeds():
    """Seeds that agree perfectly leave the test sample's spread: the interval is the examples'."""
    rng = np.random.default_rng(1)
    per_example = rng.normal(0.05, 0.3, 400)
    base = np.zeros((3, 400))
    treated = np.tile(per_example, (3, 1))
    diff = stats.two_way_test(base, treated, paired_seeds=True)
    # seeds identical: Var(seed means) = 0, σ²_b / n = var(per_example) / n
    assert diff.se == pytest.approx(per_example.std(ddof=1) / math.sqrt(400))
    assert diff.components.seed == pytest.approx(0.0, abs=1e-20)


def test_bad_shapes_and_single_seeds_are_errors():
    with pytest.raises(ValueError, match="two seeds"):
        stats.two_way_test(np.ones((1, 5)), np.ones((3, 5)), paired_seeds=False)
    with pytest.raises(ValueError, match="same examples"):
        stats.two_way_test(np.ones((3, 5)), np.ones((3, 4)), paired_seeds=True)
    with pytest.raises(ValueError, match="finite"):
        stats.two_way_test(np.full((3, 5), np.nan), np.ones((3, 5)), paired_seeds=True)


def test_identical_scores_have_p_one_and_a_constant_shift_p_zero():
    a = np.tile([1.0, 0.0, 1.0], (3, 1))
    same = stats.two_way_test(a, a.copy(), paired_seeds=True)
    assert (same.estimate, same.p) == (0.0, 1.0)
    shifted = stats.two_way_test(a, a + 0.1, paired_seeds=True)
    assert shifted.p < 1e-12 and shifted.estimate == pytest.approx(0.1)


def test_holm_matches_the_hand_computed_adjustment():
    adjusted = stats.holm([0.01, 0.04, 0.03, 0.5, float("nan")])
    assert adjusted[:4] == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert math.isnan(adjusted[4])
    assert stats.holm([0.3, 0.6]) == pytest.approx([0.6, 0.6])


def test_bootstrap_interval_brackets_the_estimate_and_is_reproducible():
    rng = np.random.default_rng(2)
    base = (rng.random((5, 200)) < 0.7).astype(float)
    treated = (rng.random((5, 200)) < 0.8).astype(float)
    boot = stats.hierarchical_bootstrap(base, treated, paired_seeds=True, draws=500, seed=4)
    estimate = treated.mean() - base.mean()
    assert boot.low < estimate < boot.high
    assert boot == stats.hierarchical_bootstrap(base, treated, paired_seeds=True, draws=500, seed=4)
    assert boot.p < 0.05


def test_power_says_what_would_detect_the_difference():
    rng = np.random.default_rng(3)
    base = (rng.random((3, 300)) < 0.75).astype(float) + rng.normal(0, 0.03, (3, 1))
    treated = (rng.random((3, 300)) < 0.72).astype(float) + rng.normal(0, 0.03, (3, 1))
    diff = stats.two_way_test(base, treated, paired_seeds=True)
    pw = stats.power(diff)
    # the MDE is (t_.975 + t_.80) standard errors at the design's df
    assert pw.mde == pytest.approx((sps.t.ppf(0.975, 2) + sps.t.ppf(0.8, 2)) * diff.se)
    if abs(diff.estimate) < pw.mde:
        assert pw.seeds_needed is not None and pw.seeds_needed > 3
    # a design with the planned seeds detects the observed difference; one seed fewer does not
    comps = diff.components
    for seeds, detects in ((pw.seeds_needed, True), (pw.seeds_needed - 1, False)):
        df = comps.df(seeds)
        mde = (sps.t.ppf(0.975, df) + sps.t.ppf(0.8, df)) * math.sqrt(comps.variance(seeds, 300))
        assert bool(mde <= abs(diff.estimate)) is detects


def test_examples_cannot_beat_the_seeds_spread():
    """When the seeds disagree far more than the test sample varies, no test set size detects a
    small difference: the power analysis says so instead of naming a number."""
    base = np.array([[0.9] * 100, [0.7] * 100, [0.8] * 100])
    treated = base + np.array([[0.05], [-0.04], [0.02]])
    diff = stats.two_way_test(base, treated, paired_seeds=True)
    assert stats.power(diff).examples_needed is None


# ---------------------------------------------------------------- the report's table

def _record(task: str, method: str, seed: int, run_dir: str, acc: float) -> dict:
    return {"key": run_dir, "status": "complete", "run_dir": run_dir,
            "config": {"model": "tiny", "task": task, "method_label": method, "method": {"type": method},
                       "training": {"lr": 1e-4, "warmup_ratio": 0.0, "batch_size": 8, "epochs": 1,
                                    "max_seq_length": 64, "precision": "fp32"},
                       "data": {}, "seed": seed},
            "metrics": {"validation": {"accuracy": acc}, "test": {"accuracy": acc}, "advglue": {"accuracy": acc}},
            "params": {"trainable": 10, "base": 100, "total": 100, "head": 0}, "train_seconds": 1.0}


def _synthetic(rng: np.random.Generator, rates: dict[str, float], seeds=(0, 1, 2, 3, 4), n=400):
    """Records and per-example scores of methods with the given accuracies on SST-2 (test, advglue)."""
    records, scores = [], {}
    for method, rate in rates.items():
        for seed in seeds:
            name = f"sst2__{method}__seed{seed}"
            shift = rng.normal(0, 0.01)
            per = {split: {f"ex{i}": float(rng.random() < rate + shift) for i in range(n)}
                   for split in ("validation", "test", "advglue")}
            scores[name] = per
            records.append(_record("sst2", method, seed, name, rate))
    return records, scores


def test_the_report_marks_a_large_loss_and_leaves_no_difference_undecided(tmp_path):
    rng = np.random.default_rng(7)
    records, scores = _synthetic(rng, {"fft": 0.85, "lora": 0.85, "bitfit": 0.60})
    table = build_table(records, scores_of=lambda rec: scores[rec["run_dir"]])
    sig = table.significance
    bitfit = sig.find("sst2", "test", "bitfit")
    lora = sig.find("sst2", "test", "lora")
    assert bitfit.verdict == "worse" and bitfit.diff.high < 0 and bitfit.p_holm < 0.05
    assert lora.verdict == "same" and lora.diff.low < 0 < lora.diff.high
    assert lora.power is not None and lora.power.mde > abs(lora.diff.estimate)
    assert bitfit.diff.paired_seeds and bitfit.diff.seeds == (5, 5) and bitfit.diff.examples == 400
    # four comparisons (2 methods × 2 splits) adjusted together: Holm's p is at least the raw p
    assert len(sig.rows) == 4 and all(r.p_holm >= r.diff.p for r in sig.rows)
    text = render_markdown(table)
    assert "### Significance against FFT" in text
    bitfit_line = next(line for line in text.splitlines() if line.startswith("| bitfit |"))
    assert bitfit_line.count("▼") == 2  # orig and adv cells
    assert "two-way (seeds × test examples)" in text
    rows = list(csv.DictReader(io.StringIO(render_csv(sig))))
    assert {r["verdict"] for r in rows if r["method"] == "bitfit"} == {"FFT better"}
    assert float(next(r for r in rows if r["method"] == "bitfit")["difference"]) == pytest.approx(
        bitfit.diff.estimate)


def test_one_seed_is_reported_as_untestable():
    rng = np.random.default_rng(8)
    records, scores = _synthetic(rng, {"fft": 0.8, "lora": 0.8}, seeds=(0,))
    sel = select_grid_points(records)
    sig = build_significance(sel, {"sst2": "classification"}, lambda rec: scores[rec["run_dir"]])
    row = sig.find("sst2", "test", "lora")
    assert row.diff is None and "one seed" in row.reason and row.verdict == ""


def test_scores_are_read_from_predictions_json(tmp_path):
    run = tmp_path / "runs" / "a"
    run.mkdir(parents=True)
    (run / "predictions.json").write_text(
        '{"test": [{"id": "x", "prediction": 1, "target": 1, "score": 1.0},'
        ' {"id": "y", "prediction": 0, "target": 1, "score": 0.0}, {"id": "z", "prediction": "", "score": null}],'
        ' "dup": [{"id": "q", "score": 1}, {"id": "q", "score": 0}]}')
    scores = scores_from(tmp_path)({"run_dir": "runs/a"})
    assert scores["test"] == {"x": 1.0, "y": 0.0, "z": None}
    assert scores["dup"] == {"0": 1.0, "1": 0.0}  # repeated ids: keyed by position
    assert scores_from(tmp_path)({"run_dir": "runs/missing"}) == {}


def test_mean_interval_counts_seeds_and_examples():
    rng = np.random.default_rng(9)
    scores = (rng.random((4, 300)) < 0.7).astype(float) + rng.normal(0, 0.05, (4, 1))
    arm = stats.mean_interval(scores)
    rows = scores.mean(axis=1)
    # at least as wide as the seeds' own t interval over the seed means
    seeds_only = sps.t.ppf(0.975, 3) * rows.std(ddof=1) / 2
    assert arm.mean == pytest.approx(scores.mean())
    assert arm.high - arm.mean >= seeds_only - 1e-12
    one = stats.mean_interval(scores[:1])
    assert one.seeds == 1 and one.high - one.mean == pytest.approx(
        sps.t.ppf(0.975, 299) * scores[0].std(ddof=1) / math.sqrt(300))


def test_pareto_front_and_figures_are_written(tmp_path):
    from pefteval.reporting.figures import frontier, pareto_points, plot_comparison, plot_pareto

    points = {"fft": {"score": 0.80, "trainable": 1e7, "memory": 1500, "seconds": 16},
              "lora": {"score": 0.79, "trainable": 7e4, "memory": 1300, "seconds": 10},
              "bitfit": {"score": 0.70, "trainable": 2e4, "memory": 1200, "seconds": 8},
              "prefix": {"score": 0.74, "trainable": 9e4, "memory": 1400, "seconds": 12}}
    assert frontier(points, "trainable") == ["bitfit", "lora", "fft"]  # prefix: lora is cheaper and better
    rng = np.random.default_rng(7)
    records, scores = _synthetic(rng, {"fft": 0.85, "lora": 0.84, "bitfit": 0.60})
    table = build_table(records, scores_of=lambda rec: scores[rec["run_dir"]])
    got = pareto_points(table)
    assert set(got) == {"fft", "lora", "bitfit"}
    assert got["bitfit"]["score"] == pytest.approx(table.significance.arms[("sst2", "test", "bitfit")].mean)
    for path in (plot_comparison(table.significance, ["fft", "lora", "bitfit"], tmp_path / "c.png"),
                 plot_pareto(table, tmp_path / "p.png")):
        assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_pooled_test_over_sets_sharing_models_keeps_its_rate():
    """Two test sets answered by the same models (a seed's shift moves both): the pooled test of the
    mean difference rejects a true null at most at 5%, and finds a shared 8-point loss."""
    rng = np.random.default_rng(21)
    reps, seeds, sizes = 800, 4, (300, 120)
    rejected = found = 0
    for rep in range(reps):
        delta = 0.0 if rep % 2 == 0 else 1.0
        shift = rng.normal(0, 0.3, (2, seeds))  # per method and seed, shared by both sets
        diffs = []
        for n in sizes:
            logit = 1.0 + rng.normal(0, 1.5, n)[None, None, :] + rng.normal(0, 0.5, (2, 1, n)) + shift[:, :, None]
            logit[1] -= delta
            y = (rng.random(logit.shape) < 1 / (1 + np.exp(-logit))).astype(float)
            diffs.append(y[1] - y[0])
        d = stats.pooled_paired_test(diffs)
        if delta == 0.0:
            rejected += d.p < 0.05
        else:
            found += d.high < 0
    half = reps // 2
    assert rejected / half <= stats.ALPHA + slack(half)
    assert found / half >= 0.6
    with pytest.raises(ValueError, match="same seeds"):
        stats.pooled_paired_test([np.zeros((3, 5)), np.zeros((4, 5))])
