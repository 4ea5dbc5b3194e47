"""Execution match on a real SQLite database, sandboxed.

The predicted and the gold query run on a database opened read-only, behind an authorizer that
allows nothing but reading, under a time limit and a row limit; a prediction that fails, tries
to write, or runs out of time is wrong and changes nothing. A gold query that fails raises
:class:`GoldQueryError`.
"""

from __future__ import annotations

import math
import os
import re
import sqlite3
import time
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Any

from pefteval.tasks.sql.normalize import _parse_one_sqlite, _split_quoted


class GoldQueryError(ValueError):
    """The gold query itself fails (error, time limit, too many rows): the example cannot be
    scored by execution. Callers decide whether to skip or count such examples."""


class QueryFailed(Exception):
    """A query did not run to completion on the read-only connection."""


_ALLOWED_ACTIONS = frozenset({sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION,
                              sqlite3.SQLITE_RECURSIVE})
_DENIED_FUNCTIONS = frozenset({"load_extension", "readfile", "writefile", "edit", "fts3_tokenizer"})
DEFAULT_TIMEOUT_S = 5.0
DEFAULT_MAX_ROWS = 100_000


def _authorizer(action: int, arg1: str | None, arg2: str | None, db_name: str | None, source: str | None) -> int:
    """Allow reading only: SELECT, column reads, (safe) functions and recursive CTEs."""
    if action not in _ALLOWED_ACTIONS:
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() in _DENIED_FUNCTIONS:
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


def open_readonly(db_path: str | os.PathLike) -> sqlite3.Connection:
    """A connection that cannot change the database: opened with ``mode=ro``, ``query_only`` on,
    and an authorizer that denies every action but reading (writes, DDL, ATTACH, PRAGMA,
    transactions)."""
    path = Path(db_path)
    if not path.is_file():
        raise FileNotFoundError(f"SQLite database not found: {path}")
    conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, isolation_level=None)
    conn.execute("PRAGMA query_only=ON")
    conn.set_authorizer(_authorizer)
    return conn


def _normalize_value(value: Any) -> Any:
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        value = round(value, 6)
        return 0.0 if value == 0 else value
    return value


def run_query(conn: sqlite3.Connection, sql: str, timeout_s: float = DEFAULT_TIMEOUT_S,
              max_rows: int = DEFAULT_MAX_ROWS) -> tuple[int, list[tuple]]:
    """(number of columns, rows) of one statement; floats rounded to 6 decimals. Raises
    :class:`QueryFailed` on any error, on the time limit, or past ``max_rows`` rows."""
    deadline = time.monotonic() + timeout_s
    conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 1000)
    try:
        cursor = conn.execute(sql)
        rows: list[tuple] = []
        while True:
            chunk = cursor.fetchmany(1000)
            if not chunk:
                break
            rows.extend(tuple(_normalize_value(v) for v in row) for row in chunk)
            if len(rows) > max_rows:
                raise QueryFailed(f"more than {max_rows} rows")
        width = len(cursor.description or ())
    except QueryFailed:
        raise
    except Exception as err:  # noqa: BLE001 - sqlite3 errors, warnings (several statements), ValueError, ...
        if time.monotonic() > deadline:
            raise QueryFailed(f"time limit of {timeout_s:g} s reached") from None
        raise QueryFailed(f"{type(err).__name__}: {err}") from None
    finally:
        conn.set_progress_handler(None, 0)
    return width, rows


def has_top_level_order_by(sql: str) -> bool:
    """Whether the outermost query orders its result (then row order is compared too)."""
    tree = _parse_one_sqlite(sql.strip().rstrip(";"))
    if tree is not None:
        return tree.args.get("order") is not None
    depth, flat = 0, []
    for text, literal in _split_quoted(sql.lower()):
        if literal:
            continue
        for ch in text:
            depth += ch == "("
            depth -= ch == ")"
            flat.append(ch if depth == 0 else " ")
    return re.search(r"\border\s+by\b", "".join(flat)) is not None


def _same_result(pred: tuple[int, list[tuple]], gold: tuple[int, list[tuple]], ordered: bool) -> bool:
    if pred[0] != gold[0]:
        return False
    return pred[1] == gold[1] if ordered else Counter(pred[1]) == Counter(gold[1])


def _run_prediction(conn: sqlite3.Connection, sql: str, timeout_s: float, max_rows: int):
    try:
        return run_query(conn, sql, timeout_s, max_rows)
    except QueryFailed:
        return None


def _run_gold(conn: sqlite3.Connection, sql: str, timeout_s: float, max_rows: int, where: str):
    try:
        return run_query(conn, sql, timeout_s, max_rows)
    except QueryFailed as err:
        raise GoldQueryError(f"gold query fails on {where}: {err}; query: {sql}") from None


@lru_cache(maxsize=2048)
def _gold_on_file(path: str, stamp: tuple[int, int], gold: str, timeout_s: float, max_rows: int, where: str):
    """The gold result on one database file, cached per (file, its mtime and size, query, limits)."""
    conn = open_readonly(path)
    try:
        return _run_gold(conn, gold, timeout_s, max_rows, where)
    finally:
        conn.close()


def _match_on_file(pred_sql: str, gold_sql: str, path: Path, timeout_s: float, max_rows: int, ordered: bool,
                   where: str) -> bool:
    stat = path.stat()
    gold = _gold_on_file(str(path), (stat.st_mtime_ns, stat.st_size), gold_sql, timeout_s, max_rows, where)
    conn = open_readonly(path)
    try:
        pred = _run_prediction(conn, pred_sql, timeout_s, max_rows)
    finally:
        conn.close()
    return pred is not None and _same_result(pred, gold, ordered)


def execution_match(pred_sql: str, gold_sql: str, db_path: str | os.PathLike, timeout_s: float = DEFAULT_TIMEOUT_S,
                    max_rows: int = DEFAULT_MAX_ROWS) -> bool:
    """Whether the predicted query returns the gold query's result on the database at ``db_path``.

    Results compare as multisets of rows (row order ignored) unless the gold query has a
    top-level ORDER BY; the number of columns must agree, column order counts. A predicted query
    that errors, is not a single read-only statement, or runs past ``timeout_s`` is wrong; the
    database is never modified (see :func:`open_readonly`). Raises :class:`GoldQueryError` when
    the gold query fails and FileNotFoundError when the database is missing.
    """
    path = Path(db_path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"SQLite database not found: {path}")
    return _match_on_file(pred_sql, gold_sql, path, timeout_s, max_rows, has_top_level_order_by(gold_sql), str(path))
