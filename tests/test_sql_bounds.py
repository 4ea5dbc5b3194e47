"""The SQL sandbox's bounds (``pefteval.tasks.sql.sandbox``): a hostile query is wrong, quick,
small and harmless, as a prediction and as a gold query; results within the bounds come back whole.

Each hostile query runs in a fresh subprocess: it reports the wall time and outcome of each call
and how far its peak RSS rose over the baseline taken before the first, and runs under a 4 GB
address-space cap, so that a regression fails the test instead of taking the machine's memory.
Run as a script, this file prints those measurements for any copy of ``sandbox.py`` (the committed
one, to compare: ``git show HEAD:pefteval/tasks/sql/sandbox.py > /tmp/sandbox_before.py``)::

    .venv/bin/python tests/test_sql_bounds.py [SANDBOX_PY [TIMEOUT_S]]
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from pefteval.tasks.sql import sandbox
from pefteval.tasks.sql.sandbox import QueryFailed, execution_match, open_readonly, run_query

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 1.0
# the queries stopped by the row bound fetch 100,000 rows (~0.7 s on an idle core): they get the
# default limit, so that on a busy machine too they stop at the row bound, not at the time limit
ROWS_TIMEOUT_S = sandbox.DEFAULT_TIMEOUT_S
MAX_GROWTH_MB = 200
GOLD = "SELECT count(*) FROM singer"
SINGERS = [(f"singer {i}", 20 + i, ("France", "Spain", "Italy")[i % 3]) for i in range(30)]

# id: (query, time limit, what its failure says)
HOSTILE = {
    "zeroblob-cross-join": ("SELECT zeroblob(200000000) FROM singer a, singer b, singer c", TIMEOUT_S,
                            "a value or row over 1 MB"),
    "randomblob-1GB": ("SELECT randomblob(1000000000)", TIMEOUT_S, "a value or row over 1 MB"),
    "cross-join-810k-rows": ("SELECT * FROM singer a, singer b, singer c, singer d", ROWS_TIMEOUT_S,
                             "more than 100000 rows"),
    "endless-recursive-cte": ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT x FROM c",
                              ROWS_TIMEOUT_S, "more than 100000 rows"),
    "order-by-huge-cross-join": ("SELECT a.name, e.age FROM singer a, singer b, singer c, singer d, singer e "
                                 "ORDER BY a.name, b.age, c.country, d.name, e.age", TIMEOUT_S,
                                 "over the 1 s time limit"),
    "row-of-300-1MB-values": ("SELECT " + ", ".join(["zeroblob(1000000)"] * 300), TIMEOUT_S,
                              "over the 64 MB memory limit"),
    "write": ("DELETE FROM singer", TIMEOUT_S, "not authorized"),
}

CHILD = r"""
import importlib.util, json, resource, sys, time
cap = 4_000_000 * 1024
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
sandbox_py, db, sql, gold, timeout_s = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5])
spec = importlib.util.spec_from_file_location("sandbox_under_test", sandbox_py)
sb = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sb)

def run():
    return f"{len(sb.run_query(conn, sql, timeout_s)[1])} rows"

def as_prediction():
    return f"match {sb.execution_match(sql, gold, db, timeout_s)}"

def as_gold():
    return f"match {sb.execution_match(gold, sql, db, timeout_s)}"

conn = sb.open_readonly(db)
report = {"baseline_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}
for name, call in (("run_query", run), ("prediction", as_prediction), ("gold", as_gold)):
    start = time.monotonic()
    try:
        outcome = call()
    except BaseException as err:
        outcome = f"{type(err).__name__}: {str(err)[:1000]}"
    report[name] = {"seconds": round(time.monotonic() - start, 2), "outcome": outcome}
report["growth_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - report["baseline_kb"]) // 1024
print(json.dumps(report))
"""

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS, ru_maxrss in KiB")


def make_singer_db(path: Path) -> Path:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE singer (singer_id INTEGER PRIMARY KEY, name VARCHAR, age INTEGER, country VARCHAR)")
    conn.executemany("INSERT INTO singer (name, age, country) VALUES (?, ?, ?)", SINGERS)
    conn.commit()
    conn.close()
    return path


@pytest.fixture
def singer_db(tmp_path: Path) -> Path:
    return make_singer_db(tmp_path / "singers.sqlite")


def fingerprint(db: Path) -> tuple[str, list[str]]:
    """The file's sha256 and the names beside it (a journal or WAL file would show)."""
    return hashlib.sha256(db.read_bytes()).hexdigest(), sorted(p.name for p in db.parent.iterdir())


def measure(sandbox_py: Path, db: Path, sql: str, timeout_s: float) -> dict:
    """The child's report on ``sql`` run by the ``sandbox.py`` at ``sandbox_py``: alone
    (``run_query``), as the prediction and as the gold query of an execution match."""
    done = subprocess.run([sys.executable, "-c", CHILD, str(sandbox_py), str(db), sql, GOLD, str(timeout_s)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


@linux_only
@pytest.mark.parametrize(("sql", "timeout_s", "reason"), HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_query_is_wrong_quick_small_and_harmless(singer_db, sql, timeout_s, reason):
    if "memory limit" in reason and sandbox._HEAP_API is None:
        pytest.skip("SQLite's heap-limit functions cannot be reached from this Python")
    before = fingerprint(singer_db)
    report = measure(Path(sandbox.__file__), singer_db, sql, timeout_s)
    assert report["run_query"]["outcome"].startswith("QueryFailed: ")
    assert reason in report["run_query"]["outcome"]
    assert report["prediction"]["outcome"] == "match False"
    assert report["gold"]["outcome"].startswith("GoldQueryError: ")
    assert reason in report["gold"]["outcome"]
    for call in ("run_query", "prediction", "gold"):
        assert report[call]["seconds"] < timeout_s + 1, (call, report)
    assert report["growth_mb"] < MAX_GROWTH_MB, report
    assert fingerprint(singer_db) == before


def test_normal_query_returns_the_right_rows(singer_db):
    conn = open_readonly(singer_db)
    try:
        assert run_query(conn, "SELECT name, age FROM singer WHERE age >= 47 ORDER BY age") == \
            (2, [("singer 27", 47), ("singer 28", 48), ("singer 29", 49)])
        assert run_query(conn, "SELECT avg(age), count(*) FROM singer WHERE country = 'Spain'") == (2, [(34.5, 10)])
    finally:
        conn.close()
    assert execution_match("SELECT name FROM singer WHERE age > 45 AND country = 'France'",
                           "SELECT s.name FROM singer AS s WHERE s.country = 'France' AND s.age > 45", singer_db)


def test_results_within_the_bounds_come_back_whole(singer_db):
    conn = open_readonly(singer_db)
    try:
        # rows: exactly the row bound comes back, one more does not
        count = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {}) SELECT x FROM c"
        width, rows = run_query(conn, count.format(sandbox.DEFAULT_MAX_ROWS))
        assert width == 1 and rows[-1] == (100_000,) and len(rows) == 100_000
        with pytest.raises(QueryFailed, match="more than 100000 rows"):
            run_query(conn, count.format(sandbox.DEFAULT_MAX_ROWS + 1))
        join = "SELECT a.singer_id, b.name, c.country FROM singer a, singer b, singer c"
        assert len(run_query(conn, join, max_rows=27_000)[1]) == 27_000
        with pytest.raises(QueryFailed, match="more than 26999 rows"):
            run_query(conn, join, max_rows=26_999)
        # one value: exactly 1 MB comes back, one byte more does not
        assert run_query(conn, "SELECT zeroblob(1000000)") == (1, [(bytes(1_000_000),)])
        with pytest.raises(QueryFailed, match="a value or row over 1 MB"):
            run_query(conn, "SELECT zeroblob(1000001)")
        with pytest.raises(QueryFailed, match="a value or row over 1 MB"):  # inside an aggregate too
            run_query(conn, "SELECT group_concat(a.name) FROM singer a, singer b, singer c, singer d")
        # the result: 31 rows of (8 + 8 + 1,000,000 bytes) are under 32 MB, 32 rows are over
        blobs = count.replace("SELECT x FROM c", "SELECT x, zeroblob(1000000) FROM c")
        assert len(run_query(conn, blobs.format(31))[1]) == 31
        with pytest.raises(QueryFailed, match="result over 32 MB"):
            run_query(conn, blobs.format(32))
        # the SQL text: 10,000 bytes are fine, one more is not
        assert run_query(conn, "SELECT 1" + " " * (sandbox.MAX_SQL_BYTES - 8)) == (1, [(1,)])
        with pytest.raises(QueryFailed, match="query string is too large"):
            run_query(conn, "SELECT 1" + " " * (sandbox.MAX_SQL_BYTES - 7))
    finally:
        conn.close()
    # a sort of 27,000 rows, and 27,000-row results compared in order and as multisets
    ordered = "SELECT a.name, b.name, c.age FROM singer a, singer b, singer c ORDER BY c.age DESC, a.name, b.name"
    assert execution_match(ordered, ordered, singer_db)
    assert execution_match("SELECT x.name, y.name, z.age FROM singer z, singer y, singer x",
                           "SELECT a.name, b.name, c.age FROM singer a CROSS JOIN singer b CROSS JOIN singer c",
                           singer_db)
    assert not execution_match(ordered.replace("DESC", "ASC"), ordered, singer_db)


@pytest.mark.skipif(sandbox._HEAP_API is None, reason="SQLite's heap-limit functions cannot be reached")
def test_heap_limits_are_put_back(singer_db):
    hard, soft, _ = sandbox._HEAP_API
    conn = open_readonly(singer_db)
    try:
        for prior_hard, prior_soft in ((0, 0), (2_000_000_000, 1_000_000_000)):
            hard(prior_hard)
            soft(prior_soft)
            assert run_query(conn, GOLD) == (1, [(30,)])
            assert (hard(-1), soft(-1)) == (prior_hard, prior_soft)
            with pytest.raises(QueryFailed, match="over the 64 MB memory limit"):
                run_query(conn, HOSTILE["row-of-300-1MB-values"][0])
            assert (hard(-1), soft(-1)) == (prior_hard, prior_soft)
    finally:
        hard(0)
        soft(0)
        conn.close()
    plain = sqlite3.connect(":memory:")
    assert plain.execute("PRAGMA hard_heap_limit").fetchone() == (0,)
    assert plain.execute("SELECT length(randomblob(100000000))").fetchone() == (100_000_000,)  # no heap bound left
    plain.close()


def test_without_the_heap_limit_functions_queries_still_run(singer_db, monkeypatch):
    monkeypatch.setattr(sandbox, "_HEAP_API", None)
    conn = open_readonly(singer_db)
    try:
        assert run_query(conn, GOLD) == (1, [(30,)])
        with pytest.raises(QueryFailed, match="a value or row over 1 MB"):
            run_query(conn, "SELECT randomblob(1000000000)")
    finally:
        conn.close()


if __name__ == "__main__":
    sandbox_py = Path(sys.argv[1] if len(sys.argv) > 1 else sandbox.__file__).resolve()
    timeout_s = float(sys.argv[2]) if len(sys.argv) > 2 else sandbox.DEFAULT_TIMEOUT_S
    print(f"{sandbox_py}, timeout {timeout_s:g} s; seconds and outcome of run_query, of the query as the prediction "
          "and as the gold query; peak RSS growth; database unchanged")
    with tempfile.TemporaryDirectory() as tmp:
        db = make_singer_db(Path(tmp) / "singers.sqlite")
        for name, (sql, _, _) in HOSTILE.items():
            before = fingerprint(db)
            r = measure(sandbox_py, db, sql, timeout_s)
            said = {c: r[c]["outcome"].replace(f"gold query fails on {db}: ", "").split("; query:")[0][:60]
                    for c in ("run_query", "prediction", "gold")}
            calls = " | ".join(f"{r[c]['seconds']:5.2f} s {said[c]}" for c in said)
            print(f"{name:25s} | {calls} | +{r['growth_mb']} MB | {fingerprint(db) == before}", flush=True)
