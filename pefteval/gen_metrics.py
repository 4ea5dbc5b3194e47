"""Metrics of the generation tasks of Table 1 (GSM8K, SQL generation, ViGGO): plain Python
over generated texts and references.

- GSM8K: accuracy of the final number (:func:`extract_gsm8k_answer`).
- SQL: exact match after a canonical rendering (:func:`normalize_sql`) and execution match.
  Execution runs the predicted and the gold query on a database opened read-only, behind an
  authorizer that allows nothing but reading, under a time limit; a prediction that fails,
  tries to write, or runs out of time is wrong and changes nothing. Where no real database
  exists (the hub's sql-create-context form has none, Spider lacks a few), the queries run on
  several small databases populated with seeded random rows from the CREATE TABLE context,
  test-suite style: a match needs every one of them to agree. An empty table would make many
  wrong queries look right (both return nothing), so populated ones are used.
- ViGGO: exact match of the meaning representation (act and slots, slot order ignored) and
  micro-averaged precision / recall / F1 over (slot, value) pairs, the dialogue act counting
  as one pair.
"""

from __future__ import annotations

import atexit
import hashlib
import math
import os
import random
import re
import shutil
import sqlite3
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from pathlib import Path
from typing import Any, Union

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

# --- GSM8K ------------------------------------------------------------------------------

# a number: optional sign and $, digits with optional thousands commas, optional decimals
_NUMBER = re.compile(r"(?<![\w.])([-\u2212]?)\s?\$?\s?((?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)")


def _canonical_number(sign: str, digits: str) -> str | None:
    try:
        value = Decimal(digits.replace(",", ""))
    except InvalidOperation:
        return None
    if sign:
        value = -value
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def extract_gsm8k_answer(text: str | None) -> str | None:
    """The final numeric answer of a GSM8K solution, as a canonical string, or None.

    The first number after the last ``####`` (the dataset's answer marker); when there is no
    marker, or no number after it, the last number anywhere in the text. Commas, ``$`` and a
    trailing period are dropped and the value is canonicalised: ``"$1,234.50"`` -> ``"1234.5"``,
    ``"5.00"`` -> ``"5"``, ``"-3"`` stays ``"-3"``.
    """
    if not text:
        return None
    marker = text.rfind("####")
    if marker >= 0:
        match = _NUMBER.search(text, marker + 4)
        if match:
            return _canonical_number(*match.groups())
    matches = list(_NUMBER.finditer(text))
    return _canonical_number(*matches[-1].groups()) if matches else None


def gsm8k_accuracy(predictions: Sequence[str], golds: Sequence[str]) -> float:
    """Share of predictions whose final number equals the gold one. A gold may be the bare number
    or the dataset's full answer text (the number after ``####`` is taken from it)."""
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions for {len(golds)} golds")
    if not golds:
        return float("nan")
    correct = 0
    for i, (pred, gold) in enumerate(zip(predictions, golds)):
        gold_number = extract_gsm8k_answer(gold)
        if gold_number is None:
            raise ValueError(f"gold {i} has no number: {gold!r}")
        correct += int(extract_gsm8k_answer(pred) == gold_number)
    return correct / len(golds)


# --- SQL: canonical form and exact match ----------------------------------------------------

# SQLite's keywords (https://www.sqlite.org/lang_keywords.html): identifiers spelled like one are quoted
SQLITE_KEYWORDS = frozenset("""
ABORT ACTION ADD AFTER ALL ALTER ALWAYS ANALYZE AND AS ASC ATTACH AUTOINCREMENT BEFORE BEGIN BETWEEN BY CASCADE
CASE CAST CHECK COLLATE COLUMN COMMIT CONFLICT CONSTRAINT CREATE CROSS CURRENT CURRENT_DATE CURRENT_TIME
CURRENT_TIMESTAMP DATABASE DEFAULT DEFERRABLE DEFERRED DELETE DESC DETACH DISTINCT DO DROP EACH ELSE END ESCAPE
EXCEPT EXCLUDE EXCLUSIVE EXISTS EXPLAIN FAIL FILTER FIRST FOLLOWING FOR FOREIGN FROM FULL GENERATED GLOB GROUP
GROUPS HAVING IF IGNORE IMMEDIATE IN INDEX INDEXED INITIALLY INNER INSERT INSTEAD INTERSECT INTO IS ISNULL JOIN
KEY LAST LEFT LIKE LIMIT MATCH MATERIALIZED NATURAL NO NOT NOTHING NOTNULL NULL NULLS OF OFFSET ON OR ORDER
OTHERS OUTER OVER PARTITION PLAN PRAGMA PRECEDING PRIMARY QUERY RAISE RANGE RECURSIVE REFERENCES REGEXP REINDEX
RELEASE RENAME REPLACE RESTRICT RETURNING RIGHT ROLLBACK ROW ROWS SAVEPOINT SELECT SET TABLE TEMP TEMPORARY THEN
TIES TO TRANSACTION TRIGGER UNBOUNDED UNION UNIQUE UPDATE USING VACUUM VALUES VIEW VIRTUAL WHEN WHERE WINDOW WITH
WITHOUT
""".split())
_PLAIN_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def needs_quotes(name: str) -> bool:
    """Whether an SQLite identifier must be double-quoted (not a plain word, or a keyword)."""
    return not _PLAIN_IDENTIFIER.fullmatch(name) or name.upper() in SQLITE_KEYWORDS


def quote_identifier(name: str, always: bool = False) -> str:
    """``name`` as an SQLite identifier, double-quoted where needed (or ``always``)."""
    if always or needs_quotes(name):
        return '"' + name.replace('"', '""') + '"'
    return name


def _split_quoted(sql: str) -> list[tuple[str, bool]]:
    """``sql`` cut into (text, is_single_quoted_literal) pieces; '' inside a literal is an escape."""
    pieces: list[tuple[str, bool]] = []
    i, start, n = 0, 0, len(sql)
    while i < n:
        if sql[i] == "'":
            if i > start:
                pieces.append((sql[start:i], False))
            j = i + 1
            while j < n:
                if sql[j] == "'":
                    if j + 1 < n and sql[j + 1] == "'":
                        j += 2
                        continue
                    break
                j += 1
            pieces.append((sql[i:j + 1], True))
            i = start = j + 1
        else:
            i += 1
    if start < n:
        pieces.append((sql[start:], False))
    return pieces


def _lower_outside_literals(sql: str) -> str:
    return "".join(text if literal else text.lower() for text, literal in _split_quoted(sql))


def _fallback_normalize(sql: str) -> str:
    """Whitespace and case normalisation for text sqlglot cannot parse."""
    out = []
    for text, literal in _split_quoted(sql.strip().rstrip(";").strip()):
        if literal:
            out.append(text)
        else:
            text = re.sub(r"\s*(<>|!=|<=|>=|[(),;=<>])\s*", r" \1 ", text.lower())
            out.append(re.sub(r"\s+", " ", text))
    return re.sub(r"\s+", " ", "".join(out)).strip()


_COMPARISONS = (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.Like, exp.ILike, exp.Glob)


def _comparison_types() -> tuple[type, ...]:
    return _COMPARISONS


def _parse_one_sqlite(sql: str):
    """The single statement of ``sql`` as a sqlglot tree, or None (parse error, several statements)."""
    try:
        trees = [t for t in sqlglot.parse(sql, read="sqlite") if t is not None]
    except (SqlglotError, ValueError, RecursionError):
        return None
    return trees[0] if len(trees) == 1 else None


def _string_like_columns(tree) -> list:
    """Double-quoted bare names used as values ("France" in ``WHERE country = "France"``): SQLite
    reads them as strings when no column has that name, and Spider writes its literals that way."""
    found = []
    for column in tree.find_all(exp.Column):
        ident = column.this
        if column.table or not isinstance(ident, exp.Identifier) or not ident.quoted:
            continue
        parent = column.parent
        if isinstance(parent, _comparison_types()) and column.arg_key == "expression":
            found.append(column)
        elif isinstance(parent, exp.In) and column.arg_key == "expressions":
            found.append(column)
        elif isinstance(parent, exp.Between) and column.arg_key in ("low", "high"):
            found.append(column)
    return found


def normalize_sql(sql: str) -> str:
    """A canonical rendering of one SQLite query, for exact match.

    Parsed with sqlglot (dialect sqlite) and printed back: keywords, function and identifier
    names lower-cased (SQLite identifiers are case-insensitive), identifiers quoted only where
    needed, double-quoted values in comparisons turned into '...' literals, one space between
    tokens, no trailing semicolon. String literals keep their case. Text that does not parse
    falls back to whitespace and case normalisation.
    """
    text = sql.strip().rstrip(";").strip()
    tree = _parse_one_sqlite(text)
    if tree is None:
        return _fallback_normalize(text)
    try:
        for column in _string_like_columns(tree):
            column.replace(exp.Literal.string(column.this.this))
        for ident in tree.find_all(exp.Identifier):
            name = ident.this.lower()
            ident.set("this", name)
            ident.set("quoted", needs_quotes(name))
        rendered = tree.sql(dialect="sqlite", normalize_functions="lower")
    except Exception:  # noqa: BLE001 - sqlglot raises many types on odd trees; fall back to text
        return _fallback_normalize(text)
    return re.sub(r"\s+", " ", _lower_outside_literals(rendered)).strip()


def sql_exact_match(prediction: str, gold: str) -> bool:
    """Whether two queries have the same canonical form (:func:`normalize_sql`)."""
    return normalize_sql(prediction) == normalize_sql(gold)


# --- SQL: execution ------------------------------------------------------------------------

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


# --- SQL: databases populated from a CREATE TABLE context ----------------------------------

@dataclass(frozen=True)
class ColumnDef:
    name: str
    type: str  # the declared type, e.g. "VARCHAR", "INTEGER", "" when none was given


@dataclass(frozen=True)
class TableDef:
    name: str
    columns: tuple[ColumnDef, ...]
    primary_key: tuple[str, ...] = ()
    foreign_keys: tuple[tuple[str, str, str], ...] = ()  # (column, referenced table, referenced column)


Schema = Union[str, Sequence[TableDef]]

_CREATE = re.compile(r"^\s*CREATE\s+(?:TEMP(?:ORARY)?\s+)?TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?", re.IGNORECASE)
_NAME_BODY = r'("(?:[^"]|"")*"|`[^`]*`|\[[^\]]*\]|\'(?:[^\']|\'\')*\'|[^\s(),;]+)'
_NAME = re.compile(r"\s*" + _NAME_BODY)


def _unquote(name: str) -> str:
    if len(name) >= 2 and name[0] in "\"'`[":
        inner = name[1:-1]
        return inner.replace('""', '"') if name[0] == '"' else inner.replace("''", "'")
    return name


def _split_top_level(text: str, sep: str) -> list[str]:
    """``text`` split on ``sep`` outside parentheses and quotes."""
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "\"'`":
            quote = ch
        elif ch == "[":
            quote = "]"
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _names_in_parens(text: str) -> tuple[str, ...]:
    match = re.search(r"\((.*)\)", text, re.DOTALL)
    return tuple(_unquote(p.strip()) for p in _split_top_level(match.group(1), ",") if p.strip()) if match else ()


def parse_create_tables(sql: str) -> list[TableDef]:
    """The tables of a schema given as CREATE TABLE statements (the sql-create-context
    ``context``, or :func:`pefteval.tasks.generation.spider_schema_context`). Tolerant: other
    statements are skipped and unknown constraints ignored; tables named twice are merged;
    SQLite's reserved ``sqlite_*`` tables are dropped.
    Raises ValueError when no table is found."""
    tables: dict[str, dict[str, Any]] = {}
    for statement in _split_top_level(sql, ";"):
        head = _CREATE.match(statement)
        if not head:
            continue
        name_match = _NAME.match(statement, head.end())
        if not name_match:
            continue
        rest = statement[name_match.end():]
        open_at, close_at = rest.find("("), rest.rfind(")")
        if open_at < 0 or close_at < open_at:
            continue
        table = _unquote(name_match.group(1))
        entry = tables.setdefault(table.lower(), {"name": table, "columns": {}, "pk": [], "fk": []})
        for part in _split_top_level(rest[open_at + 1:close_at], ","):
            part = part.strip()
            upper = part.upper()
            if not part:
                continue
            if re.match(r"CONSTRAINT\b", upper):
                part = re.sub(r"^CONSTRAINT\s+" + _NAME_BODY, "", part, flags=re.IGNORECASE).strip()
                upper = part.upper()
            if re.match(r"PRIMARY\s+KEY\b", upper):
                entry["pk"].extend(_names_in_parens(part))
            elif re.match(r"FOREIGN\s+KEY\b", upper):
                cols = _names_in_parens(part[: upper.find("REFERENCES")] if "REFERENCES" in upper else part)
                ref = re.search(r"REFERENCES\s+" + _NAME_BODY + r"\s*(\(.*\))?", part,
                                re.IGNORECASE | re.DOTALL)
                if ref and cols:
                    ref_cols = _names_in_parens(ref.group(2) or "") or cols
                    for col, ref_col in zip(cols, ref_cols):
                        entry["fk"].append((col, _unquote(ref.group(1)), ref_col))
            elif re.match(r"(UNIQUE|CHECK)\b", upper):  # a column named CheckIn is a column
                continue
            else:
                col_match = _NAME.match(part)
                if not col_match:
                    continue
                column = _unquote(col_match.group(1))
                tail = part[col_match.end():].strip()
                type_match = re.match(r"[A-Za-z][A-Za-z0-9_ ]*(?:\(\s*\d+\s*(?:,\s*\d+\s*)?\))?", tail)
                declared = type_match.group(0).strip() if type_match else ""
                declared = re.split(r"\s+(?:PRIMARY|NOT|NULL|DEFAULT|UNIQUE|REFERENCES|CHECK|COLLATE|CONSTRAINT)\b",
                                    declared, flags=re.IGNORECASE)[0].strip()
                entry["columns"].setdefault(column.lower(), ColumnDef(column, declared))
                if re.search(r"\bPRIMARY\s+KEY\b", tail, re.IGNORECASE):
                    entry["pk"].append(column)
    out = [TableDef(e["name"], tuple(e["columns"].values()), tuple(dict.fromkeys(e["pk"])), tuple(e["fk"]))
           for e in tables.values() if e["columns"] and not e["name"].lower().startswith("sqlite_")]
    if not out:
        raise ValueError(f"no CREATE TABLE statement with columns found in the schema: {sql[:200]!r}")
    return out


def _as_tables(schema: Schema) -> list[TableDef]:
    return parse_create_tables(schema) if isinstance(schema, str) else list(schema)


def schema_hash(schema: Schema) -> str:
    """A short stable hash of a schema's tables, columns, types and keys."""
    parts = []
    for table in _as_tables(schema):
        cols = ",".join(f"{c.name.lower()}:{c.type.upper()}" for c in table.columns)
        pk = ",".join(k.lower() for k in table.primary_key)
        fk = ",".join(f"{a.lower()}>{b.lower()}.{c.lower()}" for a, b, c in table.foreign_keys)
        parts.append(f"{table.name.lower()}({cols})pk({pk})fk({fk})")
    return hashlib.sha256(";".join(parts).encode()).hexdigest()[:16]


def _type_class(declared: str) -> str:
    """SQLite-like affinity of a declared type: int, real, text, date or bool."""
    upper = declared.upper()
    if "BOOL" in upper or upper == "BIT":
        return "bool"
    if "DATE" in upper or "TIME" in upper or upper == "YEAR":
        return "date"
    if "INT" in upper:
        return "int"
    if any(key in upper for key in ("REAL", "FLOA", "DOUB", "DEC", "NUM")):
        return "real"
    return "text"


_WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo",
          "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango", "uniform", "victor",
          "whiskey", "xray", "yankee", "zulu")


def _base_value(kind: str, rng: random.Random, spread: int = 30) -> Any:
    if kind == "int":
        return rng.randint(1, spread)
    if kind == "real":
        return round(rng.uniform(0, 100), 1)
    if kind == "date":
        return f"{rng.randint(1990, 2020)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    if kind == "bool":
        return rng.randint(0, 1)
    return rng.choice(_WORDS).capitalize() if rng.random() < 0.5 else rng.choice(_WORDS)


def _literal_values(values: Sequence[Any], kind: str) -> list[Any]:
    """The given literals (from the gold query) usable in a column of this kind."""
    out: list[Any] = []
    for value in values:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if kind == "int" and float(value).is_integer():
                out.extend([int(value) - 1, int(value), int(value) + 1])
            elif kind == "real":
                out.extend([value - 1, value, value + 1])
            elif kind == "text":  # numbers compared with a text column compare as text
                out.extend(str(v) for v in ([int(value) - 1, int(value), int(value) + 1]
                                            if float(value).is_integer() else [value]))
        elif isinstance(value, str):
            if kind == "text" or (kind == "date" and re.match(r"^\d{4}", value)):
                out.append(value)
            elif kind in ("int", "real"):
                try:
                    number = float(value)
                except ValueError:
                    continue
                out.append(int(number) if kind == "int" and number.is_integer() else number)
    return out


def _value_pools(tables: list[TableDef], rng: random.Random, rows_per_table: int,
                 values: Sequence[Any]) -> dict[str, list[Any]]:
    """A small value pool per column name, shared by columns of the same name and by foreign
    keys and the columns they reference, so joins find partners. Key columns get at least
    ``rows_per_table`` distinct values; others 3-5 (booleans 2), so WHERE filters and GROUP BY
    see repeats."""
    parent: dict[str, str] = {}

    def find(name: str) -> str:
        while parent.setdefault(name, name) != name:
            name = parent[name]
        return name

    by_name = {t.name.lower(): t for t in tables}
    for table in tables:
        for col, ref_table, ref_col in table.foreign_keys:
            if ref_table.lower() in by_name:
                parent[find(col.lower())] = find(ref_col.lower())
    kinds: dict[str, str] = {}
    keyed: set[str] = set()
    for table in tables:
        for column in table.columns:
            root = find(column.name.lower())
            kinds.setdefault(root, _type_class(column.type))
        keyed.update(find(k.lower()) for k in table.primary_key)
    pools: dict[str, list[Any]] = {}
    for root in sorted(kinds):
        kind = kinds[root]
        size = rows_per_table + 2 if root in keyed else 2 if kind == "bool" else rng.randint(3, 5)
        pool: list[Any] = []
        for _ in range(20 * size):
            value = _base_value(kind, rng, max(30, 3 * size))
            if value not in pool:
                pool.append(value)
            if len(pool) >= size:
                break
        while len(pool) < size:  # small domains (bool): key columns still need distinct values
            pool.append(f"{kind}{len(pool)}" if kind in ("text", "date") else len(pool) + 100)
        pool.extend(v for v in _literal_values(values, kind) if v not in pool)
        pools[root] = pool
    return {name: pools[find(name)] for name in list(parent)}


def populate_database(schema: Schema, path: str | os.PathLike, seed: int = 0, rows_per_table: int = 30,
                      values: Sequence[Any] = ()) -> Path:
    """Create a fresh SQLite database at ``path`` from a CREATE TABLE schema and fill every table
    with seeded random rows (between half of ``rows_per_table`` and all of it).

    Values follow the column's declared type (integers, reals, dates, words). Columns with the
    same name and foreign keys share one small value pool so joins can match; ``values`` (the
    literals of the gold query) join the pools of the columns they fit, so WHERE filters match
    some rows and miss others. Primary-key columns get distinct values. The tables carry no
    constraints. An existing file at ``path`` is replaced.
    """
    tables = _as_tables(schema)
    rng = random.Random(f"pefteval-populate:{seed}:{rows_per_table}")
    pools = _value_pools(tables, rng, rows_per_table, values)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    conn = sqlite3.connect(tmp, isolation_level=None)
    try:
        conn.execute("BEGIN")
        for table in tables:
            cols = ", ".join(f"{quote_identifier(c.name, always=True)} {re.sub(r'[^A-Za-z0-9_ (),]', '', c.type)}"
                             for c in table.columns)
            conn.execute(f"CREATE TABLE {quote_identifier(table.name, always=True)} ({cols})")
            n_rows = rng.randint(max(1, rows_per_table // 2), rows_per_table)
            names = [c.name.lower() for c in table.columns]
            key = [i for i, name in enumerate(names) if name in {k.lower() for k in table.primary_key}]
            if len(key) == 1:  # a one-column key: distinct values, drawn without replacement
                pool = pools[names[key[0]]]
                n_rows = min(n_rows, len(pool))
                key_values = rng.sample(pool, n_rows)
            rows, seen = [], set()
            for r in range(n_rows):
                for _ in range(50):  # a composite key: redraw until the combination is new
                    row = [rng.choice(pools[name]) for name in names]
                    if len(key) == 1:
                        row[key[0]] = key_values[r]
                    signature = tuple(row[i] for i in key)
                    if not key or signature not in seen:
                        break
                if key and signature in seen:
                    continue
                seen.add(signature)
                rows.append(row)
            marks = ", ".join("?" for _ in table.columns)
            conn.executemany(f"INSERT INTO {quote_identifier(table.name, always=True)} VALUES ({marks})", rows)
        conn.execute("COMMIT")
    finally:
        conn.close()
    os.replace(tmp, path)
    return path


def query_literals(sql: str) -> list[Any]:
    """String and number literals of a query (double-quoted values included), LIKE wildcards
    removed, to seed the populated databases' value pools."""
    out: list[Any] = []
    tree = _parse_one_sqlite(sql.strip().rstrip(";"))
    if tree is not None:
        for literal in tree.find_all(exp.Literal):
            if literal.is_string:
                out.append(literal.this)
            else:
                try:
                    number = float(literal.this)
                except ValueError:
                    continue
                out.append(int(number) if number.is_integer() else number)
        out.extend(column.this.this for column in _string_like_columns(tree))
    else:
        out.extend(m.group(2).replace("''", "'") for m in re.finditer(r"(['\"])((?:(?!\1).)*)\1", sql))
        out.extend(float(m) if "." in m else int(m) for m in re.findall(r"(?<![\w.])\d+(?:\.\d+)?(?![\w.])", sql))
    cleaned: list[Any] = []
    for value in out:
        if isinstance(value, str):
            value = value.replace("%", "").replace("_", "x") if ("%" in value or "_" in value) else value
        if value not in cleaned:
            cleaned.append(value)
    return cleaned


_CACHE_DIR: Path | None = None
_POPULATED: dict[tuple, Path] = {}


def _default_cache_dir() -> Path:
    global _CACHE_DIR
    if _CACHE_DIR is None:
        _CACHE_DIR = Path(tempfile.mkdtemp(prefix="pefteval-sqldb-"))
        atexit.register(shutil.rmtree, _CACHE_DIR, True)
    return _CACHE_DIR


def populated_databases(schema: Schema, values: Sequence[Any] = (), seed: int = 0, n_databases: int = 3,
                        rows_per_table: int = 30, cache_dir: str | os.PathLike | None = None) -> list[Path]:
    """The ``n_databases`` populated databases of a schema, built once and cached per (schema hash,
    literal values, seed, index, rows) in ``cache_dir`` (default: a temporary folder removed at exit)."""
    tables = _as_tables(schema)
    key_schema = schema_hash(tables)
    key_values = hashlib.sha256(repr(sorted(map(repr, values))).encode()).hexdigest()[:12]
    folder = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
    paths = []
    for i in range(n_databases):
        key = (str(folder), key_schema, key_values, seed, i, rows_per_table)
        path = _POPULATED.get(key)
        if path is None or not path.is_file():
            path = folder / f"{key_schema}-{key_values}-s{seed}-{i}-r{rows_per_table}.sqlite"
            if not path.is_file():
                sub_seed = int(hashlib.sha256(f"{seed}:{i}".encode()).hexdigest()[:12], 16)
                populate_database(tables, path, sub_seed, rows_per_table, values)
            _POPULATED[key] = path
        paths.append(path)
    return paths


def execution_match_populated(pred_sql: str, gold_sql: str, schema: Schema, seed: int = 0, n_databases: int = 3,
                              rows_per_table: int = 30, timeout_s: float = DEFAULT_TIMEOUT_S,
                              max_rows: int = DEFAULT_MAX_ROWS, cache_dir: str | os.PathLike | None = None) -> bool:
    """Execution match where no real database exists: the queries run on ``n_databases``
    databases populated from the CREATE TABLE ``schema`` (:func:`populate_database`, the gold
    query's literals mixed into the value pools), and the prediction is right only when its result
    equals the gold one on every database. Same comparison and safety as :func:`execution_match`;
    raises :class:`GoldQueryError` when the gold query fails on a populated database (e.g. it names
    a column the context lacks)."""
    ordered = has_top_level_order_by(gold_sql)
    paths = populated_databases(schema, query_literals(gold_sql), seed, n_databases, rows_per_table, cache_dir)
    where = "a database populated from the schema"
    return all(_match_on_file(pred_sql, gold_sql, path, timeout_s, max_rows, ordered, where) for path in paths)


def sql_execution_match(pred_sql: str, gold_sql: str, meta: Mapping[str, Any], **kwargs: Any) -> bool:
    """Execution match of one SQL example from its ``meta`` (see ``pefteval.tasks.generation``):
    on the real database at ``meta["db_path"]`` when it exists, else on databases populated from
    ``meta["schema"]``. ``kwargs`` go to the function used."""
    db_path = meta.get("db_path")
    if db_path and Path(db_path).is_file():
        real = {k: v for k, v in kwargs.items() if k in ("timeout_s", "max_rows")}
        return execution_match(pred_sql, gold_sql, db_path, **real)
    return execution_match_populated(pred_sql, gold_sql, meta["schema"], **kwargs)


# --- ViGGO ---------------------------------------------------------------------------------

VIGGO_ACTS = ("inform", "request", "give_opinion", "confirm", "verify_attribute", "suggest", "request_explanation",
              "recommend", "request_attribute")
VIGGO_SLOTS = ("name", "exp_release_date", "release_year", "developer", "esrb", "rating", "genres",
               "player_perspective", "has_multiplayer", "platforms", "available_on_steam", "has_linux_release",
               "has_mac_release", "specifier")
# slots whose value is a comma-separated list in ViGGO (genres[driving/racing, sport]); the
# others keep their commas (exp_release_date[August 14, 2018], developer[Spectrum HoloByte, Inc.])
VIGGO_LIST_SLOTS = frozenset({"genres", "platforms", "player_perspective"})
_MR_HEAD = re.compile(r"^\s*([A-Za-z_]\w*)\s*\(")
_MR_SLOT = re.compile(r"([A-Za-z_]\w*)\s*\[([^\]]*)\]")


def parse_mr(text: str | None) -> tuple[str, dict[str, tuple[str, ...]]]:
    """The dialogue act and slots of a ViGGO meaning representation ``act(slot[value], ...)``.

    Act and slot names are lower-cased; values are whitespace-normalised and keep their case.
    List slots (genres, platforms, player_perspective) split on commas into a sorted tuple;
    other slots hold one value, or none for an empty ``slot[]`` (request_attribute). A slot named
    twice merges its values. Junk is tolerated: the act is "" when there is no ``name(`` prefix,
    and whatever ``slot[value]`` pieces occur are returned. Never raises.
    """
    if not isinstance(text, str):
        return "", {}
    head = _MR_HEAD.match(text)
    act = head.group(1).lower() if head else ""
    body = text[head.end():] if head else text
    if not head:
        first = re.match(r"^\s*([A-Za-z_]\w*)", text)
        if first and first.group(1).lower() in VIGGO_ACTS:
            act, body = first.group(1).lower(), text[first.end():]
    slots: dict[str, set[str]] = {}
    for name, raw in _MR_SLOT.findall(body):
        name = name.lower()
        pieces = raw.split(",") if name in VIGGO_LIST_SLOTS else [raw]
        values = slots.setdefault(name, set())
        values.update(v for v in (" ".join(p.split()) for p in pieces) if v)
    return act, {name: tuple(sorted(values)) for name, values in slots.items()}


def viggo_exact_match(prediction: str, gold: str) -> bool:
    """Same act and same slots with the same values; slot order (and list order) is ignored."""
    return parse_mr(prediction) == parse_mr(gold)


def viggo_accuracy(predictions: Sequence[str], golds: Sequence[str]) -> float:
    """Share of exactly matching meaning representations (:func:`viggo_exact_match`)."""
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions for {len(golds)} golds")
    if not golds:
        return float("nan")
    return sum(viggo_exact_match(p, g) for p, g in zip(predictions, golds)) / len(golds)


def mr_pairs(text: str | None) -> set[tuple[str, str]]:
    """The (slot, value) pairs of a meaning representation, the act counting as the pair
    ("__act__", act); a slot without a value counts as (slot, "")."""
    act, slots = parse_mr(text)
    pairs = {("__act__", act)} if act else set()
    for name, values in slots.items():
        pairs.update((name, v) for v in (values or ("",)))
    return pairs


def viggo_slot_scores(predictions: Sequence[str], golds: Sequence[str]) -> dict[str, float]:
    """Micro-averaged precision, recall and F1 over (slot, value) pairs (:func:`mr_pairs`: the
    dialogue act counts as one pair, each value of a list slot as one pair)."""
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions for {len(golds)} golds")
    if not golds:
        return {"precision": float("nan"), "recall": float("nan"), "f1": float("nan")}
    hits = n_pred = n_gold = 0
    for pred, gold in zip(predictions, golds):
        p, g = mr_pairs(pred), mr_pairs(gold)
        hits += len(p & g)
        n_pred += len(p)
        n_gold += len(g)
    precision = hits / n_pred if n_pred else 0.0
    recall = hits / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


# --- one entry point per task ----------------------------------------------------------------

def clean_sql_output(text: str) -> str:
    """The query in a generated reply: inside a ``` fence if there is one, up to the first ';'."""
    fenced = re.search(r"```(?:sql)?\s*(.*?)(?:```|$)", text, flags=re.S | re.I)
    if fenced:
        text = fenced.group(1)
    return text.strip().split(";", 1)[0].strip()
