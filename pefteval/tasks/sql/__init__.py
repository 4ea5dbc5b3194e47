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
``synthetic`` (execution on databases populated from the CREATE TABLE context),
``testsuite_eval`` (the execution verdict of test-suite-sql-eval, the convention of published Spider
tables). Here: the spec (defined in ``data``, which renders the prompts), :func:`sql_execution_match`
and :func:`sql_test_suite_match`, which pick the real or the populated databases for one example,
the scorer and the registration.
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
from pefteval.tasks.sql.synthetic import execution_match_populated, populated_databases, query_literals
from pefteval.tasks.sql.testsuite_eval import suite_exec_match, suite_exec_match_on

_REAL_DB_OPTIONS = ("timeout_s", "max_rows")


def sql_execution_match(pred_sql: str, gold_sql: str, meta: Mapping[str, Any], **kwargs: Any) -> bool:
    """Execution match of one SQL example from its ``meta`` (see ``pefteval.tasks.sql.data``):
    on the real database at ``meta["db_path"]`` when it exists, else on databases populated from
    ``meta["schema"]``. ``kwargs`` go to the function used."""
    db_path = meta.get("db_path")
    if db_path and Path(db_path).is_file():
        real = {k: v for k, v in kwargs.items() if k in _REAL_DB_OPTIONS}
        return execution_match(pred_sql, gold_sql, db_path, **real)
    return execution_match_populated(pred_sql, gold_sql, meta["schema"], **kwargs)


def sql_test_suite_match(pred_sql: str, gold_sql: str, meta: Mapping[str, Any], keep_distinct: bool = False,
                         **kwargs: Any) -> bool:
    """test-suite-sql-eval's execution verdict of one SQL example (``testsuite_eval``): on the real
    database at ``meta["db_path"]`` and the other databases of its folder when it exists, else on
    the databases populated from ``meta["schema"]`` that :func:`sql_execution_match` uses.
    ``kwargs``: ``timeout_s``, ``max_rows`` and, for populated databases, the options of
    :func:`pefteval.tasks.sql.synthetic.populated_databases`."""
    limits = {k: v for k, v in kwargs.items() if k in _REAL_DB_OPTIONS}
    db_path = meta.get("db_path")
    if db_path and Path(db_path).is_file():
        return suite_exec_match(pred_sql, gold_sql, db_path, keep_distinct, **limits)
    build = {k: v for k, v in kwargs.items() if k not in _REAL_DB_OPTIONS}
    paths = populated_databases(meta["schema"], query_literals(gold_sql), **build)
    return suite_exec_match_on(pred_sql, gold_sql, paths, keep_distinct, where="a database populated from the schema",
                               **limits)


def _verdict(match: Any, query: str, example: GenExample) -> float | None:
    """1.0 or 0.0 by ``match``; None when the gold query cannot judge (:class:`GoldQueryError`)."""
    try:
        return float(match(query, example.target, example.meta))
    except GoldQueryError:
        return None


def score_sql(predictions: Sequence[str], examples: Sequence[GenExample], adversarial: bool = False) -> Scored:
    """Execution accuracy (the generated query returns the gold query's result); a broken gold
    query (three in Spider train) cannot judge anything and is counted in ``gold_errors``.
    ``test_suite_exec`` is the share right under test-suite-sql-eval's rules (column permutations,
    DISTINCT dropped, bags unless the gold query says ORDER BY: ``testsuite_eval``), over the
    examples whose gold query runs under them."""
    queries = [clean_sql_output(p) for p in predictions]
    hits = [_verdict(sql_execution_match, q, x) for q, x in zip(queries, examples, strict=True)]
    suite = [_verdict(sql_test_suite_match, q, x) for q, x in zip(queries, examples)]
    n = len(examples)
    exact = sum(sql_exact_match(q, x.target) for q, x in zip(queries, examples)) / n if n else float("nan")
    return Scored({"accuracy": _rate(hits), "exact_match": exact, "test_suite_exec": _rate(suite), "n": n,
                   "gold_errors": sum(h is None for h in hits)}, hits)


def register_tasks() -> None:
    register_generation_task(SQL, load_sql, score_sql, ("accuracy", "exact_match", "test_suite_exec"),
                             {"accuracy": "execution accuracy", "exact_match": "exact match",
                              "test_suite_exec": "test-suite exec"})
