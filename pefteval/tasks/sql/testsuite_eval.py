"""Execution match as test-suite-sql-eval judges it (Zhong, Yu and Klein, 2020; repository
``taoyds/test-suite-sql-eval``), reimplemented from its rules so that a Spider score can be set
beside published tables. pefteval's own :func:`pefteval.tasks.sql.sandbox.execution_match`
differs by design: there column order counts, DISTINCT is kept, rows are ordered only under a
top-level ORDER BY and floats compare rounded to 6 decimals.

The rules, as that repository's ``evaluation.py`` and ``exec_eval.py`` apply them with their
defaults (``--plug_value`` and ``--keep_distinct`` off):

1. ``evaluation.py`` ``evaluate``: every ``value`` in the predicted query becomes ``1`` (a
   placeholder rewrite for systems that predict no values: case-sensitive, anywhere in the text,
   the gold query untouched).
2. ``exec_eval.py`` ``postprocess``: ``> =``, ``< =`` and ``! =`` become ``>=``, ``<=`` and
   ``!=`` in both queries.
3. ``exec_eval.py`` ``eval_exec_match`` with ``keep_distinct`` off calls ``parse.py``
   ``remove_distinct``: every token ``distinct`` (any case) is dropped from both queries, the one
   inside ``count(DISTINCT x)`` included; quoted text is a token of its own and stays.
4. ``eval_exec_match``: row order matters when ``'order by'`` occurs anywhere in the lower-cased
   gold query (after 2 and 3), a subquery's or a literal's included; otherwise results are bags.
5. ``exec_eval.py`` ``exec_on_db_``: ``replace_cur_year`` turns ``YEAR(CURDATE())`` into ``2020``
   before a query runs; text is decoded with undecodable bytes dropped (its ``text_factory``).
6. ``eval_exec_match``: the queries run on every database in the folder of the example's database
   (each file whose name contains ``.sqlite``): the test suite's distilled databases where they
   have been put there, else Spider's one database. The prediction must agree on each; one that
   fails to run is wrong; a gold query that fails is an error (an assertion there,
   :class:`GoldQueryError` here).
7. ``exec_eval.py`` ``result_eq``: two empty results are equal whatever their columns; results with
   different row or column counts are not; otherwise they are equal when some permutation of the
   predicted columns makes the rows equal, as lists when order matters, else as multisets. Values
   compare by Python equality (``1 == 1.0``), unrounded.

What stays pefteval's: every query runs through the sandbox (``sandbox.py``: read-only, one
statement, bounds on time, rows, result size, value size and memory), so a prediction past a bound
is wrong; test-suite allows 60 s a query where the sandbox allows ``timeout_s`` (5 s by default).
Where an example has no database (sql-create-context), the databases populated from its schema
(:func:`pefteval.tasks.sql.synthetic.populated_databases`, the ones pefteval's own match uses)
stand in for the test suite. File-format steps of ``evaluation.py`` (one query a line, cut at a
tab) do not apply to generated text and are not copied.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from pefteval.tasks.base import record_data_file
from pefteval.tasks.sql.sandbox import (
    DEFAULT_MAX_ROWS,
    DEFAULT_TIMEOUT_S,
    GoldQueryError,
    QueryFailed,
    open_readonly,
    run_query,
)

# --- query rewrites (rules 1-5) ---------------------------------------------------------------

_CUR_YEAR = re.compile(r"YEAR\s*\(\s*CURDATE\s*\(\s*\)\s*\)\s*", re.IGNORECASE)  # exec_eval.py replace_cur_year
_WORD_DISTINCT = re.compile(r"(?<!\w)distinct(?!\w)", re.IGNORECASE)
_CLOSING = {"'": "'", '"': '"', "`": "`", "[": "]"}


def plug_placeholder_values(pred_sql: str) -> str:
    """Rule 1 (``evaluation.py`` ``evaluate``: ``p_str.replace("value", "1")``)."""
    return pred_sql.replace("value", "1")


def postprocess(sql: str) -> str:
    """Rule 2 (``exec_eval.py`` ``postprocess``): ``> =``, ``< =``, ``! =`` closed up."""
    return sql.replace("> =", ">=").replace("< =", "<=").replace("! =", "!=")


def replace_cur_year(sql: str) -> str:
    """Rule 5 (``exec_eval.py`` ``replace_cur_year``): ``YEAR(CURDATE())`` becomes ``2020``."""
    return _CUR_YEAR.sub("2020", sql)


def _unquoted_pieces(sql: str) -> list[tuple[str, bool]]:
    """``sql`` cut into (text, is_quoted_or_comment) pieces: '...' and "..." (doubled quote an
    escape), `...`, [...], ``--`` to the end of the line and ``/* */``. An unclosed piece runs to
    the end."""
    pieces: list[tuple[str, bool]] = []
    i = start = 0
    n = len(sql)
    while i < n:
        ch = sql[i]
        if ch in _CLOSING or sql.startswith(("--", "/*"), i):
            if i > start:
                pieces.append((sql[start:i], False))
            if ch in _CLOSING:
                close, j = _CLOSING[ch], i + 1
                while j < n:
                    if sql[j] == close:
                        if close in "'\"" and j + 1 < n and sql[j + 1] == close:
                            j += 2
                            continue
                        break
                    j += 1
                end = j + 1
            elif sql.startswith("--", i):
                newline = sql.find("\n", i)
                end = n if newline < 0 else newline
            else:
                close_at = sql.find("*/", i + 2)
                end = n if close_at < 0 else close_at + 2
            pieces.append((sql[i:end], True))
            i = start = end
        else:
            i += 1
    if start < n:
        pieces.append((sql[start:], False))
    return pieces


def remove_distinct(sql: str) -> str:
    """Rule 3 (``parse.py`` ``remove_distinct``: the query's tokens joined back without those whose
    value is ``distinct``): each word ``distinct`` outside quotes and comments is dropped, the
    whitespace around it kept (``SELECT DISTINCT a`` -> ``SELECT  a``). Quoted text and comments
    are single tokens there, so a ``'distinct'`` literal stays."""
    return "".join(text if quoted else _WORD_DISTINCT.sub("", text) for text, quoted in _unquoted_pieces(sql))


def order_matters(gold_sql: str) -> bool:
    """Rule 4 (``exec_eval.py`` ``eval_exec_match``: ``'order by' in g_str.lower()``)."""
    return "order by" in gold_sql.lower()


def prepare_queries(pred_sql: str, gold_sql: str, keep_distinct: bool = False) -> tuple[str, str]:
    """The two queries as ``eval_exec_match`` compares them (rules 1-3); ``keep_distinct`` is its
    ``--keep_distinct`` flag."""
    pred, gold = postprocess(plug_placeholder_values(pred_sql)), postprocess(gold_sql)
    if not keep_distinct:
        pred, gold = remove_distinct(pred), remove_distinct(gold)
    return pred, gold


# --- result equivalence (rule 7) -----------------------------------------------------------------

def results_equivalent(gold: Sequence[tuple], pred: Sequence[tuple], ordered: bool) -> bool:
    """Whether two results are the same denotation under ``exec_eval.py`` ``result_eq``: both
    empty; or the same numbers of rows and columns and a permutation of ``pred``'s columns under
    which the rows are equal (as lists when ``ordered``, else as multisets).

    ``result_eq`` enumerates column permutations, pruned by sampled rows; here the search is exact
    and deterministic: a predicted column can stand for a gold column only when their values agree
    (as sequences when ordered, as multisets otherwise), columns with identical values are tried
    once, and in the unordered case every partial assignment must already give the gold rows'
    projection as a multiset. The verdict is the same: whether such a permutation exists."""
    if not gold and not pred:
        return True
    if len(gold) != len(pred):
        return False
    width = len(gold[0])
    if len(pred[0]) != width:
        return False
    gold_cols = [tuple(row[i] for row in gold) for i in range(width)]
    pred_cols = [tuple(row[j] for row in pred) for j in range(width)]
    if ordered:  # a column then has to match a gold column value for value, row for row
        return Counter(gold_cols) == Counter(pred_cols)
    gold_bags = [Counter(c) for c in gold_cols]
    pred_bags = [Counter(c) for c in pred_cols]
    gold_prefix = [Counter(tuple(row[:k + 1]) for row in gold) for k in range(width)]
    chosen: list[int] = []
    used = [False] * width

    def extend(k: int) -> bool:
        if k == width:
            return True
        tried: set[tuple] = set()
        for j in range(width):
            if used[j] or pred_bags[j] != gold_bags[k] or pred_cols[j] in tried:
                continue
            tried.add(pred_cols[j])
            chosen.append(j)
            if Counter(tuple(row[c] for c in chosen) for row in pred) == gold_prefix[k]:
                used[j] = True
                if extend(k + 1):
                    return True
                used[j] = False
            chosen.pop()
        return False

    return extend(0)


# --- running the queries (rules 5 and 6), through the sandbox -------------------------------------

def suite_databases(db_path: str | os.PathLike) -> list[Path]:
    """Rule 6: the databases ``eval_exec_match`` compares on, every file of ``db_path``'s folder
    whose name contains ``.sqlite`` (sorted, so the order is fixed). Each one is recorded by the
    active data-read trackers (``db_path`` itself is recorded when the example is loaded)."""
    path = Path(db_path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"SQLite database not found: {path}")
    found = sorted(p for p in path.parent.iterdir() if ".sqlite" in p.name and p.is_file())
    for other in found:
        if other != path:
            record_data_file(other)
    return found


def _run(path: Path, sql: str, timeout_s: float, max_rows: int) -> list[tuple]:
    conn = open_readonly(path)
    conn.text_factory = lambda b: b.decode(errors="ignore")  # exec_eval.py get_cursor_from_path
    try:
        return run_query(conn, replace_cur_year(sql), timeout_s, max_rows, round_floats=False)[1]
    finally:
        conn.close()


@lru_cache(maxsize=1024)
def _gold_rows(path: str, stamp: tuple[int, int], gold_sql: str, timeout_s: float, max_rows: int,
               where: str) -> list[tuple]:
    """The gold result on one database file, cached per (file, its mtime and size, query, limits)."""
    try:
        return _run(Path(path), gold_sql, timeout_s, max_rows)
    except QueryFailed as err:
        raise GoldQueryError(f"gold query fails on {where} (test-suite rules): {err}; query: {gold_sql}") from None


def suite_exec_match_on(pred_sql: str, gold_sql: str, paths: Sequence[Path], keep_distinct: bool = False,
                        timeout_s: float = DEFAULT_TIMEOUT_S, max_rows: int = DEFAULT_MAX_ROWS,
                        where: str | None = None) -> bool:
    """The ``eval_exec_match`` verdict on the databases ``paths`` (rules 1-7 of the module
    docstring), every query in the sandbox. Raises :class:`GoldQueryError` when the gold query
    fails on one of them; ``where`` names the databases in that message (default: the file)."""
    pred, gold = prepare_queries(pred_sql, gold_sql, keep_distinct)
    ordered = order_matters(gold)
    for path in paths:
        stat = path.stat()
        gold_rows = _gold_rows(str(path), (stat.st_mtime_ns, stat.st_size), gold, timeout_s, max_rows,
                               where or str(path))
        try:
            pred_rows = _run(path, pred, timeout_s, max_rows)
        except QueryFailed:
            return False
        if not results_equivalent(gold_rows, pred_rows, ordered):
            return False
    return True


def suite_exec_match(pred_sql: str, gold_sql: str, db_path: str | os.PathLike, keep_distinct: bool = False,
                     timeout_s: float = DEFAULT_TIMEOUT_S, max_rows: int = DEFAULT_MAX_ROWS) -> bool:
    """test-suite-sql-eval's execution verdict for one prediction on the database at ``db_path``
    and every other database of its folder (:func:`suite_databases`). Raises FileNotFoundError when
    ``db_path`` is missing and :class:`GoldQueryError` when the gold query fails."""
    return suite_exec_match_on(pred_sql, gold_sql, suite_databases(db_path), keep_distinct, timeout_s, max_rows)

