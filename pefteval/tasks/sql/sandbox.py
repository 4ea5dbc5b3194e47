"""Execution match on a real SQLite database, sandboxed.

The predicted and the gold query run on a database opened read-only, behind an authorizer that
allows nothing but reading, and within bounds on time, memory and result size; a prediction that
fails, tries to write, or goes past a bound is wrong and changes nothing. A gold query that does
so raises :class:`GoldQueryError`.

The bounds, per query (the 7,876 Spider dev and train gold queries whose database is at hand stay
far inside them: at most 10,507 rows, 169 KB of result, 213 bytes a value, 577 bytes of SQL,
4.4 MB of SQLite heap, 0.25 s):

- time, ``DEFAULT_TIMEOUT_S`` (5 s, the ``timeout_s`` argument): from the first step of the
  statement to its last row, a sort included (it runs inside SQLite before the first row): a
  progress handler, called every 1,000 SQLite instructions, interrupts SQLite past the deadline,
  and each fetched row is checked against it (preparing the statement is bounded by its length);
- rows, ``DEFAULT_MAX_ROWS`` (100,000, the ``max_rows`` argument);
- result size, ``MAX_RESULT_BYTES`` (32 MB): the values fetched, each counted as 8 bytes (a
  pointer in the row) plus its length for text (characters) and blobs;
- one value, ``MAX_VALUE_BYTES`` (1 MB): SQLite's own ``SQLITE_LIMIT_LENGTH`` on a string, a
  blob or a stored row, so ``zeroblob``, ``randomblob``, ``group_concat`` and the like fail
  inside SQLite before they allocate; the SQL text is bounded by ``MAX_SQL_BYTES`` (10 KB) the
  same way (these two need Python 3.11's ``Connection.setlimit``);
- SQLite's heap, ``MAX_HEAP_BYTES`` (64 MB) over what SQLite held before the query: SQLite's hard
  heap limit, for the duration of the query only (see :func:`_heap_bounded`). It bounds what
  the limits above do not: a row of many large values, a wide or deep expression. A sort or a
  temporary table past SQLite's page cache (2 MB) goes to a temporary file, deleted on close,
  rather than to memory; the time limit bounds how much is written.

A query over a bound fails with a :class:`QueryFailed` that names it ("more than 100000 rows",
"result over 32 MB", "a value or row over 1 MB", "over the 64 MB memory limit", "over the 5 s
time limit").
"""

from __future__ import annotations

import _sqlite3
import ctypes
import math
import os
import re
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from pefteval.tasks.sql.normalize import _parse_one_sqlite, _split_quoted


class GoldQueryError(ValueError):
    """The gold query itself fails (error, or past a bound: time, rows, size, memory): the example
    cannot be scored by execution. Callers decide whether to skip or count such examples."""


class QueryFailed(Exception):
    """A query did not run to completion on the read-only connection, or went past a bound."""


_ALLOWED_ACTIONS = frozenset({sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION,
                              sqlite3.SQLITE_RECURSIVE})
_DENIED_FUNCTIONS = frozenset({"load_extension", "readfile", "writefile", "edit", "fts3_tokenizer"})
DEFAULT_TIMEOUT_S = 5.0
DEFAULT_MAX_ROWS = 100_000
MAX_RESULT_BYTES = 32_000_000
MAX_VALUE_BYTES = 1_000_000
MAX_SQL_BYTES = 10_000
MAX_HEAP_BYTES = 64_000_000
_PROGRESS_EVERY = 1000  # SQLite instructions between two looks at the deadline

# Set on each read-only connection, by name: the constants only exist from Python 3.11 on. The
# others stay at SQLite's defaults: expression depth (1000) and compound SELECT terms (500) are
# safe and further bounded by the SQL length, and lowering the column limit would make a database
# with a wider table unreadable ("malformed database schema").
_SQLITE_LIMITS = {
    "SQLITE_LIMIT_LENGTH": MAX_VALUE_BYTES,
    "SQLITE_LIMIT_SQL_LENGTH": MAX_SQL_BYTES,
    "SQLITE_LIMIT_ATTACHED": 0,  # no other database (the authorizer denies ATTACH as well)
}


def _heap_limit_api() -> tuple[Callable[[int], int], Callable[[int], int], Callable[[], int]] | None:
    """``sqlite3_hard_heap_limit64``, ``sqlite3_soft_heap_limit64`` and ``sqlite3_memory_used`` of the
    SQLite that the sqlite3 module runs on, or None where they cannot be reached (an SQLite older
    than 3.31, a build that does not export them). Looked up through the ``_sqlite3`` extension's
    own handle, which resolves to the very copy of SQLite it is linked with. Not ``PRAGMA
    hard_heap_limit``: it can only lower the limit, so the previous one could never be put back."""
    try:
        lib = ctypes.CDLL(getattr(_sqlite3, "__file__", None))
        hard, soft, used = lib.sqlite3_hard_heap_limit64, lib.sqlite3_soft_heap_limit64, lib.sqlite3_memory_used
    except (OSError, AttributeError):
        return None
    for limit in (hard, soft):
        limit.argtypes, limit.restype = [ctypes.c_int64], ctypes.c_int64
    used.argtypes, used.restype = [], ctypes.c_int64
    return hard, soft, used


_HEAP_API = _heap_limit_api()
_HEAP_LOCK = threading.Lock()


@contextmanager
def _heap_bounded() -> Iterator[None]:
    """SQLite's hard heap limit at ``MAX_HEAP_BYTES`` over its present use (or lower, where a lower
    limit is already set) while the block runs, then the hard and the soft limit as they were.
    SQLite fails an allocation past it with SQLITE_NOMEM (MemoryError in Python). The limits are
    process-wide: queries hold a lock so that one restores what the one before it found, and any
    other SQLite use in the process shares the headroom meanwhile. Without the API, no heap bound."""
    if _HEAP_API is None:
        yield
        return
    hard, soft, used = _HEAP_API
    with _HEAP_LOCK:
        prior_hard, prior_soft = hard(-1), soft(-1)
        limit = used() + MAX_HEAP_BYTES
        hard(limit if prior_hard == 0 else min(prior_hard, limit))  # also lowers the soft limit to it
        try:
            yield
        finally:
            hard(prior_hard)
            soft(prior_soft)  # after the hard one: SQLite keeps the soft limit at or below it


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
    transactions); with SQLite's limits on a value and on the SQL text (``_SQLITE_LIMITS``)
    where Python has ``Connection.setlimit`` (3.11+; before it the heap limit still stops a
    huge value)."""
    path = Path(db_path)
    if not path.is_file():
        raise FileNotFoundError(f"SQLite database not found: {path}")
    conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, isolation_level=None)
    conn.execute("PRAGMA query_only=ON")
    if hasattr(conn, "setlimit"):
        for name, value in _SQLITE_LIMITS.items():
            conn.setlimit(getattr(sqlite3, name), value)
    conn.set_authorizer(_authorizer)
    return conn


def _normalize_value(value: Any) -> Any:
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        value = round(value, 6)
        return 0.0 if value == 0 else value
    return value


def _failure(err: Exception, timed_out: bool, timeout_s: float) -> QueryFailed:
    """The :class:`QueryFailed` for an error out of SQLite, naming the bound it went past if any."""
    if timed_out:  # the progress handler's interrupt, or whatever the deadline cut short
        return QueryFailed(f"over the {timeout_s:g} s time limit")
    if getattr(err, "sqlite_errorname", None) == "SQLITE_TOOBIG":  # Python 3.11+
        return QueryFailed(f"a value or row over {MAX_VALUE_BYTES / 1e6:g} MB")
    if isinstance(err, MemoryError):
        return QueryFailed(f"over the {MAX_HEAP_BYTES / 1e6:g} MB memory limit")
    return QueryFailed(f"{type(err).__name__}: {err}")


def run_query(conn: sqlite3.Connection, sql: str, timeout_s: float = DEFAULT_TIMEOUT_S,
              max_rows: int = DEFAULT_MAX_ROWS, round_floats: bool = True) -> tuple[int, list[tuple]]:
    """(number of columns, rows) of one statement; floats rounded to 6 decimals, or kept as SQLite
    returns them with ``round_floats=False`` (test-suite-sql-eval's convention: ``testsuite_eval``). Raises
    :class:`QueryFailed` on any error and past any bound of the module docstring: ``timeout_s``,
    ``max_rows`` rows, ``MAX_RESULT_BYTES``, ``MAX_VALUE_BYTES``, ``MAX_HEAP_BYTES``.

    Rows are fetched one at a time and each is checked against the deadline, the row count and
    the size before it is kept: ``fetchmany`` builds a whole batch before it can be looked at, and
    a batch of rows of 1 MB values is gigabytes. What is kept is then at most ``max_rows`` rows
    and ``MAX_RESULT_BYTES``, so comparing two results is quick."""
    rows: list[tuple] = []
    size = 0
    cursor = conn.cursor()
    with _heap_bounded():  # first, so that waiting for another thread's query takes none of this one's time
        deadline = time.monotonic() + timeout_s
        conn.set_progress_handler(lambda: int(time.monotonic() > deadline), _PROGRESS_EVERY)
        try:
            cursor.execute(sql)
            for row in cursor:
                size += 8 * len(row) + sum([len(v) for v in row if isinstance(v, (str, bytes))])
                if time.monotonic() > deadline:
                    raise QueryFailed(f"over the {timeout_s:g} s time limit")
                if len(rows) == max_rows:
                    raise QueryFailed(f"more than {max_rows} rows")
                if size > MAX_RESULT_BYTES:
                    raise QueryFailed(f"result over {MAX_RESULT_BYTES / 1e6:g} MB")
                rows.append(tuple(_normalize_value(v) for v in row) if round_floats else tuple(row))
            width = len(cursor.description or ())
        except QueryFailed:
            raise
        except Exception as err:  # noqa: BLE001 - sqlite3 errors, MemoryError (the heap limit), several statements, ...
            raise _failure(err, time.monotonic() > deadline, timeout_s) from None
        finally:
            cursor.close()
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
    that errors, is not a single read-only statement, or goes past a bound (``timeout_s``,
    ``max_rows``, the others of the module docstring) is wrong; the database is never modified
    (see :func:`open_readonly`). Raises :class:`GoldQueryError` when the gold query fails or
    goes past a bound, and FileNotFoundError when the database is missing.
    """
    path = Path(db_path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"SQLite database not found: {path}")
    return _match_on_file(pred_sql, gold_sql, path, timeout_s, max_rows, has_top_level_order_by(gold_sql), str(path))
