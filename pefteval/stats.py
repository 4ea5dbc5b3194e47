"""Is one method's score different from another's? A test that counts both sources of variation:
the training seeds (a method's score moves with its seed) and the test examples (the test set is
one sample of the task).

The data of one comparison: per method, a (seeds × examples) matrix of per-example scores (1/0
for accuracy, F1 per question, a judge's rating per MT-Bench turn) over the same test examples.
The estimate is the difference of the two grand means (``treated − baseline``).

The test, ``two_way_test``: a crossed random-effects model, ``y[s, i] = Δ + a[s] + b[i] + e[s, i]``
(seed effect, example effect, their interaction), whose grand mean has variance
``Var(seed means) / S + σ²_b / n``. The seed means' spread is taken as it is (it holds the
interaction's share); ``σ²_b`` comes from the two-way ANOVA mean squares, clipped at zero. When both
methods ran the same seeds, the model is fitted to the difference matrix (paired by seed and by
example: a seed's shared data order and initialisation cancel) and the t statistic has S − 1
degrees of freedom; otherwise to each method's matrix (seeds independent, examples still paired)
with Welch's degrees of freedom over the two methods' seed means. Those are the seeds' degrees of
freedom, not Satterthwaite's for the whole sum: with three seeds Satterthwaite's grows exactly
when the seeds happen to agree, and the test rejected 6-7% of true nulls at a nominal 5% in
``simulate``; with the seeds' df it rejects 2-5% (docs/statistics.md). With three seeds the
intervals are honestly wide.

The cross-check, ``hierarchical_bootstrap``: resample seeds (per method, or the shared seeds
together), then test examples (the same ones for both methods), and take the percentile interval.
With few seeds it is anti-conservative (three seeds allow ten distinct resamples): its calibration
is measured by ``simulate`` (``benchmarks/significance_calibration.py``) and stated in
docs/statistics.md; verdicts use the t test.

``holm`` adjusts a table's p-values together; ``power`` says what the experiment could detect.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

ALPHA = 0.05
POWER = 0.80
MAX_SEEDS = 1000
MAX_EXAMPLES = 10_000_000


@dataclass(frozen=True)
class Components:
    """The variance of the estimate as ``seed / S + example / n + residual / (S n)``: ``seed`` is the
    seed-effect variance of one seed per method (summed over both methods when their seeds differ),
    ``example`` the per-example variance of the difference, ``residual`` the seed × example part."""

    seed: float
    example: float
    residual: float
    paired: bool

    def variance(self, seeds: float, examples: float) -> float:
        return self.seed / seeds + self.example / examples + self.residual / (seeds * examples)

    def df(self, seeds: int) -> float:
        """The test's degrees of freedom with ``seeds`` seeds per method (see ``two_way_test``)."""
        return float(seeds - 1 if self.paired else 2 * (seeds - 1))


@dataclass(frozen=True)
class Difference:
    """``treated − baseline`` with its standard error, t-based 95% interval and two-sided p-value."""

    estimate: float
    se: float
    df: float
    low: float
    high: float
    p: float
    seeds: tuple[int, int]  # (baseline, treated)
    examples: int
    paired_seeds: bool
    components: Components

    @property
    def test(self) -> str:
        return ("two-way (seeds × examples) t test, "
                + ("paired by seed and example, df = seeds − 1" if self.paired_seeds
                   else "seeds independent (Welch df), examples paired"))


@dataclass(frozen=True)
class Bootstrap:
    low: float
    high: float
    p: float
    draws: int


@dataclass(frozen=True)
class Power:
    """What the comparison could detect: the smallest difference found with ``POWER`` at ``ALPHA``
    (two-sided, unadjusted) with this design, and the seeds (examples fixed) or test examples
    (seeds fixed) that would detect the observed difference; None where none up to the caps would."""

    mde: float
    seeds_needed: int | None
    examples_needed: int | None


def _two_way(y: np.ndarray) -> tuple[float, float, float, int, int]:
    """Mean squares of a (seeds × examples) matrix: seeds, examples, interaction."""
    s, n = y.shape
    grand = y.mean()
    rows, cols = y.mean(axis=1), y.mean(axis=0)
    ms_seed = n * float(((rows - grand) ** 2).sum()) / (s - 1)
    ms_example = s * float(((cols - grand) ** 2).sum()) / (n - 1)
    resid = y - rows[:, None] - cols[None, :] + grand
    ms_resid = float((resid ** 2).sum()) / ((s - 1) * (n - 1))
    return ms_seed, ms_example, ms_resid, s, n


def _check(baseline: np.ndarray, treated: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    baseline, treated = np.asarray(baseline, dtype=float), np.asarray(treated, dtype=float)
    if baseline.ndim != 2 or treated.ndim != 2 or baseline.shape[1] != treated.shape[1]:
        raise ValueError(f"score matrices must be (seeds × examples) over the same examples: got {baseline.shape} "
                         f"and {treated.shape}")
    if baseline.shape[0] < 2 or treated.shape[0] < 2:
        raise ValueError("a seed effect needs at least two seeds per method")
    if baseline.shape[1] < 2:
        raise ValueError("an example effect needs at least two test examples")
    if not (np.isfinite(baseline).all() and np.isfinite(treated).all()):
        raise ValueError("score matrices must be finite (leave out examples without a score first)")
    return baseline, treated


def two_way_test(baseline: np.ndarray, treated: np.ndarray, paired_seeds: bool, alpha: float = ALPHA) -> Difference:
    """The difference ``mean(treated) − mean(baseline)`` tested as the module docstring says.
    ``paired_seeds``: row k of both matrices is the same seed."""
    baseline, treated = _check(baseline, treated)
    n = baseline.shape[1]
    estimate = float(treated.mean() - baseline.mean())
    # Var(grand mean) = Var(seed means) / S + σ²_b / n: the seed means' own spread (MS_seed / n, which
    # holds the interaction's share too) and the examples' part beyond what the interaction explains
    if paired_seeds:
        if baseline.shape[0] != treated.shape[0]:
            raise ValueError("paired seeds need as many seeds in both matrices")
        ms_seed, ms_example, ms_resid, s, _ = _two_way(treated - baseline)
        example = max(0.0, (ms_example - ms_resid) / s)
        comps = Components(max(0.0, (ms_seed - ms_resid) / n), example, ms_resid, paired=True)
        variance = ms_seed / (s * n) + example / n
        df = float(s - 1)
        seeds = (s, s)
    else:
        parts = [_two_way(m) for m in (baseline, treated)]
        z = treated.mean(axis=0) - baseline.mean(axis=0)
        example = max(0.0, float(z.var(ddof=1)) - sum(p[2] / p[3] for p in parts))
        comps = Components(sum(max(0.0, (p[0] - p[2]) / n) for p in parts), example, sum(p[2] for p in parts),
                           paired=False)
        seed_terms = [(p[0] / (p[3] * n), p[3] - 1) for p in parts]
        variance = sum(v for v, _ in seed_terms) + example / n
        df = _welch(seed_terms)
        seeds = (baseline.shape[0], treated.shape[0])
    se = math.sqrt(max(variance, 0.0))
    if se == 0.0:
        p = 1.0 if estimate == 0.0 else 0.0
        return Difference(estimate, 0.0, df, estimate, estimate, p, seeds, n, paired_seeds, comps)
    crit = float(sps.t.ppf(1 - alpha / 2, df))
    p = float(2 * sps.t.sf(abs(estimate) / se, df))
    return Difference(estimate, se, df, estimate - crit * se, estimate + crit * se, p, seeds, n, paired_seeds, comps)


def _welch(terms: Sequence[tuple[float, float]]) -> float:
    """Welch-Satterthwaite degrees of freedom of a sum of independent variance terms (value, df); between
    the smallest df and their sum."""
    total = sum(v for v, _ in terms)
    denom = sum(v * v / d for v, d in terms)
    if total <= 0 or denom <= 0:
        return float(min(d for _, d in terms))
    return total * total / denom


def pooled_paired_test(differences: Sequence[np.ndarray], alpha: float = ALPHA) -> Difference:
    """The mean over several test sets of ``treated − baseline``, each given as its (seeds × examples)
    difference matrix with the same seeds in the same rows (trials of one seed answer every set).
    The seed part is the spread of the per-seed pooled differences (sets sharing a model move
    together); the example parts add up as the sets' independent samples, each weighted 1/G²."""
    if not differences:
        raise ValueError("no difference matrices to pool")
    seeds = {d.shape[0] for d in differences}
    if len(seeds) != 1 or min(seeds) < 2:
        raise ValueError("every difference matrix needs the same seeds (at least two), row for row")
    s = seeds.pop()
    g = len(differences)
    per_seed = np.mean([d.mean(axis=1) for d in differences], axis=0)
    estimate = float(per_seed.mean())
    seed_var = float(per_seed.var(ddof=1))
    example_var = 0.0
    examples = 0
    for d in differences:
        _ms_seed, ms_example, ms_resid, _s, n = _two_way(d) if d.shape[1] > 1 else (0.0, 0.0, 0.0, s, 1)
        example_var += max(0.0, (ms_example - ms_resid) / s) / n / g ** 2
        examples += n
    variance = seed_var / s + example_var
    comps = Components(seed_var, example_var * examples, 0.0, paired=True)
    se = math.sqrt(variance)
    df = float(s - 1)
    if se == 0.0:
        return Difference(estimate, 0.0, df, estimate, estimate, 1.0 if estimate == 0 else 0.0, (s, s), examples,
                          True, comps)
    crit = float(sps.t.ppf(1 - alpha / 2, df))
    p = float(2 * sps.t.sf(abs(estimate) / se, df))
    return Difference(estimate, se, df, estimate - crit * se, estimate + crit * se, p, (s, s), examples, True, comps)


def seed_test(baseline: Sequence[float], treated: Sequence[float], paired_seeds: bool,
              alpha: float = ALPHA) -> Difference:
    """A per-trial statistic (one value per seed and method, no test examples) compared across seeds:
    the paired t test (same seeds) or Welch's."""
    base, treat = np.asarray(baseline, dtype=float), np.asarray(treated, dtype=float)
    if len(base) < 2 or len(treat) < 2:
        raise ValueError("a seed-level test needs at least two seeds per method")
    estimate = float(treat.mean() - base.mean())
    if paired_seeds:
        if len(base) != len(treat):
            raise ValueError("paired seeds need as many values in both")
        d = treat - base
        variance, df = float(d.var(ddof=1)) / len(d), float(len(d) - 1)
        comps = Components(float(d.var(ddof=1)), 0.0, 0.0, paired=True)
    else:
        terms = [(float(x.var(ddof=1)) / len(x), len(x) - 1) for x in (base, treat)]
        variance, df = sum(v for v, _ in terms), _welch(terms)
        comps = Components(float(base.var(ddof=1) + treat.var(ddof=1)), 0.0, 0.0, paired=False)
    se = math.sqrt(variance)
    seeds = (len(base), len(treat))
    if se == 0.0:
        return Difference(estimate, 0.0, df, estimate, estimate, 1.0 if estimate == 0 else 0.0, seeds, 0,
                          paired_seeds, comps)
    crit = float(sps.t.ppf(1 - alpha / 2, df))
    p = float(2 * sps.t.sf(abs(estimate) / se, df))
    return Difference(estimate, se, df, estimate - crit * se, estimate + crit * se, p, seeds, 0, paired_seeds, comps)


@dataclass(frozen=True)
class Interval:
    """One method's mean score with a 95% interval over seeds and test examples."""

    mean: float
    low: float
    high: float
    seeds: int
    examples: int


def mean_interval(scores: np.ndarray, alpha: float = ALPHA) -> Interval:
    """The grand mean of a (seeds × examples) score matrix with the two-way model's interval
    (``Var(seed means) / S + σ²_b / n``, df = S − 1); with one seed, the examples' alone (df = n − 1)."""
    y = np.asarray(scores, dtype=float)
    s, n = y.shape
    mean = float(y.mean())
    if n < 2:
        return Interval(mean, float("nan"), float("nan"), s, n)
    if s == 1:
        variance, df = float(y[0].var(ddof=1)) / n, float(n - 1)
    else:
        ms_seed, ms_example, ms_resid, _, _ = _two_way(y)
        variance, df = ms_seed / (s * n) + max(0.0, (ms_example - ms_resid) / s) / n, float(s - 1)
    half = float(sps.t.ppf(1 - alpha / 2, df)) * math.sqrt(max(variance, 0.0))
    return Interval(mean, mean - half, mean + half, s, n)


def hierarchical_bootstrap(baseline: np.ndarray, treated: np.ndarray, paired_seeds: bool, draws: int = 2000,
                           seed: int = 0, alpha: float = ALPHA) -> Bootstrap:
    """Resample seeds, then examples; the percentile interval of the difference and a two-sided
    p-value (twice the smaller tail share at zero)."""
    baseline, treated = _check(baseline, treated)
    rng = np.random.default_rng(seed)
    n = baseline.shape[1]
    ex = rng.multinomial(n, np.full(n, 1.0 / n), size=draws).T.astype(float)  # n × draws
    if paired_seeds:
        diff = treated - baseline
        s = diff.shape[0]
        ws = rng.multinomial(s, np.full(s, 1.0 / s), size=draws).astype(float)  # draws × s
        stats = np.einsum("bs,sb->b", ws, diff @ ex) / (s * n)
    else:
        stats = np.zeros(draws)
        for sign, mat in ((-1.0, baseline), (1.0, treated)):
            s = mat.shape[0]
            ws = rng.multinomial(s, np.full(s, 1.0 / s), size=draws).astype(float)
            stats += sign * np.einsum("bs,sb->b", ws, mat @ ex) / (s * n)
    low, high = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    below, above = (np.count_nonzero(stats <= 0) + 1) / (draws + 1), (np.count_nonzero(stats >= 0) + 1) / (draws + 1)
    return Bootstrap(float(low), float(high), float(min(1.0, 2 * min(below, above))), draws)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (NaN stays NaN and is not counted)."""
    idx = [i for i, p in enumerate(pvalues) if not math.isnan(p)]
    order = sorted(idx, key=lambda i: pvalues[i])
    m = len(order)
    adjusted = [float("nan")] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def verdict(diff: Difference, p_adjusted: float, alpha: float = ALPHA) -> str:
    """better / worse / same, from the treated method's side (``treated − baseline``)."""
    if math.isnan(p_adjusted) or p_adjusted >= alpha:
        return "same"
    return "better" if diff.estimate > 0 else "worse"


def _detectable(comps: Components, seeds: int, examples: int, alpha: float, target_power: float) -> float:
    df = comps.df(seeds)
    factor = float(sps.t.ppf(1 - alpha / 2, df) + sps.t.ppf(target_power, df))
    return factor * math.sqrt(comps.variance(seeds, examples))


def power(diff: Difference, alpha: float = ALPHA, target_power: float = POWER) -> Power:
    """The minimum detectable difference of this design and what would detect ``diff.estimate``.
    Seeds are counted per method (both methods get them); examples are the shared test set."""
    comps = diff.components
    seeds = min(diff.seeds)
    mde = float(sps.t.ppf(1 - alpha / 2, diff.df) + sps.t.ppf(target_power, diff.df)) * diff.se
    target = abs(diff.estimate)
    if target == 0.0:
        return Power(mde, None, None)

    def smallest(lo: int, hi: int, detects) -> int | None:
        if not detects(hi):
            return None
        while lo < hi:
            mid = (lo + hi) // 2
            if detects(mid):
                hi = mid
            else:
                lo = mid + 1
        return lo

    seeds_needed = smallest(2, MAX_SEEDS,
                            lambda s: _detectable(comps, s, diff.examples, alpha, target_power) <= target)
    examples_needed = smallest(2, MAX_EXAMPLES,
                               lambda n: _detectable(comps, seeds, n, alpha, target_power) <= target)
    return Power(mde, seeds_needed, examples_needed)


def simulate(delta: float, seeds: int = 3, examples: int = 300, reps: int = 1000, paired_seeds: bool = True,
             seed_sd: float = 0.3, example_sd: float = 1.5, interaction_sd: float = 0.5, seed_corr: float = 0.5,
             base_logit: float = 1.0, bootstrap_draws: int = 0, rng_seed: int = 0,
             alpha: float = ALPHA) -> dict[str, float]:
    """Rejection rates of the t test (and, with ``bootstrap_draws``, the bootstrap) on synthetic
    accuracy data with a known difference ``delta`` (on the logit scale; 0: none). Each replicate
    draws a new test set (example difficulty ``example_sd``; a method × example effect
    ``interaction_sd``), new seeds (a per-seed shift ``seed_sd`` correlated ``seed_corr`` between
    the two methods when they share seeds) and 1/0 outcomes. Returns the rejection rates, the true
    difference of accuracy, and the share of intervals that covered it."""
    rng = np.random.default_rng(rng_seed)
    reject = boot_reject = covered = 0
    # the population difference of accuracy: the logit is normal (difficulty + interaction + seed
    # shift), so each expected accuracy is a one-dimensional Gauss-Hermite integral
    spread = math.sqrt(example_sd ** 2 + interaction_sd ** 2 + seed_sd ** 2)
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)
    def expected(mu: float) -> float:
        return float((weights / (1 + np.exp(-(mu + spread * nodes)))).sum() / weights.sum())
    truth = expected(base_logit + delta) - expected(base_logit)
    for _ in range(reps):
        difficulty = rng.normal(0.0, example_sd, examples)
        inter = rng.normal(0.0, interaction_sd, (2, examples))
        shared = rng.normal(0.0, seed_sd, seeds)
        own = rng.normal(0.0, seed_sd, (2, seeds))
        rho = seed_corr if paired_seeds else 0.0
        shift = math.sqrt(rho) * shared[None, :] + math.sqrt(1 - rho) * own  # 2 × seeds
        logits = base_logit + difficulty[None, None, :] + inter[:, None, :] + shift[:, :, None]
        logits[1] += delta
        probs = 1.0 / (1.0 + np.exp(-logits))
        outcomes = (rng.random(probs.shape) < probs).astype(float)
        diff = two_way_test(outcomes[0], outcomes[1], paired_seeds, alpha)
        reject += diff.p < alpha
        covered += diff.low <= truth <= diff.high
        if bootstrap_draws:
            boot = hierarchical_bootstrap(outcomes[0], outcomes[1], paired_seeds, bootstrap_draws,
                                          seed=int(rng.integers(2**31)), alpha=alpha)
            boot_reject += boot.p < alpha
    out = {"reps": reps, "reject_rate": reject / reps, "coverage": covered / reps,
           "true_difference": truth}
    if bootstrap_draws:
        out["bootstrap_reject_rate"] = boot_reject / reps
    return out
