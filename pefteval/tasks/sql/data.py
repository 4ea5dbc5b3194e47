"""SQL data in the sql-create-context form (question, CREATE TABLE context, SQL): Spider read
from its release files, its schemas turned into that context (:func:`spider_schema_context`), or
sql-create-context itself from the hub. The offline layout is in ``pefteval/tasks/sql/__init__.py``.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

from pefteval.errors import DataError
from pefteval.tasks.base import read_json_file, record_data_file
from pefteval.tasks.generation import GenExample, GenTaskSpec, _hub_rows, _missing, _text_field
from pefteval.tasks.sql.normalize import quote_identifier

SQL = GenTaskSpec(
    name="sql", display="SQL",
    help="text to SQL with the schema as CREATE TABLE context (sql-create-context form); execution accuracy",
    instruction=("Write an SQLite query that answers the question. Use only the tables and columns defined in "
                 "the schema. Reply with the query only."),
    prompt_template="{instruction}\n\nSchema:\n{context}\n\nQuestion: {question}",
    hub_path="b-mc2/sql-create-context", hub_config=None, metric="sql_execution_match",
)


# offline layout
SPIDER_DIR = "spider"
SPIDER_TRAIN_FILES = ("train_spider.json", "train_spider_spidersyn.json")  # official first, Spider-Syn copy second
SPIDER_TEST_FILE = "dev.json"
SPIDER_TABLES_FILE = "tables.json"
HUB_SQL_TEST_SIZE = 1000  # sql-create-context has one split: this many examples are held out as test
HUB_SQL_SPLIT_SEED = 0

# tables.json column types as SQL types, in the vocabulary of sql-create-context (VARCHAR, INTEGER)
SPIDER_TYPE_MAP = {"text": "VARCHAR", "number": "INTEGER", "time": "DATETIME", "boolean": "BOOLEAN",
                   "others": "VARCHAR"}


def squash_sql_whitespace(sql: str) -> str:
    """One space for each run of whitespace outside quoted strings (Spider's SQL has ``age  >  56``)."""
    out, quote = [], ""
    for piece in re.split(r"(\s+|'|\")", sql.strip()):
        if piece in ("'", '"'):
            quote = "" if quote == piece else (quote or piece)
            out.append(piece)
        elif piece and piece.isspace() and not quote:
            out.append(" ")
        else:
            out.append(piece)
    return "".join(out)


def spider_schema_context(schema: dict[str, Any]) -> str:
    """CREATE TABLE statements for one ``tables.json`` entry, in the compact one-line-per-table
    form of sql-create-context: original table and column names (quoted where needed), column
    types mapped by :data:`SPIDER_TYPE_MAP`, PRIMARY KEY and FOREIGN KEY clauses. SQLite's
    internal tables (``sqlite_sequence``, listed for a few databases) are left out."""
    tables = schema["table_names_original"]
    columns = schema["column_names_original"]
    types = schema["column_types"]
    pk_ids: set[int] = set()
    for key in schema.get("primary_keys", []):
        pk_ids.update(key if isinstance(key, list) else [key])
    parts: list[list[str]] = [[] for _ in tables]
    keys: list[list[str]] = [[] for _ in tables]
    for col_id, ((table_id, name), col_type) in enumerate(zip(columns, types)):
        if table_id < 0:
            continue
        parts[table_id].append(f"{quote_identifier(name)} {SPIDER_TYPE_MAP.get(col_type, 'VARCHAR')}")
        if col_id in pk_ids:
            keys[table_id].append(quote_identifier(name))
    foreign: list[list[str]] = [[] for _ in tables]
    for src, dst in schema.get("foreign_keys", []):
        src_table, src_name = columns[src]
        dst_table, dst_name = columns[dst]
        foreign[src_table].append(f"FOREIGN KEY ({quote_identifier(src_name)}) REFERENCES "
                                  f"{quote_identifier(tables[dst_table])}({quote_identifier(dst_name)})")
    statements = []
    for i, table in enumerate(tables):
        if table.lower().startswith("sqlite_"):  # SQLite's own bookkeeping (sqlite_sequence), not data
            continue
        body = parts[i] + ([f"PRIMARY KEY ({', '.join(keys[i])})"] if keys[i] else []) + foreign[i]
        statements.append(f"CREATE TABLE {quote_identifier(table)} ({', '.join(body)})")
    return "; ".join(statements)


def _read_json_array(path: Path, what: str) -> list[Any]:
    data = read_json_file(path, _missing(path, what))
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of records, as in the Spider release")
    return data


def sql_example(question: str, context: str, query: str, example_id: str, db_id: str | None,
                db_path: Path | None) -> GenExample:
    question = " ".join(question.split())
    return GenExample(example_id, SQL.render(question=question, context=context), squash_sql_whitespace(query),
                      {"db_id": db_id, "db_path": str(db_path) if db_path else None, "schema": context,
                       "question": question})


def read_spider_file(path: Path, split: str, schemas: dict[str, dict[str, Any]], database_dir: Path,
                     contexts: dict[str, str]) -> list[GenExample]:
    """Spider records as SQL examples; the question is ``question`` (``SpiderQuestion`` in the
    Spider-Syn copy). ``meta["db_path"]`` is None where the database file is absent; each database
    found is recorded by the active data-read trackers, since scoring queries it."""
    fix = ("Each record needs 'db_id', 'query' and 'question' (or 'SpiderQuestion'), and its db_id must be "
           f"described in {SPIDER_TABLES_FILE}.")
    out = []
    for i, record in enumerate(_read_json_array(path, f"Spider {split} file")):
        where = f"{path}: record {i}"
        if not isinstance(record, dict):
            raise DataError(f"{where}: not a JSON object. {fix}")
        db_id = _text_field(record, "db_id", where, fix)
        query = _text_field(record, "query", where, fix)
        key = "question" if "question" in record else "SpiderQuestion"
        question = _text_field(record, key, where, fix)
        if db_id not in schemas:
            raise DataError(f"{where}: db_id '{db_id}' is not in {SPIDER_TABLES_FILE}. {fix}")
        if db_id not in contexts:
            contexts[db_id] = spider_schema_context(schemas[db_id])
        db_path = database_dir / db_id / f"{db_id}.sqlite"
        found = db_path.is_file()
        if found:
            record_data_file(db_path)
        out.append(sql_example(question, contexts[db_id], query, f"spider-{split}-{i}", db_id,
                               db_path if found else None))
    if not out:
        raise DataError(f"{path}: no records found")
    return out


def sql_from_hub_rows(rows: list[dict[str, Any]], where: str,
                      id_prefix: str = "sql-create-context") -> list[GenExample]:
    fix = "The hub rows of b-mc2/sql-create-context have 'question', 'context' and 'answer'."
    out = []
    for i, row in enumerate(rows):
        at = f"{where} row {i}"
        out.append(sql_example(_text_field(row, "question", at, fix), _text_field(row, "context", at, fix).strip(),
                               _text_field(row, "answer", at, fix), f"{id_prefix}-{i}", None, None))
    return out


def load_sql(data_dir: Path | None, hub_test_size: int = HUB_SQL_TEST_SIZE,
             split_seed: int = HUB_SQL_SPLIT_SEED) -> dict[str, list[GenExample]]:
    """{"train", "test"}. Offline: Spider train (7,000) and dev (1,034) in the sql-create-context
    form. From the hub: sql-create-context (78,577 rows, one split), ``hub_test_size`` examples
    held out as test by a shuffle seeded with ``split_seed``."""
    if data_dir is None:
        rows = _hub_rows(SQL.hub_path, SQL.hub_config, "train")
        examples = sql_from_hub_rows(rows, f"{SQL.hub_path} train")
        order = list(range(len(examples)))
        random.Random(split_seed).shuffle(order)
        n_test = min(hub_test_size, len(examples) // 2)
        test_ids = set(order[:n_test])
        return {"train": [x for i, x in enumerate(examples) if i not in test_ids],
                "test": [x for i, x in enumerate(examples) if i in test_ids]}
    root = Path(data_dir) / SPIDER_DIR
    tables = _read_json_array(root / SPIDER_TABLES_FILE, "Spider schema file")
    schemas = {}
    for i, entry in enumerate(tables):
        needed = ("db_id", "table_names_original", "column_names_original", "column_types")
        if not isinstance(entry, dict) or any(k not in entry for k in needed):
            raise DataError(f"{root / SPIDER_TABLES_FILE}: record {i}: a schema needs {', '.join(needed)}")
        schemas[entry["db_id"]] = entry
    train_path = next((root / name for name in SPIDER_TRAIN_FILES if (root / name).is_file()),
                      root / SPIDER_TRAIN_FILES[0])
    contexts: dict[str, str] = {}
    database_dir = root / "database"
    return {"train": read_spider_file(train_path, "train", schemas, database_dir, contexts),
            "test": read_spider_file(root / SPIDER_TEST_FILE, "test", schemas, database_dir, contexts)}
