"""Execution match where no real database exists (the hub's sql-create-context form has none,
Spider lacks a few): the queries run on several small databases populated with seeded random rows
from the CREATE TABLE context, test-suite style, and a match needs every one of them to agree. An
empty table would make many wrong queries look right (both return nothing), so populated ones
are used. The databases are built once per schema and cached.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import random
import re
import shutil
import sqlite3
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from sqlglot import exp

from pefteval.tasks.sql.normalize import _parse_one_sqlite, _string_like_columns, quote_identifier
from pefteval.tasks.sql.sandbox import DEFAULT_MAX_ROWS, DEFAULT_TIMEOUT_S, _match_on_file, has_top_level_order_by


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
    ``context``, or :func:`pefteval.tasks.sql.data.spider_schema_context`). Tolerant: other
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
