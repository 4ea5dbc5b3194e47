"""The paper's claims, decided on results directories (``pefteval claims OUT [OUT ...]``).

Each claim names a comparison (which methods against FFT, on which tasks and splits) and a
direction. Its evidence in one results directory is pooled into one effect: the mean, over the
claim's test sets (task × split) and methods, of the method's score minus FFT's, tested with
``stats.pooled_paired_test`` (seeds paired, df = seeds − 1; each test set's examples add their
own sampling variance); the per-trial statistics of claims (e) and (g) with ``stats.seed_test``
on the per-seed pooled differences. A claim's verdict:

- "X ≥ FFT" (a): held when the interval's lower end is above −margin (non-inferior), contradicted
  when its upper end is below 0 (X significantly worse), inconclusive otherwise;
- "FFT > X" (b, c, d, h): held when the upper end is below 0, contradicted when the lower end is
  above 0 (X significantly better) or the whole interval lies within ±margin (no difference that
  large), inconclusive otherwise;
- (f) has two parts (k < 20: LoRA ahead; k ≥ 20: FFT ahead), each decided so; the claim holds
  when both hold, is contradicted when either is;
- (e) and (g) test per-trial weight and loss statistics (see their functions).

The margin is in points of a 100-point scale (accuracy, F1): 1 by default; for MT-Bench's 10-point
ratings a tenth of it. Every claim of the paper is listed, with why a directory cannot test it.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pefteval import stats
from pefteval.errors import UserError
from pefteval.reporting.mt_bench import judge_identity, saved_judgments
from pefteval.reporting.significance import ScoresOf, baseline_label, judgment_scores, scores_from
from pefteval.selection import Selection, report_group, select_grid_points, task_label
from pefteval.store import read_complete
from pefteval.tasks import TASKS

GLUE = ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "mnli-mm", "qnli", "rte", "wnli")
FEW_SHOT_SPLIT = 20  # the paper's crossover: LoRA ahead below 20 shots, FFT from there on
FORMATS = ("markdown", "csv", "json")


@dataclass(frozen=True)
class Claim:
    key: str
    text: str
    needs: str  # what results test it


CLAIMS = (
    Claim("a", "LoRA ≥ FFT on clean GLUE", "GLUE tasks (orig split) with FFT and LoRA"),
    Claim("b", "FFT > PEFT on AdvGLUE", "GLUE tasks with AdvGLUE sets, FFT and PEFT methods"),
    Claim("c", "FFT > PEFT on SQuAD and Adversarial SQuAD", "SQuAD (with its adversarial sets), FFT and PEFT"),
    Claim("d", "FFT > LoRA on GSM8K / SQL / ViGGO", "generation tasks with FFT and LoRA"),
    Claim("e", "PEFT increments narrower and more peaked than FFT's", "increments.json of FFT and PEFT trials"),
    Claim("f", "LoRA ahead of FFT below 20 shots, FFT ahead from 20 on", "k-shot trials of FFT and LoRA"),
    Claim("g", "PEFT's loss more sensitive to weight perturbations than FFT's",
          "analysis/sensitivity.json of FFT and PEFT trials"),
    Claim("h", "FFT > LoRA on MT-Bench", "judged MT-Bench answers of FFT and LoRA"),
)


@dataclass
class Decision:
    claim: str
    source: str
    verdict: str  # held | contradicted | inconclusive
    effect: str
    low: float
    high: float
    estimate: float
    n: str
    test: str
    detail: str = ""


@dataclass
class ClaimsReport:
    decisions: list[Decision] = field(default_factory=list)
    untestable: dict[str, list[str]] = field(default_factory=dict)  # claim -> why, per directory
    margin: float = 1.0


@dataclass
class Evidence:
    """What one results directory holds for the claims."""

    out: Path
    sel: Selection
    groups: dict[str, str]
    scores_of: ScoresOf
    judgments: list[dict[str, Any]]
    method_type: dict[str, str]
    baseline: str | None

    def methods(self, *types: str, peft: bool = False) -> list[str]:
        return [m for m in self.sel.methods if m != self.baseline
                and ((peft and self.method_type.get(m) != "fft") or self.method_type.get(m) in types)]


def load_evidence(out: Path, records: list[dict[str, Any]] | None = None, scores_of: ScoresOf | None = None,
                  judgments: list[dict[str, Any]] | None = None) -> Evidence:
    """What ``out`` holds for the claims; a report that has read the records, the per-example scores
    and the judgments already passes them in, so that nothing is read twice."""
    records = records if records is not None else read_complete(out)
    sel = select_grid_points(records)
    groups = {task_label(r["config"]): report_group(r) for r in records}
    method_type = {m: recs[0]["config"]["method"].get("type", "") for (_t, m), (_h, recs) in sel.chosen.items()}
    if judgments is None:
        judgments, _checks = saved_judgments(out)
    return Evidence(out, sel, groups, scores_of or scores_from(out), judgments, method_type,
                    baseline_label(sel.methods, method_type))


# ---------------------------------------------------------------- pooled example-level evidence

@dataclass
class Pool:
    differences: list[np.ndarray]
    sets: list[str]
    methods: list[str]
    seeds: list[int]


def _trial_scores(ev: Evidence, task: str, method: str, split: str) -> dict[int, dict[str, float | None]]:
    return {r["config"]["seed"]: ev.scores_of(r).get(split, {}) for r in ev.sel.chosen[(task, method)][1]}


def _mt_scores(ev: Evidence, task: str, method: str, judge: Any) -> dict[int, dict[str, float | None]]:
    per_model = judgment_scores(ev.judgments).get(judge, {})
    return {r["config"]["seed"]: per_model[r["mt_bench"]["model_id"]] for r in ev.sel.chosen[(task, method)][1]
            if r.get("mt_bench") and r["mt_bench"]["model_id"] in per_model}


def pool(ev: Evidence, cells: list[tuple[str, str]], methods: list[str], judge: Any = None) -> Pool | str:
    """Difference matrices (method − FFT, averaged over ``methods``) of every (task, split) cell, on
    the seeds every arm of every cell ran and the examples every trial of a cell scored; or why not."""
    per_cell = []
    for task, split in cells:
        arms = [m for m in [ev.baseline, *methods] if (task, m) in ev.sel.chosen]
        if ev.baseline not in arms or len(arms) < 2:
            continue
        get = (lambda m, t=task: _mt_scores(ev, t, m, judge)) if judge is not None else (
            lambda m, t=task, s=split: _trial_scores(ev, t, m, s))
        per_cell.append((task, split, {m: get(m) for m in arms}))
    if not per_cell:
        return "no test set has both FFT and the claim's methods"
    seeds = set.intersection(*[set(trials) for _t, _s, arms in per_cell for trials in arms.values()])
    if len(seeds) < 2:
        return "fewer than two seeds common to FFT and the claim's methods"
    order = sorted(seeds)
    differences, sets, used = [], [], set()
    for task, split, arms in per_cell:
        everyone = [arms[m][s] for m in arms for s in order]
        ids = [i for i, v in everyone[0].items() if v is not None and all(x.get(i) is not None for x in everyone)]
        if len(ids) < 2:
            continue
        base = np.array([[arms[ev.baseline][s][i] for i in ids] for s in order])
        treated = [np.array([[arms[m][s][i] for i in ids] for s in order]) for m in arms if m != ev.baseline]
        differences.append(np.mean(treated, axis=0) - base)
        sets.append(f"{task}/{split}" if judge is None else task)
        used.update(m for m in arms if m != ev.baseline)
    if not differences:
        return "no test examples scored by every trial"
    return Pool(differences, sets, [m for m in methods if m in used], order)


def _decide(kind: str, d: stats.Difference, margin: float) -> str:
    if kind == "at_least":
        if d.low > -margin:
            return "held"
        return "contradicted" if d.high < 0 else "inconclusive"
    if kind == "below":  # FFT > X: X − FFT < 0
        if d.high < 0:
            return "held"
        if d.low > 0 or (d.low > -margin and d.high < margin):
            return "contradicted"
        return "inconclusive"
    if kind == "above":  # X − FFT > 0
        if d.low > 0:
            return "held"
        if d.high < 0 or (d.low > -margin and d.high < margin):
            return "contradicted"
        return "inconclusive"
    raise ValueError(kind)


def _interval(d: stats.Difference, scale: float, unit: str) -> str:
    return f"{scale * d.estimate:+.2f} {unit} [{scale * d.low:+.2f}, {scale * d.high:+.2f}]"


def _pooled_decision(claim: str, ev: Evidence, kind: str, cells: list[tuple[str, str]], methods: list[str],
                     margin: float, label: str, judge: Any = None) -> Decision | str:
    got = pool(ev, cells, methods, judge)
    if isinstance(got, str):
        return got
    d = stats.pooled_paired_test(got.differences)
    rating = judge is not None
    scale, unit = (1.0, "rating points") if rating else (100.0, "pp")
    verdict = _decide(kind, d, margin / (10.0 if rating else 100.0))
    n = f"{len(got.seeds)} seeds × {d.examples:,} examples ({len(got.sets)} test set(s))"
    return Decision(claim, str(ev.out), verdict, f"{label} − FFT = {_interval(d, scale, unit)}", d.low, d.high,
                    d.estimate, n, "pooled paired t test over seeds and test sets (df = seeds − 1; "
                    "test examples' sampling variance per set)",
                    f"methods: {', '.join(got.methods)}; sets: {', '.join(got.sets)}")


# ---------------------------------------------------------------- the claims

def claim_a(ev: Evidence, margin: float) -> Decision | str:
    tasks = [t for t in ev.sel.tasks if ev.groups[t] == "classification" and t in GLUE]
    if not tasks:
        return "no GLUE classification task"
    lora = ev.methods("lora")
    if not lora:
        return "no LoRA trials"
    return _pooled_decision("a", ev, "at_least", [(t, "test") for t in tasks], lora, margin, "LoRA")


def _has_split(ev: Evidence, task: str, split: str) -> bool:
    recs = ev.sel.chosen.get((task, ev.baseline), (None, []))[1]
    return any(split in r.get("metrics", {}) for r in recs)


def claim_b(ev: Evidence, margin: float) -> Decision | str:
    tasks = [t for t in ev.sel.tasks if ev.groups[t] == "classification" and t in GLUE
             and _has_split(ev, t, "advglue")]
    if not tasks:
        return "no GLUE task evaluated on AdvGLUE"
    peft = ev.methods(peft=True)
    if not peft:
        return "no PEFT trials"
    return _pooled_decision("b", ev, "below", [(t, "advglue") for t in tasks], peft, margin, "PEFT")


def claim_c(ev: Evidence, margin: float) -> Decision | str:
    tasks = [t for t in ev.sel.tasks if ev.groups[t] == "qa"]
    if not tasks:
        return "no SQuAD task"
    peft = ev.methods(peft=True)
    if not peft:
        return "no PEFT trials"
    cells = []
    for t in tasks:
        adversarial = TASKS[t].adversarial if t in TASKS else ()
        cells += [(t, s) for s in ("test", *adversarial) if _has_split(ev, t, s)]
    return _pooled_decision("c", ev, "below", cells, peft, margin, "PEFT")


def claim_d(ev: Evidence, margin: float) -> Decision | str:
    tasks = [t for t in ev.sel.tasks if ev.groups[t] == "generation"]
    if not tasks:
        return "no generation task (GSM8K, SQL, ViGGO)"
    lora = ev.methods("lora")
    if not lora:
        return "no LoRA trials"
    return _pooled_decision("d", ev, "below", [(t, "test") for t in tasks], lora, margin, "LoRA")


def claim_f(ev: Evidence, margin: float) -> Decision | str:
    shots: dict[bool, list[str]] = {True: [], False: []}
    for t in ev.sel.tasks:
        if ev.groups[t] == "fewshot" and "@k=" in t:
            shots[int(t.split("@k=")[1]) < FEW_SHOT_SPLIT].append(t)
    if not shots[True] and not shots[False]:
        return "no k-shot trials"
    lora = ev.methods("lora")
    if not lora:
        return "no LoRA trials"
    parts = []
    for below, kind, name in ((True, "above", f"k < {FEW_SHOT_SPLIT}"), (False, "below", f"k ≥ {FEW_SHOT_SPLIT}")):
        if not shots[below]:
            parts.append((name, None, f"{name}: not in these results"))
            continue
        got = _pooled_decision("f", ev, kind, [(t, "test") for t in shots[below]], lora, margin, "LoRA")
        parts.append((name, got, got if isinstance(got, str) else ""))
    decided = [(name, d) for name, d, _ in parts if isinstance(d, Decision)]
    if not decided:
        return "; ".join(why for _n, _d, why in parts)
    verdicts = [d.verdict for _n, d in decided]
    missing = [why for _n, d, why in parts if not isinstance(d, Decision)]
    if "contradicted" in verdicts:
        verdict = "contradicted"
    elif verdicts == ["held", "held"]:
        verdict = "held"
    else:
        verdict = "inconclusive"
    first = decided[0][1]
    return Decision("f", str(ev.out), verdict, "; ".join(f"{name}: {d.effect} ({d.verdict})" for name, d in decided),
                    first.low, first.high, first.estimate, "; ".join(f"{name}: {d.n}" for name, d in decided),
                    first.test, "; ".join([d.detail for _n, d in decided] + missing))


def claim_h(ev: Evidence, margin: float) -> list[Decision] | str:
    tasks = [t for t in ev.sel.tasks if ev.groups[t] == "instruct"]
    if not tasks:
        return "no instruction-tuning task"
    if not ev.judgments:
        return "no MT-Bench judgments (`pefteval judge OUT`)"
    lora = ev.methods("lora")
    if not lora:
        return "no LoRA trials"
    judges = list(dict.fromkeys(judge_identity(r) for r in ev.judgments))
    out = []
    for judge in judges:
        got = _pooled_decision("h", ev, "below", [(t, "mt_bench") for t in tasks], lora, margin, "LoRA", judge)
        if isinstance(got, Decision):
            got.detail += f"; judge: {judge[1]}"
            out.append(got)
    return out or "no judge rated both FFT's and LoRA's answers on two or more common seeds"


def _per_seed(ev: Evidence, task: str, method: str, value) -> dict[int, float]:
    """seed -> the per-trial statistic ``value(run_dir, record)`` of a cell's trials (absent: left out)."""
    got = {}
    for r in ev.sel.chosen[(task, method)][1]:
        v = value(ev.out / r["run_dir"], r)
        if v is not None and math.isfinite(v):
            got[r["config"]["seed"]] = v
    return got


Pairs = list[tuple[str, dict[int, float], dict[int, float]]]  # (cell, FFT's per seed, the method's per seed)


def _seed_pool(pairs: Pairs) -> tuple[stats.Difference, list[int], list[str]] | str:
    """The per-seed mean over cells of (method − FFT), tested across seeds (paired)."""
    if not pairs:
        return "no PEFT trial with a matching FFT trial"
    seeds = sorted(set.intersection(*[set(b) & set(v) for _k, b, v in pairs]))
    if len(seeds) < 2:
        return "fewer than two seeds common to FFT and the PEFT methods"
    per_seed = [float(np.mean([v[s] - b[s] for _k, b, v in pairs])) for s in seeds]
    return stats.seed_test([0.0] * len(seeds), per_seed, paired_seeds=True), seeds, [k for k, _b, _v in pairs]


def _increment(tensor_suffix: str, stat: str):
    """A trial's statistic of its increment of the figure's module (``default_module`` + suffix)."""
    def value(run_dir: Path, rec: dict[str, Any]) -> float | None:
        path = run_dir / "increments.json"
        if not path.is_file():
            return None
        meta = json.loads(path.read_text(encoding="utf-8"))
        entry = meta.get("modules", {}).get(meta.get("default_module", "") + tensor_suffix)
        if entry is None or not entry.get("std"):
            return None  # the method left that tensor as it was
        return math.log(entry["std"]) if stat == "log_std" else float(entry[stat])
    return value


def claim_e(ev: Evidence, margin: float) -> Decision | str:
    """Per (task, PEFT method): the log std and the excess kurtosis of its increment of the last block's
    query projection (BitFit: of that module's bias) against FFT's increment of the same tensor."""
    results = {}
    for stat in ("log_std", "kurtosis"):
        pairs: Pairs = []
        for (task, method), _chosen in ev.sel.chosen.items():
            if method not in ev.methods(peft=True) or (task, ev.baseline) not in ev.sel.chosen:
                continue
            suffix = ".bias" if ev.method_type.get(method) == "bitfit" else ".weight"
            treated = _per_seed(ev, task, method, _increment(suffix, stat))
            if treated:
                pairs.append((f"{task}/{method}", _per_seed(ev, task, ev.baseline, _increment(suffix, stat)),
                              treated))
        got = _seed_pool(pairs)
        if isinstance(got, str):
            return f"{got} (increments.json of the last block's query projection)"
        results[stat] = got
    (d_std, seeds, keys), (d_kurt, _s, _k) = results["log_std"], results["kurtosis"]
    if d_std.high < 0 and d_kurt.low > 0:
        verdict = "held"
    elif d_std.low > 0 or d_kurt.high < 0:
        verdict = "contradicted"
    else:
        verdict = "inconclusive"
    effect = (f"std PEFT/FFT ×{math.exp(d_std.estimate):.3g} [{math.exp(d_std.low):.3g}, "
              f"{math.exp(d_std.high):.3g}]; excess kurtosis {d_kurt.estimate:+.2f} [{d_kurt.low:+.2f}, "
              f"{d_kurt.high:+.2f}]")
    return Decision("e", str(ev.out), verdict, effect, d_std.low, d_std.high, d_std.estimate,
                    f"{len(seeds)} seeds × {len(keys)} (task, method) cells",
                    "paired t test over seeds of the mean log-std difference and of the mean kurtosis difference "
                    "(df = seeds − 1); held when both are significant in the claimed direction",
                    "increments of the last block's query projection (BitFit: its bias, against FFT's bias; "
                    f"prompt methods change no weight and are left out); cells: {', '.join(keys)}")


def _sensitivity(run_dir: Path, rec: dict[str, Any]) -> float | None:
    path = run_dir / "analysis" / "sensitivity.json"
    if not path.is_file():
        return None
    full = json.loads(path.read_text(encoding="utf-8")).get("delta_loss", {}).get("full", {})
    if not full:
        return None
    values = full[max(full, key=float)]
    return float(np.mean(values)) if values else None


def claim_g(ev: Evidence, margin: float) -> Decision | str:
    pairs: Pairs = []
    for (task, method), _chosen in ev.sel.chosen.items():
        if method in ev.methods(peft=True) and (task, ev.baseline) in ev.sel.chosen:
            treated = _per_seed(ev, task, method, _sensitivity)
            if treated:
                pairs.append((f"{task}/{method}", _per_seed(ev, task, ev.baseline, _sensitivity), treated))
    if not pairs or not any(b for _k, b, _v in pairs):
        return f"no sensitivity measurements (`pefteval analyze sensitivity {ev.out}` measures them)"
    got = _seed_pool(pairs)
    if isinstance(got, str):
        return got
    d, seeds, keys = got
    verdict = "held" if d.low > 0 else "contradicted" if d.high < 0 else "inconclusive"
    return Decision("g", str(ev.out), verdict,
                    f"ΔL PEFT − FFT = {d.estimate:+.3g} [{d.low:+.3g}, {d.high:+.3g}]", d.low, d.high, d.estimate,
                    f"{len(seeds)} seeds × {len(keys)} (task, method) cells",
                    "paired t test over seeds (df = seeds − 1)",
                    "ΔL: the probe loss's mean rise over antithetic random perturbations of every weight at the "
                    f"largest ρ; cells: {', '.join(keys)}")


DECIDERS = {"a": claim_a, "b": claim_b, "c": claim_c, "d": claim_d, "e": claim_e, "f": claim_f, "g": claim_g,
            "h": claim_h}


def evaluate_claims(outs: list[Path], margin: float = 1.0, evidence: list[Evidence] | None = None) -> ClaimsReport:
    """The claims decided on each directory of ``outs`` (or on ``evidence`` already loaded)."""
    if margin < 0 or math.isnan(margin):
        raise UserError(f"--margin {margin}: give a non-negative number of points (1 = one accuracy point)")
    report = ClaimsReport(margin=margin)
    for out in outs:
        if not Path(out).is_dir():
            raise UserError(f"results directory {out} does not exist")
    for ev in evidence if evidence is not None else [load_evidence(Path(out)) for out in outs]:
        out = ev.out
        for claim in CLAIMS:
            if ev.baseline is None:
                got: Any = "no FFT trials to compare against"
            else:
                got = DECIDERS[claim.key](ev, margin)
            if isinstance(got, str):
                report.untestable.setdefault(claim.key, []).append(f"{out}: {got}")
            else:
                report.decisions += got if isinstance(got, list) else [got]
    # a claim some directory tests is not listed as untestable
    tested = {d.claim for d in report.decisions}
    report.untestable = {k: v for k, v in report.untestable.items() if k not in tested}
    return report


def _text(key: str) -> str:
    return next(c.text for c in CLAIMS if c.key == key)


def render_markdown(report: ClaimsReport, heading: str = "## The paper's claims", sources: bool = True) -> str:
    """The claims table; ``sources=False`` (one directory's own report) leaves its path out."""
    lines = [heading, "", "| Claim | Verdict | Effect (95% CI) | n | Test | Results |", "|---|---|---|---|---|---|"]
    for d in sorted(report.decisions, key=lambda d: d.claim):
        where = f"{d.source}: {d.detail}" if sources else d.detail
        lines.append(f"| ({d.claim}) {_text(d.claim)} | **{d.verdict}** | {d.effect} | {d.n} | {d.test} | {where} |")
    if report.untestable:
        lines += ["", "Not testable with these results:", ""]
        for c in CLAIMS:
            if c.key in report.untestable:
                why = report.untestable[c.key] if sources else [w.split(": ", 1)[-1] for w in report.untestable[c.key]]
                lines.append(f"- ({c.key}) {c.text} — needs {c.needs}; " + "; ".join(why))
    lines += ["", f"- Rules (margin {report.margin:g} point(s) of a 100-point scale; MT-Bench ratings: a tenth of "
                  "it): 'X ≥ FFT' holds when the interval's lower end is above −margin and is contradicted when "
                  "its upper end is below 0; 'FFT > X' holds when the upper end is below 0 and is contradicted "
                  "when the lower end is above 0 or the whole interval lies within ±margin; otherwise "
                  "inconclusive. (f) holds when both of its parts hold, and is contradicted when either is.",
              "- Effects pool the claim's test sets and methods in each results directory (the mean of method "
              "minus FFT); intervals count both the training seeds and the test examples (docs/statistics.md)."]
    return "\n".join(lines) + "\n"


def render_csv(report: ClaimsReport) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["claim", "text", "verdict", "estimate", "ci_low", "ci_high", "effect", "n", "test", "source",
                     "detail"])
    for d in sorted(report.decisions, key=lambda d: d.claim):
        writer.writerow([d.claim, _text(d.claim), d.verdict, d.estimate, d.low, d.high, d.effect, d.n, d.test,
                         d.source, d.detail])
    for key, why in report.untestable.items():
        writer.writerow([key, _text(key), "untestable", "", "", "", "", "", "", "", "; ".join(why)])
    return buf.getvalue()


def render(report: ClaimsReport, fmt: str) -> str:
    if fmt == "markdown":
        return render_markdown(report)
    if fmt == "csv":
        return render_csv(report)
    if fmt == "json":
        return json.dumps({"margin": report.margin, "decisions": [asdict(d) for d in report.decisions],
                           "untestable": report.untestable}, indent=2) + "\n"
    raise UserError(f"format {fmt!r}: choose one of {', '.join(FORMATS)}")
