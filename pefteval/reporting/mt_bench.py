"""The Table-2-shaped report of instruction tuning: per judge, rows are methods, columns the eight
MT-Bench categories, then turn 1, turn 2 and the overall average (FastChat's show_result: the mean
of every rated (question, turn) score), each a mean (sample std) over seeds of the per-trial score
at the grid point validation selected. Unrated judgments (score -1) are left out of every mean and
counted. Each judge's table says what its sanity check found; the HTML report adds a bar chart of
the categories per method."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pefteval.metrics import mean_std
from pefteval.reporting.fmt import save_figure
from pefteval.tasks.mt_bench import CATEGORIES

COLUMNS = (*CATEGORIES, "turn 1", "turn 2", "average")


def saved_judgments(out: Path) -> tuple[list[dict], list[dict]]:
    """The MT-Bench judgments and judge sanity checks under OUT/mt_bench (none without it)."""
    if not (out / "mt_bench").is_dir():
        return [], []
    from pefteval.judging.output import load_checks, load_judgments  # torch-free, and only where judged

    return load_judgments(out), list(load_checks(out).values())


def judge_identity(row: dict[str, Any]) -> tuple[str, str, str | None]:
    """(backend, model, host) of a judgment or sanity check; the prompt name varies within one judge."""
    judge = row.get("judge")  # a check's identity; in a judgment line FastChat's [model, prompt] pair
    info = row.get("judge_info") or (judge if isinstance(judge, dict) else {})
    return str(info.get("backend", "?")), str(info.get("model", "?")), info.get("host")


def describe_judge(identity: tuple[str, str, str | None]) -> str:
    backend, model, host = identity
    where = f" at {host}" if host else ""
    return f"{model} ({'in-process' if backend == 'local' else 'OpenAI-compatible endpoint'}{where})"


def trial_scores(rows: list[dict[str, Any]]) -> tuple[dict[str, float], int, int]:
    """One trial's scores under one judge: per category (both turns), per turn and overall, from its
    rated judgments; and how many judgments it has, rated or not."""
    rated = [r for r in rows if isinstance(r.get("score"), (int, float)) and r["score"] != -1]
    out: dict[str, float] = {}
    for category in CATEGORIES:
        values = [r["score"] for r in rated if r.get("category") == category]
        if values:
            out[category] = sum(values) / len(values)
    for turn in (1, 2):
        values = [r["score"] for r in rated if r.get("turn") == turn]
        if values:
            out[f"turn {turn}"] = sum(values) / len(values)
    if rated:
        out["average"] = sum(r["score"] for r in rated) / len(rated)
    return out, len(rows), len(rows) - len(rated)


@dataclass
class JudgeTable:
    identity: tuple[str, str, str | None]
    scores: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)  # method -> column -> mean, std
    seeds: dict[str, int] = field(default_factory=dict)  # trials judged per method
    unrated: dict[str, int] = field(default_factory=dict)
    judged: dict[str, int] = field(default_factory=dict)
    missing: dict[str, int] = field(default_factory=dict)  # selected trials this judge has not judged
    check: dict[str, Any] | None = None


@dataclass
class MTBenchTable:
    tasks: list[str]
    judges: list[JudgeTable]
    unjudged: dict[str, int]  # method -> selected trials no judge has judged
    max_new_tokens: set[int]
    questions: set[int]


def build_mt_bench(sel: Any, tasks: list[str], judgments: list[dict[str, Any]],
                   checks: list[dict[str, Any]]) -> MTBenchTable | None:
    """Table 2 from the selection (the trials at each method's selected grid point) and the saved
    judgments and sanity checks of ``OUT/mt_bench``."""
    if not tasks:
        return None
    selected: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for (task, method), (_hp, recs) in sel.chosen.items():
        if task in tasks:
            selected[method] += [r for r in recs if r.get("mt_bench")]
    by_judge: dict[tuple[str, str, str | None], dict[str, list[dict[str, Any]]]] = defaultdict(
        lambda: defaultdict(list))
    for row in judgments:
        by_judge[judge_identity(row)][str(row.get("model"))].append(row)
    tables = []
    judged_models: set[str] = set()
    for identity, per_model in by_judge.items():
        table = JudgeTable(identity, check=next((c for c in checks if judge_identity(c) == identity), None))
        for method, recs in selected.items():
            per_trial, unrated, judged, missing = [], 0, 0, 0
            for rec in recs:
                rows = per_model.get(rec["mt_bench"]["model_id"], [])
                if not rows:
                    missing += 1
                    continue
                judged_models.add(rec["mt_bench"]["model_id"])
                scores, n, bad = trial_scores(rows)
                per_trial.append(scores)
                judged, unrated = judged + n, unrated + bad
            if not per_trial:
                continue
            table.scores[method] = {c: mean_std([s[c] for s in per_trial if c in s]) for c in COLUMNS
                                    if any(c in s for s in per_trial)}
            table.seeds[method], table.unrated[method] = len(per_trial), unrated
            table.judged[method], table.missing[method] = judged, missing
        if table.scores:
            tables.append(table)
    unjudged = {m: sum(1 for r in recs if r["mt_bench"]["model_id"] not in judged_models)
                for m, recs in selected.items()}
    recs = [r for rs in selected.values() for r in rs]
    return MTBenchTable(tasks, tables, {m: n for m, n in unjudged.items() if n},
                        {r["mt_bench"].get("max_new_tokens") for r in recs} - {None},
                        {r["mt_bench"].get("questions") for r in recs} - {None})


def _cell(value: tuple[float, float] | None) -> str:
    if value is None or math.isnan(value[0]):
        return "–"
    mean, std = value
    return f"{mean:.2f} ({'–' if math.isnan(std) else f'{std:.2f}'})"


def judge_rows(table: JudgeTable, methods: list[str]) -> tuple[list[str], list[list[str]]]:
    headers = ["Method", *[c.capitalize() for c in COLUMNS], "Unrated"]
    rows = [[m, *[_cell(table.scores[m].get(c)) for c in COLUMNS], f"{table.unrated[m]} of {table.judged[m]}"]
            for m in methods if m in table.scores]
    return headers, rows


def check_line(check: dict[str, Any] | None) -> str:
    """What the judge's sanity check found, in one sentence."""
    if check is None:
        return "No sanity check of this judge is on record: run `pefteval judge OUT` to make one."
    means = check.get("means", {})
    described = ", ".join(f"{k} {v:.2f}" if isinstance(v, (int, float)) and not math.isnan(v) else f"{k} unrated"
                          for k, v in means.items())
    if check.get("verdict") == "incomplete" or check.get("complete") is False:
        return ("The judge's sanity check did not finish (the judging stopped early): run `pefteval judge OUT` "
                "to complete it before trusting these scores.")
    if check.get("verdict") == "can tell":
        return (f"Sanity check passed: the judge rated the GPT-4 reference answers clearly above deliberately bad "
                f"answers (mean ratings: {described}).")
    return (f"Sanity check FAILED: the judge cannot tell good from bad answers (mean ratings: {described}); "
            "its scores should not be trusted.")


def render_markdown(mt: MTBenchTable, methods: list[str], md_table: Any) -> list[str]:
    out: list[str] = []
    for table in mt.judges:
        out += [f"### MT-Bench (Table 2 shape), judge: {describe_judge(table.identity)}", ""]
        out += md_table(*judge_rows(table, methods))
        out += ["", f"- {check_line(table.check)}"]
        unrated = sum(table.unrated.values())
        seeds = ", ".join(f"{m}: {n}" for m, n in table.seeds.items())
        out.append(f"- Scores 1–10, mean (sample std) over seeds ({seeds} trial(s)); per category both turns; "
                   "'Average' is the mean of every rated (question, turn). "
                   f"{unrated} judgment(s) unrated (no [[rating]] after one retry), left out of the means.")
        missing = {m: n for m, n in table.missing.items() if n}
        if missing:
            out.append("- Not yet judged by this judge: " + ", ".join(f"{m} {n} trial(s)" for m, n in missing.items()))
        out.append("")
    if mt.unjudged:
        out += [f"- MT-Bench answers not judged yet: {', '.join(f'{m} {n} trial(s)' for m, n in mt.unjudged.items())}; "
                "run `pefteval judge OUT`.", ""]
    if mt.max_new_tokens and mt.max_new_tokens != {1024}:
        out += [f"- Answers were cut at {', '.join(str(n) for n in sorted(mt.max_new_tokens))} new tokens a turn "
                "(FastChat uses 1024): scores are not comparable with published MT-Bench scores.", ""]
    if mt.questions and mt.questions != {80}:
        out += [f"- {', '.join(str(n) for n in sorted(mt.questions))} of the 80 questions were answered.", ""]
    return out


def plot_categories(mt: MTBenchTable, methods: list[str], path: Path) -> Path | None:
    """Grouped bars of the eight category scores per method, one panel per judge (the HTML report's chart)."""
    if not mt.judges:
        return None
    # matplotlib only when a figure is drawn: importing pefteval never sets an application's backend
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(mt.judges), 1, figsize=(9.0, 3.6 * len(mt.judges)), squeeze=False)
    for ax, table in zip(axes[:, 0], mt.judges):
        shown = [m for m in methods if m in table.scores]
        width = 0.8 / max(1, len(shown))
        for i, method in enumerate(shown):
            means = [table.scores[method].get(c, (math.nan, math.nan)) for c in CATEGORIES]
            xs = [j + (i - (len(shown) - 1) / 2) * width for j in range(len(CATEGORIES))]
            ax.bar(xs, [m for m, _ in means], width, yerr=[0 if math.isnan(s) else s for _, s in means],
                   capsize=2, label=method)
        ax.set_xticks(range(len(CATEGORIES)), [c.capitalize() for c in CATEGORIES], fontsize=8)
        ax.set_ylim(0, 10)
        ax.set_ylabel("MT-Bench score (1–10)")
        trusted = table.check is not None and table.check.get("verdict") == "can tell"
        ax.set_title(f"judge: {describe_judge(table.identity)}"
                     + ("" if trusted else " (its sanity check did not pass: do not trust these scores)"), fontsize=9)
        ax.legend(fontsize=8, ncol=len(shown))
    return save_figure(fig, path)
