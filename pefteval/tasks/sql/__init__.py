"""SQL generation (Table 1): text to SQL with the schema as CREATE TABLE context, scored by
execution accuracy (exact match of a canonical rendering is reported beside it).

Offline files, under a data directory: ``spider/``: Spider (``dev.json`` as test;
``train_spider.json`` or, failing that, ``train_spider_spidersyn.json`` as train; ``tables.json``
for schemas; ``database/<db_id>/<db_id>.sqlite``). The paper's SQL data is sql-create-context
(question, CREATE TABLE context, SQL); Spider is put in that form: the context is built from
``tables.json`` (:func:`pefteval.tasks.sql.data.spider_schema_context`). From the hub:
``b-mc2/sql-create-context`` (a single train split; a seeded hold-out becomes the test split; no
databases).

The package: ``data`` (loading, schema context), ``normalize`` (canonical form, exact match,
identifier quoting, the query in a reply), ``sandbox`` (read-only execution on a real database),
``synthetic`` (execution on databases populated from the CREATE TABLE context). Here: the spec
(defined in ``data``, which renders the prompts), :func:`sql_execution_match`, which picks the real
or the populated databases for one example, the scorer and the registration.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pefteval.tasks.base import Scored
from pefteval.tasks.generation import GenExample, _rate, register_generation_task
from pefteval.tasks.sql.data import SQL, load_sql
from pefteval.tasks.sql.normalize import clean_sql_output, sql_exact_match
from pefteval.tasks.sql.sandbox import GoldQueryError, execution_match
from pefteval.tasks.sql.synthetic import execution_match_populated


def sql_execution_match(pred_sql: str, gold_sql: str, meta: Mapping[str, Any], **kwargs: Any) -> bool:
    """Execution match of one SQL example from its ``meta`` (see ``pefteval.tasks.sql.data``):
    on the real database at ``meta["db_path"]`` when it exists, else on databases populated from
    ``meta["schema"]``. ``kwargs`` go to the function used."""
    db_path = meta.get("db_path")
    if db_path and Path(db_path).is_file():
        real = {k: v for k, v in kwargs.items() if k in ("timeout_s", "max_rows")}
        return execution_match(pred_sql, gold_sql, db_path, **real)
    return execution_match_populated(pred_sql, gold_sql, meta["schema"], **kwargs)


def score_sql(predictions: Sequence[str], examples: Sequence[GenExample], adversarial: bool = False) -> Scored:
    """Execution accuracy (the generated query returns the gold query's result); a broken gold
    query (three in Spider train) cannot judge anything and is counted in ``gold_errors``."""
    queries = [clean_sql_output(p) for p in predictions]
    hits: list[float | None] = []
    for q, x in zip(queries, examples, strict=True):
        try:
            hits.append(float(sql_execution_match(q, x.target, x.meta)))
        except GoldQueryError:
            hits.append(None)
    n = len(examples)
    exact = sum(sql_exact_match(q, x.target) for q, x in zip(queries, examples)) / n if n else float("nan")
    return Scored({"accuracy": _rate(hits), "exact_match": exact, "n": n,
                   "gold_errors": sum(h is None for h in hits)}, hits)


def register_tasks() -> None:
    register_generation_task(SQL, load_sql, score_sql, ("accuracy", "exact_match"),
                             {"accuracy": "execution accuracy", "exact_match": "exact match"})
