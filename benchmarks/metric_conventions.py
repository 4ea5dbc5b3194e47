"""How many answers each scoring convention counts right: GSM8K under pefteval's own extraction,
lm-evaluation-harness's strict-match and flexible-extract and the original ``extract_answer``;
Spider under pefteval's execution match and test-suite-sql-eval's execution verdict.

GSM8K: the test split's gold solutions, then the same solutions with their final answer written in
other ways a model writes it (``#### 18.00``, ``The answer is $18.``, a continuation with a new
question, ...). Spider: the dev gold queries, then variants of them (DISTINCT dropped, DESC made
ASC, the first SELECT's columns reversed, LIMIT dropped), each on the queries it changes. One markdown
table per task; the rules are in ``pefteval/tasks/gsm8k.py`` and ``pefteval/tasks/sql/testsuite_eval.py``::

    .venv/bin/python benchmarks/metric_conventions.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

from pefteval.tasks.generation import GenExample
from pefteval.tasks.gsm8k import extract_gsm8k_answer, gsm8k_extract_answer, lm_eval_gsm8k_verdicts, load_gsm8k
from pefteval.tasks.sql import sql_execution_match, sql_test_suite_match
from pefteval.tasks.sql.data import load_sql
from pefteval.tasks.sql.sandbox import GoldQueryError

REPO_ROOT = Path(__file__).resolve().parents[1]
GSM8K_COLUMNS = ("pefteval accuracy", "lm-eval strict-match", "lm-eval flexible-extract", "GSM8K extract_answer")


def data_dir(arg: str | None) -> Path:
    path = Path(arg or os.environ.get("PEFTEVAL_DATA_DIR") or REPO_ROOT.parent / "shared" / "data")
    if not (path / "gsm8k" / "test.jsonl").is_file():
        sys.exit(f"GSM8K not found under {path}; pass --data-dir DIR (the directory holding gsm8k/ and spider/)")
    return path


# --- GSM8K ------------------------------------------------------------------------------------------

def _parts(x: GenExample) -> tuple[str, str]:
    """(reasoning before the '####' line, the answer number without commas)."""
    cut = x.target.rfind("####")
    return x.target[:cut].rstrip(), x.target[cut + 4:].strip().replace(",", "")


# each style rewrites a gold solution from (reasoning, answer)
GSM8K_STYLES: dict[str, Callable[[str, str], str]] = {
    "#### N": lambda r, n: f"{r}\n#### {n}",
    "#### N.00": lambda r, n: f"{r}\n#### {n}.00",
    "#### N.": lambda r, n: f"{r}\n#### {n}.",
    "#### $N": lambda r, n: f"{r}\n#### ${n}",
    "#### N with thousands commas": lambda r, n: f"{r}\n#### {int(n):,}",
    "The answer is N.": lambda r, n: f"{r}\nThe answer is {n}.",
    "The answer is $N.": lambda r, n: f"{r}\nThe answer is ${n}.",
    "The answer is **N**.": lambda r, n: f"{r}\nThe answer is **{n}**.",
    "reasoning only, no final line": lambda r, n: r,
    "#### N, then a new Question": lambda r, n: f"{r}\n#### {n}\n\nQuestion: What is 2 + 2?\nAnswer: 2 + 2 = 4\n#### 4",
    "#### N+1, then a corrected #### N": lambda r, n: f"{r}\n#### {Decimal(n) + 1}\nCorrection:\n#### {n}",
    "#### N+1 (wrong)": lambda r, n: f"{r}\n#### {Decimal(n) + 1}",
}


def gsm8k_verdicts(prediction: str, x: GenExample) -> tuple[bool, bool, bool, bool]:
    """(pefteval, strict-match, flexible-extract, extract_answer), as the task's scorer judges."""
    strict, flexible = lm_eval_gsm8k_verdicts(prediction, x.target)
    return (extract_gsm8k_answer(prediction) == x.meta["gold"], strict, flexible,
            gsm8k_extract_answer(prediction) == gsm8k_extract_answer(x.target))


def gsm8k_table(examples: list[GenExample]) -> list[str]:
    rows = [("gold solution", [x.target for x in examples])]
    rows += [(name, [style(*_parts(x)) for x in examples]) for name, style in GSM8K_STYLES.items()]
    lines = [f"GSM8K test split, {len(examples)} problems: how many each convention counts right", "",
             "| Output | " + " | ".join(GSM8K_COLUMNS) + " |", "|---|" + "---:|" * len(GSM8K_COLUMNS)]
    for name, predictions in rows:
        counts = [0] * len(GSM8K_COLUMNS)
        for prediction, x in zip(predictions, examples):
            for i, right in enumerate(gsm8k_verdicts(prediction, x)):
                counts[i] += right
        cells = [f"{c} ({100 * c / len(examples):.1f} %)" for c in counts]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


# --- Spider -------------------------------------------------------------------------------------------

def _reverse_columns(sql: str) -> str:
    match = re.match(r"(?is)select\s+(.*?)\s+from\s", sql)
    if not match or "," not in match.group(1) or "(" in match.group(1):
        return sql
    columns = [c.strip() for c in match.group(1).split(",")]
    return sql[:match.start(1)] + ", ".join(columns[::-1]) + sql[match.end(1):]


SQL_VARIANTS: dict[str, Callable[[str], str]] = {
    "gold query": lambda q: q,
    "DISTINCT dropped": lambda q: re.sub(r"(?i)\bdistinct\s+", "", q),
    "DESC made ASC": lambda q: re.sub(r"(?i)\bdesc\b", "ASC", q),
    "first SELECT's columns reversed": _reverse_columns,  # in a compound query the other SELECTs keep theirs
    "LIMIT dropped": lambda q: re.sub(r"(?i)\s+limit\s+\d+", "", q),
}


def _judge(match: Callable[..., bool], pred: str, x: GenExample) -> bool | None:
    try:
        return match(pred, x.target, x.meta)
    except GoldQueryError:
        return None


def sql_table(examples: list[GenExample]) -> list[str]:
    lines = [f"Spider dev, {len(examples)} questions ({sum(bool(x.meta['db_path']) for x in examples)} with their "
             "database, the others on databases populated from the schema): variants of the gold query, each on "
             "the queries it changes", "",
             "| Prediction | queries | judged | pefteval execution | test-suite exec | s |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, variant in SQL_VARIANTS.items():
        start = time.perf_counter()
        changed = [(variant(x.target), x) for x in examples]
        changed = [(p, x) for p, x in changed if name == "gold query" or p != x.target]
        own = [_judge(sql_execution_match, p, x) for p, x in changed]
        suite = [_judge(sql_test_suite_match, p, x) for p, x in changed]
        judged = [(a, b) for a, b in zip(own, suite) if a is not None and b is not None]
        n = len(judged)
        cells = [f"{sum(v[i] for v in judged)} ({100 * sum(v[i] for v in judged) / max(n, 1):.1f} %)" for i in (0, 1)]
        lines.append(f"| {name} | {len(changed)} | {n} | {cells[0]} | {cells[1]} | {time.perf_counter() - start:.1f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir")
    parser.add_argument("--skip-sql", action="store_true", help="GSM8K only (Spider takes about a minute)")
    args = parser.parse_args()
    root = data_dir(args.data_dir)
    print("\n".join(gsm8k_table(load_gsm8k(root)["test"])))
    if not args.skip_sql and (root / "spider").is_dir():
        print()
        print("\n".join(sql_table(load_sql(root)["test"])))


if __name__ == "__main__":
    main()
