"""The results store: one SQLite row per trial, keyed by the trial's config hash.

Each write is one transaction, so a killed process leaves either the whole row or
none of it. A row is written only after its trial has finished (complete or failed);
an interrupted trial has no complete row and is redone on the next run.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


class ResultStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, timeout=30)
        with self._conn:
            self._conn.executescript(SCHEMA)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def put(self, record: dict[str, Any]) -> None:
        cfg = record["config"]
        with self._conn:
            self._conn.execute(
                "INSERT OR REPLACE INTO trials (key, experiment, task, method, seed, status, record, updated)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (record["key"], record.get("experiment", ""), cfg["task"], cfg["method_label"], cfg["seed"],
                 record["status"], json.dumps(record, sort_keys=True), time.time()),
            )

    def get(self, key: str) -> dict[str, Any] | None:
        row = self._conn.execute("SELECT record FROM trials WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def complete_keys(self) -> set[str]:
        return {k for (k,) in self._conn.execute("SELECT key FROM trials WHERE status = 'complete'")}

    def records(self, status: str | None = "complete") -> Iterator[dict[str, Any]]:
        query = "SELECT record FROM trials" + (" WHERE status = ?" if status else "") + " ORDER BY rowid"
        for (text,) in self._conn.execute(query, (status,) if status else ()):
            yield json.loads(text)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write via a temporary file and rename, so readers never see a partial file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True))
