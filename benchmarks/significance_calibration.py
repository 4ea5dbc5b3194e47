"""Calibration of the significance test on synthetic results with a known difference.

For each design (seeds per method, paired or independent seeds) and each regime of the seeds'
spread, draws many synthetic experiments (``pefteval.stats.simulate``: new test examples, new
seeds, 1/0 outcomes) and prints how often the two-way t test and the hierarchical bootstrap reject
at α = 0.05 when there is no difference (the false-positive rate, which must stay at or below 5%)
and when there is one of ~11 accuracy points (the power), with the t interval's coverage.

    python benchmarks/significance_calibration.py            # ~3 minutes on 2 cores
    python benchmarks/significance_calibration.py --quick    # fewer replicates
"""

from __future__ import annotations

import argparse
import math
import time

from pefteval import stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="300 replicates per null cell instead of 2000")
    parser.add_argument("--examples", type=int, default=300, help="test examples per experiment")
    args = parser.parse_args()
    null_reps, alt_reps, boot_reps = (300, 150, 150) if args.quick else (2000, 400, 400)
    started = time.perf_counter()
    print(f"test examples {args.examples}; α = {stats.ALPHA}; seed spread on the logit scale "
          "(0.3 ≈ 4 accuracy points per seed)")
    print("| seeds | seeds paired | seed spread | t test FPR (Δ = 0) | bootstrap FPR | t test power (Δ ≈ 11 pp) "
          "| t coverage |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for seeds in (3, 5, 10):
        for paired in (True, False):
            for seed_sd in (0.0, 0.3, 1.0):
                null = stats.simulate(0.0, seeds=seeds, examples=args.examples, reps=null_reps,
                                      paired_seeds=paired, seed_sd=seed_sd, rng_seed=seeds * 10 + int(paired))
                boot = stats.simulate(0.0, seeds=seeds, examples=args.examples, reps=boot_reps,
                                      paired_seeds=paired, seed_sd=seed_sd, bootstrap_draws=400,
                                      rng_seed=seeds * 10 + int(paired) + 5)
                alt = stats.simulate(0.8, seeds=seeds, examples=args.examples, reps=alt_reps, paired_seeds=paired,
                                     seed_sd=seed_sd, rng_seed=seeds * 10 + int(paired) + 7)
                se = math.sqrt(0.05 * 0.95 / null_reps)
                print(f"| {seeds} | {'yes' if paired else 'no'} | {seed_sd:g} | {null['reject_rate']:.3f} "
                      f"(± {se:.3f}) | {boot['bootstrap_reject_rate']:.3f} | {alt['reject_rate']:.3f} | "
                      f"{alt['coverage']:.3f} |", flush=True)
    print(f"null replicates {null_reps} (bootstrap {boot_reps}, 400 draws each), alternative {alt_reps}; "
          f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
