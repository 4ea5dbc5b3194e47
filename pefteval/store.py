"""The results store: one SQLite row per trial, keyed by the trial's config hash.

Each write is one transaction, so a killed process leaves either the whole row or
none of it. A row is written only after its trial has finished (complete or failed);
an interrupted trial has no complete row and is redone on the next run.

A store that SQLite cannot read (corrupt, truncated, not a database) is never written to, and a
store that cannot be written (no space left, read-only) is a :class:`StoreError` naming the file.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pefteval.errors import OutputError, UserError
from pefteval.files import make_dir

SCHEMA = """
CREATE TABLE IF NOT EXISTS trials (
    key TEXT PRIMARY KEY,
    experiment TEXT NOT NULL,
    task TEXT NOT NULL,
    method TEXT NOT NULL,
    seed INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('complete', 'failed')),
    record TEXT NOT NULL,
    updated REAL NOT NULL
);
"""


class StoreError(UserError):
    """The results store cannot be read or written; the message names the file and what to do."""


class ResultStore:
    """``read_only`` opens an existing store for reading (``report``, the analyses) and never creates
    or changes a file; otherwise the store is created if missing."""

    def __init__(self, path: str | Path, read_only: bool = False):
        self.path = Path(path)
        self.read_only = read_only
        if read_only:
            if not self.path.is_file():
                raise StoreError(f"no results store at {self.path}; run `pefteval run CONFIG --out "
                                 f"{self.path.parent}` first")
            uri = self.path.resolve().as_uri() + "?mode=ro"
            self._conn = sqlite3.connect(uri, uri=True, timeout=30)
        else:
            make_dir(self.path.parent)
            if self.path.is_dir():
                raise StoreError(f"{self.path} is a directory, not a results store: move it away")
            self._conn = sqlite3.connect(self.path, timeout=30)
        with self._guard("open"):
            self._check()
            if not read_only:
                with self._conn:
                    self._conn.executescript(SCHEMA)

    def _check(self) -> None:
        """Refuse a store SQLite cannot read in full, before anything is written to it."""
        if self.path.is_file() and self.path.stat().st_size == 0:
            return  # a new store
        problems = [row[0] for row in self._conn.execute("PRAGMA quick_check")]
        if problems != ["ok"]:
            raise sqlite3.DatabaseError("; ".join(problems[:3]))
        tables = {name for (name,) in self._conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if tables and "trials" not in tables:
            raise sqlite3.DatabaseError("it holds no 'trials' table")

    @contextmanager
    def _guard(self, doing: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.IntegrityError:
            raise  # a record the schema refuses: a bug, not the file
        except sqlite3.DatabaseError as err:
            self._conn.close()
            text = str(err)
            if isinstance(err, sqlite3.OperationalError) and ("full" in text or "readonly" in text
                                                              or "disk I/O" in text or "unable to open" in text):
                raise StoreError(f"cannot {doing} the results store {self.path}: {text}; free space or make it "
                                 "writable, then run the same command again (finished trials are kept)") from None
            raise StoreError(f"{self.path} is not a readable pefteval results store ({text}); it was left as it "
                             "is: move it away (or restore a backup), or run into a new --out") from None

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def put(self, record: dict[str, Any]) -> None:
        if self.read_only:
            raise OutputError(f"{self.path} was opened read-only")
        cfg = record["config"]
        with self._guard("write to"), self._conn:
            self._conn.execute(
                "INSERT OR REPLACE INTO trials (key, experiment, task, method, seed, status, record, updated)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (record["key"], record.get("experiment", ""), cfg["task"], cfg["method_label"], cfg["seed"],
                 record["status"], json.dumps(record, sort_keys=True), time.time()),
            )

    def get(self, key: str) -> dict[str, Any] | None:
        with self._guard("read"):
            row = self._conn.execute("SELECT record FROM trials WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def complete_keys(self) -> set[str]:
        with self._guard("read"):
            return {k for (k,) in self._conn.execute("SELECT key FROM trials WHERE status = 'complete'")}

    def complete_records(self) -> dict[str, dict[str, Any]]:
        """Every complete trial's record, by key."""
        return {r["key"]: r for r in self.records()}

    def records(self, status: str | None = "complete") -> Iterator[dict[str, Any]]:
        query = "SELECT record FROM trials" + (" WHERE status = ?" if status else "") + " ORDER BY rowid"
        with self._guard("read"):
            rows = self._conn.execute(query, (status,) if status else ()).fetchall()
        for (text,) in rows:
            yield json.loads(text)


def read_complete(out: Path) -> list[dict[str, Any]]:
    """The complete trials' records of results directory ``out`` (read-only), or a clear error when
    it has no store or nothing complete yet."""
    path = Path(out) / "results.sqlite"
    if not path.is_file():
        raise UserError(f"no results store at {path}; run `pefteval run CONFIG --out {out}` first")
    with ResultStore(path, read_only=True) as store:
        records = list(store.records())
    if not records:
        raise UserError(f"{path} holds no complete trials yet")
    return records
