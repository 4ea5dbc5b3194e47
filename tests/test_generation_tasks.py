"""The generation tasks of Table 1 (GSM8K, SQL, ViGGO): their metrics on hand-made cases, their
loaders on small files in the release and hub formats, and on the real data when it is present."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from pefteval.errors import DataError
from pefteval.tasks.generation import GenExample
from pefteval.tasks.gsm8k import GSM8K, extract_gsm8k_answer, gsm8k_accuracy, load_gsm8k
from pefteval.tasks.sql import SQL, sql_execution_match
from pefteval.tasks.sql.data import load_sql, spider_schema_context, squash_sql_whitespace
from pefteval.tasks.sql.normalize import normalize_sql, sql_exact_match
from pefteval.tasks.sql.sandbox import GoldQueryError, execution_match
from pefteval.tasks.sql.synthetic import (
    execution_match_populated,
    parse_create_tables,
    populate_database,
    populated_databases,
    query_literals,
)
from pefteval.tasks.viggo import VIGGO_ACTS, load_viggo, parse_mr, viggo_accuracy, viggo_exact_match, viggo_slot_scores

# --- GSM8K ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 72", "72"),
    ("#### 1,234", "1234"),
    ("so the total is $1,234.50.", "1234.5"),
    ("The answer is 5.00", "5"),
    ("#### -3", "-3"),
    ("she lost 3 and then had -12 left.", "-12"),
    ("#### 0.50", "0.5"),
    ("it costs $.5 per egg", "0.5"),
    ("#### 18\nsome trailing words with 99", "18"),  # the marker wins over later numbers
    ("#### 4 #### 7", "7"),  # the last marker
    ("3 + 4 = 7, so\n####", "7"),  # the last number when no number follows the marker
    ("#### -0", "0"),
    ("It is 10. Then 3-7=-4.", "-4"),
    ("no numbers here", None),
    ("", None),
    (None, None),
])
def test_extract_gsm8k_answer(text, expected):
    assert extract_gsm8k_answer(text) == expected


def test_gsm8k_accuracy_accepts_numbers_or_full_answers():
    golds = ["It is 2 + 3 = <<2+3=5>>5.\n#### 5", "1,000", "#### -2"]
    assert gsm8k_accuracy(["#### 5.0", "so 1000 in all", "#### 2"], golds) == pytest.approx(2 / 3)
    assert gsm8k_accuracy(["garbage", "", "-2"], golds) == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        gsm8k_accuracy(["1"], golds)
    with pytest.raises(ValueError, match="no number"):
        gsm8k_accuracy(["1"], ["no gold"])


# --- SQL: canonical form ---------------------------------------------------------------------


@pytest.mark.parametrize("a, b", [
    ("SELECT count(*) FROM head WHERE age  >  56", "select COUNT(*)\nfrom HEAD where AGE>56;"),
    ('SELECT T1.name FROM singer AS T1 WHERE T1.country = "France"',
     "select t1.name from singer as t1 where t1.country = 'France'"),
    ('SELECT "Home Town" FROM people', 'select "home town" from PEOPLE'),
    ("SELECT name FROM a WHERE x IN ('p', 'q')", 'select name from a where x in ("p", "q")'),
])
def test_normalize_sql_equal_forms(a, b):
    assert normalize_sql(a) == normalize_sql(b)
    assert sql_exact_match(a, b)


@pytest.mark.parametrize("a, b", [
    ("SELECT name FROM singer WHERE country = 'France'", "SELECT name FROM singer WHERE country = 'france'"),
    ("SELECT name FROM singer", "SELECT age FROM singer"),
    ("SELECT name FROM singer ORDER BY age", "SELECT name FROM singer ORDER BY age DESC"),
])
def test_normalize_sql_keeps_differences(a, b):
    assert not sql_exact_match(a, b)


def test_normalize_sql_output_and_fallback():
    assert normalize_sql("SELECT Name FROM Singer WHERE Age > 3;") == "select name from singer where age > 3"
    assert normalize_sql('SELECT "Order" FROM t') == 'select "order" from t'  # a keyword stays quoted
    # not SQL: whitespace and case only, literals kept
    assert normalize_sql("SELEC  Name  FRM t WHERE x='A b';") == "selec name frm t where x = 'A b'"
    assert normalize_sql("SELECT 1; DROP TABLE t") == normalize_sql("select 1 ;  drop table T")


def test_squash_sql_whitespace_keeps_quoted_text():
    assert squash_sql_whitespace("SELECT  a FROM t WHERE b  =  'x  y'  AND c = \"p  q\"") == \
        "SELECT a FROM t WHERE b = 'x  y' AND c = \"p  q\""


# --- SQL: execution on a real file ---------------------------------------------------------------

SINGERS = [("Ann", 25, "France"), ("Bob", 35, "France"), ("Cid", 41, "Spain"), ("Dee", 35, "Italy")]


@pytest.fixture
def singer_db(tmp_path: Path) -> Path:
    path = tmp_path / "singers.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE singer (singer_id INTEGER PRIMARY KEY, name VARCHAR, age INTEGER, country VARCHAR)")
    conn.executemany("INSERT INTO singer (name, age, country) VALUES (?, ?, ?)", SINGERS)
    conn.commit()
    conn.close()
    return path


def test_execution_match_right_and_wrong(singer_db):
    gold = "SELECT name FROM singer WHERE age > 30 AND country = 'France'"
    assert execution_match(gold, gold, singer_db)
    assert execution_match("select S.name from singer as S where S.country = \"France\" and 30 < S.age;", gold,
                           singer_db)
    assert not execution_match("SELECT name FROM singer WHERE age > 30", gold, singer_db)
    assert not execution_match("SELECT name, age FROM singer WHERE age > 30 AND country = 'France'", gold, singer_db)
    assert not execution_match("SELECT nme FROM singer", gold, singer_db)  # an error is wrong
    assert not execution_match("not sql at all", gold, singer_db)


def test_execution_match_row_order_only_with_top_level_order_by(singer_db):
    unordered = "SELECT name FROM singer WHERE country = 'France'"
    assert execution_match("SELECT name FROM singer WHERE country = 'France' ORDER BY name DESC", unordered,
                           singer_db)
    ordered = "SELECT name FROM singer ORDER BY age, name"
    assert execution_match("SELECT name FROM singer ORDER BY age ASC, name ASC", ordered, singer_db)
    assert not execution_match("SELECT name FROM singer ORDER BY age DESC, name", ordered, singer_db)
    # an ORDER BY inside a subquery does not make the outer result ordered
    inner = "SELECT name FROM (SELECT name FROM singer ORDER BY age LIMIT 3)"
    assert execution_match("SELECT name FROM (SELECT name, age FROM singer ORDER BY age LIMIT 3) ORDER BY name DESC",
                           inner, singer_db)
    # duplicates count: a multiset, not a set
    assert not execution_match("SELECT DISTINCT age FROM singer", "SELECT age FROM singer", singer_db)


@pytest.mark.parametrize("attack", [
    "DELETE FROM singer",
    "DROP TABLE singer",
    "INSERT INTO singer (name, age, country) VALUES ('Eve', 1, 'Peru')",
    "UPDATE singer SET age = 0",
    "SELECT 1; DROP TABLE singer",
    "SELECT name FROM singer; DELETE FROM singer",
    "CREATE TABLE x (a INT)",
    "ATTACH DATABASE 'other.sqlite' AS other",
    "PRAGMA query_only = OFF",
    "PRAGMA journal_mode = WAL",
    "BEGIN IMMEDIATE",
    "VACUUM",
    "WITH d AS (SELECT 1) DELETE FROM singer",
    "SELECT load_extension('x')",
])
def test_writes_are_wrong_and_change_nothing(singer_db, attack):
    before_bytes, before_stat = singer_db.read_bytes(), singer_db.stat()
    before_files = sorted(p.name for p in singer_db.parent.iterdir())
    assert not execution_match(attack, "SELECT name FROM singer", singer_db)
    after = singer_db.stat()
    assert singer_db.read_bytes() == before_bytes
    assert (after.st_mtime_ns, after.st_size) == (before_stat.st_mtime_ns, before_stat.st_size)
    assert sorted(p.name for p in singer_db.parent.iterdir()) == before_files  # no journal, no attached file
    conn = sqlite3.connect(singer_db)
    assert conn.execute("SELECT count(*) FROM singer").fetchone()[0] == len(SINGERS)
    conn.close()


def test_runaway_query_times_out(singer_db):
    runaway = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
    start = time.monotonic()
    assert not execution_match(runaway, "SELECT count(*) FROM singer", singer_db, timeout_s=0.3)
    assert time.monotonic() - start < 5
    # a bounded recursive CTE is fine
    bounded = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 4) SELECT count(*) FROM c"
    assert execution_match(bounded, "SELECT count(*) FROM singer", singer_db)


def test_gold_failure_and_missing_database(singer_db, tmp_path):
    with pytest.raises(GoldQueryError, match="no such column"):
        execution_match("SELECT name FROM singer", "SELECT nme FROM singer", singer_db)
    with pytest.raises(FileNotFoundError):
        execution_match("SELECT 1", "SELECT 1", tmp_path / "absent.sqlite")


# --- SQL: populated databases ----------------------------------------------------------------

SCHEMA = "CREATE TABLE singer (singer_id INTEGER, name VARCHAR, age INTEGER, country VARCHAR)"


def test_empty_table_hides_a_wrong_query_populated_ones_do_not(tmp_path):
    empty = tmp_path / "empty.sqlite"
    conn = sqlite3.connect(empty)
    conn.execute(SCHEMA)
    conn.close()
    gold = "SELECT name FROM singer WHERE age > 30"
    wrong = "SELECT name FROM singer WHERE age < 30"
    assert execution_match(wrong, gold, empty)  # both return nothing on an empty table
    assert not execution_match_populated(wrong, gold, SCHEMA, cache_dir=tmp_path / "cache")
    assert not execution_match_populated("SELECT name FROM singer WHERE age >= 30", gold, SCHEMA,
                                         cache_dir=tmp_path / "cache")


def test_populated_match_accepts_rewritten_queries(tmp_path):
    cache = tmp_path / "cache"
    gold = "SELECT name FROM singer WHERE age > 30 AND country = 'France'"
    for pred in ["select T.name from singer as T where T.country = \"France\" and 30 < T.age",
                 "SELECT name FROM singer WHERE country = 'France' AND age > 30 ORDER BY name",
                 "SELECT name FROM singer WHERE NOT (age <= 30 OR country != 'France')"]:
        assert execution_match_populated(pred, gold, SCHEMA, cache_dir=cache), pred
    assert not execution_match_populated("SELECT name FROM singer WHERE country = 'France'", gold, SCHEMA,
                                         cache_dir=cache)
    assert not execution_match_populated("SELECT DELETE", gold, SCHEMA, cache_dir=cache)


def test_populated_databases_are_seeded_cached_and_read_only(tmp_path):
    cache = tmp_path / "cache"
    values = query_literals("SELECT name FROM singer WHERE country = 'France' AND age > 30")
    assert set(values) == {"France", 30}
    paths = populated_databases(SCHEMA, values, seed=3, n_databases=3, rows_per_table=10, cache_dir=cache)
    assert len(set(paths)) == 3 and all(p.is_file() for p in paths)
    stamps = [(p.stat().st_mtime_ns, p.read_bytes()) for p in paths]
    assert populated_databases(SCHEMA, values, seed=3, n_databases=3, rows_per_table=10, cache_dir=cache) == paths
    assert not execution_match_populated("DELETE FROM singer", "SELECT name FROM singer", SCHEMA, seed=3,
                                         rows_per_table=10, cache_dir=cache)
    assert [(p.stat().st_mtime_ns, p.read_bytes()) for p in paths] == stamps

    def rows(path):
        conn = sqlite3.connect(path)
        try:
            return conn.execute("SELECT * FROM singer").fetchall()
        finally:
            conn.close()

    a = populate_database(SCHEMA, tmp_path / "a.sqlite", seed=7, rows_per_table=10, values=values)
    b = populate_database(SCHEMA, tmp_path / "b.sqlite", seed=7, rows_per_table=10, values=values)
    c = populate_database(SCHEMA, tmp_path / "c.sqlite", seed=8, rows_per_table=10, values=values)
    assert rows(a) == rows(b) != rows(c)
    assert 5 <= len(rows(a)) <= 10
    assert all(isinstance(r[0], int) and isinstance(r[1], str) for r in rows(a))  # typed by the declared type


def test_populated_values_make_joins_and_filters_match(tmp_path):
    schema = ("CREATE TABLE stadium (stadium_id INTEGER, name VARCHAR, capacity INTEGER, PRIMARY KEY (stadium_id)); "
              "CREATE TABLE concert (concert_id INTEGER, stadium_id INTEGER, year VARCHAR, PRIMARY KEY (concert_id), "
              "FOREIGN KEY (stadium_id) REFERENCES stadium(stadium_id))")
    path = populate_database(schema, tmp_path / "db.sqlite", seed=1, rows_per_table=12, values=["2014"])
    conn = sqlite3.connect(path)
    ids = [r[0] for r in conn.execute("SELECT stadium_id FROM stadium")]
    assert len(ids) == len(set(ids))  # a primary key gets distinct values
    assert conn.execute("SELECT count(*) FROM concert JOIN stadium USING (stadium_id)").fetchone()[0] > 0
    years = [r[0] for r in conn.execute("SELECT year FROM concert")]
    assert "2014" in years and len(set(years)) > 1  # the gold literal occurs, among other values
    conn.close()


def test_parse_create_tables_tolerates_variants():
    tables = parse_create_tables(
        'CREATE TABLE "t a" ("Home Town" VARCHAR(20) NOT NULL, id INTEGER PRIMARY KEY, x int, '
        "FOREIGN KEY (x) REFERENCES u(y)); CREATE TABLE u (y number, z, CheckIn text, CHECK (y > 0)); "
        "CREATE TABLE u (w text); SELECT 1")
    assert [t.name for t in tables] == ["t a", "u"]
    assert [(c.name, c.type) for c in tables[0].columns] == [("Home Town", "VARCHAR(20)"), ("id", "INTEGER"),
                                                             ("x", "int")]
    assert tables[0].primary_key == ("id",) and tables[0].foreign_keys == (("x", "u", "y"),)
    assert [c.name for c in tables[1].columns] == ["y", "z", "CheckIn", "w"]  # a table named twice is merged
    with pytest.raises(ValueError):
        parse_create_tables("SELECT 1")


def test_sql_execution_match_uses_the_real_database_when_there_is_one(singer_db, tmp_path):
    gold = "SELECT name FROM singer WHERE age > 30"
    meta = {"db_path": str(singer_db), "schema": SCHEMA}
    # on the real rows no one is between 30 and 35 exclusive, so >= 35 agrees there
    assert sql_execution_match("SELECT name FROM singer WHERE age >= 35", gold, meta)
    meta_without = {"db_path": None, "schema": SCHEMA}
    assert not sql_execution_match("SELECT name FROM singer WHERE age >= 35", gold, meta_without,
                                   cache_dir=tmp_path / "cache")
    assert sql_execution_match(gold, gold, meta_without, cache_dir=tmp_path / "cache")


# --- ViGGO ---------------------------------------------------------------------------------

GOLD_MR = ("inform(name[Dirt: Showdown], release_year[2012], esrb[E 10+ (for Everyone 10 and Older)], "
           "genres[driving/racing, sport], platforms[PlayStation, Xbox, PC], has_mac_release[no])")


def test_parse_mr():
    act, slots = parse_mr(GOLD_MR)
    assert act == "inform"
    assert slots == {"name": ("Dirt: Showdown",), "release_year": ("2012",),
                     "esrb": ("E 10+ (for Everyone 10 and Older)",), "genres": ("driving/racing", "sport"),
                     "platforms": ("PC", "PlayStation", "Xbox"), "has_mac_release": ("no",)}
    # commas inside a one-value slot stay
    assert parse_mr("confirm(exp_release_date[August 14, 2018])")[1] == {"exp_release_date": ("August 14, 2018",)}
    assert parse_mr("request_attribute(esrb[])") == ("request_attribute", {"esrb": ()})


@pytest.mark.parametrize("text, expected", [
    ("", ("", {})),
    (None, ("", {})),
    ("just words", ("", {})),
    ("inform(name[X], genres[a, b", ("inform", {"name": ("X",)})),  # an unclosed slot is dropped
    ("inform name[X]", ("inform", {"name": ("X",)})),  # a known act without parenthesis
    ("name[X] rating[good]", ("", {"name": ("X",), "rating": ("good",)})),
    ("Inform( Name[ X  Y ],genres[b,a],genres[c])", ("inform", {"name": ("X Y",), "genres": ("a", "b", "c")})),
    (42, ("", {})),
])
def test_parse_mr_tolerates_junk(text, expected):
    assert parse_mr(text) == expected


def test_viggo_exact_match_and_scores():
    reordered = ("inform(has_mac_release[no], platforms[PC, Xbox, PlayStation], genres[sport, driving/racing], "
                 "name[Dirt: Showdown], esrb[E 10+ (for Everyone 10 and Older)], release_year[2012])")
    assert viggo_exact_match(reordered, GOLD_MR)
    assert not viggo_exact_match(reordered.replace("inform", "confirm", 1), GOLD_MR)
    assert not viggo_exact_match(GOLD_MR.replace("[no]", "[yes]"), GOLD_MR)
    assert viggo_accuracy([reordered, "junk"], [GOLD_MR, GOLD_MR]) == 0.5
    # gold pairs: act + name + 2 genres + rating = 5; predicted: act(wrong) + name + genres sport = 3
    scores = viggo_slot_scores(["confirm(name[X], genres[sport])"],
                               ["inform(name[X], genres[sport, shooter], rating[good])"])
    assert scores["precision"] == pytest.approx(2 / 3)
    assert scores["recall"] == pytest.approx(2 / 5)
    assert scores["f1"] == pytest.approx(2 * (2 / 3) * (2 / 5) / (2 / 3 + 2 / 5))
    assert viggo_slot_scores(["junk"], ["inform(name[X])"]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    assert viggo_slot_scores([GOLD_MR], [GOLD_MR])["f1"] == 1.0


# --- loaders on small files in the release formats -------------------------------------------

def test_gsm8k_files(tmp_path):
    (tmp_path / "gsm8k").mkdir()
    rows = [{"question": "What is 2+3?", "answer": "2+3=<<2+3=5>>5\n#### 5"},
            {"question": "Big?", "answer": "It is big.\n#### 1,200"}]
    for split in ("train", "test"):
        (tmp_path / "gsm8k" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    splits = load_gsm8k(tmp_path)
    assert [len(splits[s]) for s in ("train", "test")] == [2, 2]
    first = splits["train"][1]
    assert first.target == "It is big.\n#### 1,200" and first.meta["gold"] == "1200"
    assert "Big?" in first.prompt and first.prompt == GSM8K.render(question="Big?")
    (tmp_path / "gsm8k" / "test.jsonl").write_text(json.dumps(rows[0]) + "\n{not json\n")
    with pytest.raises(DataError, match=r"test\.jsonl: line 2"):
        load_gsm8k(tmp_path)
    (tmp_path / "gsm8k" / "test.jsonl").write_text(json.dumps({"question": "q", "answer": "no marker"}) + "\n")
    with pytest.raises(DataError, match=r"line 1.*####"):
        load_gsm8k(tmp_path)
    (tmp_path / "gsm8k" / "test.jsonl").write_text(json.dumps({"question": "q"}) + "\n")
    with pytest.raises(DataError, match=r"line 1.*'answer'"):
        load_gsm8k(tmp_path)
    (tmp_path / "gsm8k" / "test.jsonl").unlink()
    with pytest.raises(DataError, match=r"test\.jsonl.*--data-dir.*hub"):
        load_gsm8k(tmp_path)


def test_viggo_files(tmp_path):
    (tmp_path / "viggo").mkdir()
    good = ('mr,ref\n"inform(name[X], genres[a, b])","X is an a, b game."\n'
            '"request_attribute(esrb[])",Do you care about ratings?\n')
    for name in ("train", "valid", "test"):
        (tmp_path / "viggo" / f"{name}.csv").write_text(good)
    splits = load_viggo(tmp_path)
    assert {k: len(v) for k, v in splits.items()} == {"train": 2, "validation": 2, "test": 2}
    x = splits["validation"][0]
    assert x.target == "inform(name[X], genres[a, b])" and x.prompt.endswith("Sentence: X is an a, b game.")
    (tmp_path / "viggo" / "valid.csv").write_text(good + '"inform(name[Y])",\n')
    with pytest.raises(DataError, match=r"valid\.csv: line 4.*'ref'"):
        load_viggo(tmp_path)
    (tmp_path / "viggo" / "valid.csv").write_text(good + "not an mr,some text\n")
    with pytest.raises(DataError, match=r"valid\.csv: line 4.*act\(slot"):
        load_viggo(tmp_path)
    (tmp_path / "viggo" / "valid.csv").write_text("meaning,text\na,b\n")
    with pytest.raises(DataError, match=r"valid\.csv: line 1.*mr and ref"):
        load_viggo(tmp_path)


def _write_spider(root: Path, with_database: bool = True) -> None:
    spider = root / "spider"
    (spider / "database" / "club").mkdir(parents=True)
    schema = {"db_id": "club", "table_names_original": ["member", "sqlite_sequence"],
              "column_names_original": [[-1, "*"], [0, "Member_ID"], [0, "Name"], [0, "Home Town"], [1, "name"],
                                        [1, "seq"]],
              "column_types": ["text", "number", "text", "text", "text", "text"],
              "primary_keys": [1], "foreign_keys": []}
    (spider / "tables.json").write_text(json.dumps([schema]))
    dev = [{"db_id": "club", "question": "How many  members?", "query": "SELECT count(*)  FROM member"}]
    train = [{"db_id": "club", "SpiderQuestion": "Names?", "SpiderSynQuestion": "Titles?",
              "query": "SELECT Name FROM member WHERE \"Home Town\" = 'a  b'"}]
    (spider / "dev.json").write_text(json.dumps(dev))
    (spider / "train_spider_spidersyn.json").write_text(json.dumps(train))
    if with_database:
        conn = sqlite3.connect(spider / "database" / "club" / "club.sqlite")
        conn.execute('CREATE TABLE member (Member_ID INTEGER, Name TEXT, "Home Town" TEXT)')
        conn.execute("INSERT INTO member VALUES (1, 'Ann', 'a  b')")
        conn.commit()
        conn.close()


def test_spider_files_in_sql_create_context_form(tmp_path):
    _write_spider(tmp_path)
    splits = load_sql(tmp_path)
    test, train = splits["test"][0], splits["train"][0]
    context = 'CREATE TABLE member (Member_ID INTEGER, Name VARCHAR, "Home Town" VARCHAR, PRIMARY KEY (Member_ID))'
    assert test.meta["schema"] == context  # sqlite_sequence is left out
    assert test.prompt == SQL.render(question="How many members?", context=context)
    assert test.target == "SELECT count(*) FROM member"
    assert train.target == "SELECT Name FROM member WHERE \"Home Town\" = 'a  b'"
    assert "Names?" in train.prompt and "Titles?" not in train.prompt
    assert test.meta["db_id"] == "club" and Path(test.meta["db_path"]).is_file()
    assert sql_execution_match(train.target, train.target, train.meta)
    assert sql_execution_match("select name from MEMBER where \"home town\" = 'a  b';", train.target, train.meta)


def test_spider_without_database_and_bad_records(tmp_path):
    _write_spider(tmp_path, with_database=False)
    splits = load_sql(tmp_path)
    assert splits["test"][0].meta["db_path"] is None
    x = splits["train"][0]
    assert sql_execution_match(x.target, x.target, x.meta, cache_dir=tmp_path / "cache")
    dev = tmp_path / "spider" / "dev.json"
    dev.write_text(json.dumps([{"db_id": "nowhere", "question": "q", "query": "SELECT 1"}]))
    with pytest.raises(DataError, match=r"dev\.json: record 0: db_id 'nowhere'"):
        load_sql(tmp_path)
    dev.write_text(json.dumps([{"db_id": "club", "question": "q"}]))
    with pytest.raises(DataError, match=r"record 0: missing or empty 'query'"):
        load_sql(tmp_path)
    (tmp_path / "spider" / "tables.json").unlink()
    with pytest.raises(DataError, match=r"tables\.json.*--data-dir"):
        load_sql(tmp_path)


def test_gen_example_is_hashable_and_meta_does_not_count():
    a = GenExample("1", "p", "t", {"gold": "5"})
    b = GenExample("1", "p", "t", {"gold": "6"})
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1


# --- loaders on the hub formats ---------------------------------------------------------------

def _fake_hub(calls: list):
    def load_dataset(path, config=None, split=None):
        calls.append((path, config, split))
        if path == "openai/gsm8k":
            return [{"question": f"{split} q{i}", "answer": f"step\n#### {i}"} for i in range(4)]
        if path == "b-mc2/sql-create-context":
            return [{"question": f"How many heads are older than {i}?", "context": "CREATE TABLE head (age INTEGER)",
                     "answer": f"SELECT COUNT(*) FROM head WHERE age > {i}"} for i in range(30)]
        if path == "GEM/viggo":
            return [{"gem_id": f"viggo-{split}-{i}", "meaning_representation": f"inform(name[G{i}])",
                     "target": f"G{i} is a game.", "references": [f"G{i} is a game."]} for i in range(3)]
        raise ValueError(f"unexpected {path}")

    return load_dataset


def test_generation_tasks_from_hub(monkeypatch, tmp_path):
    import datasets

    calls: list = []
    monkeypatch.setattr(datasets, "load_dataset", _fake_hub(calls))
    gsm = load_gsm8k(None)
    assert ("openai/gsm8k", "main", "train") in calls and ("openai/gsm8k", "main", "test") in calls
    assert len(gsm["test"]) == 4 and gsm["test"][3].meta["gold"] == "3"
    viggo = load_viggo(None)
    assert {("GEM/viggo", None, s) for s in ("train", "validation", "test")} <= set(calls)
    assert viggo["validation"][1].target == "inform(name[G1])" and viggo["validation"][1].id == "viggo-validation-1"
    sql = load_sql(None, hub_test_size=5)
    assert ("b-mc2/sql-create-context", None, "train") in calls
    assert len(sql["train"]) == 25 and len(sql["test"]) == 5
    assert not {x.id for x in sql["train"]} & {x.id for x in sql["test"]}
    assert load_sql(None, hub_test_size=5)["test"] == sql["test"]  # the hold-out is seeded
    x = sql["test"][0]
    assert x.meta["db_path"] is None and x.meta["schema"] == "CREATE TABLE head (age INTEGER)"
    assert sql_execution_match(x.target, x.target, x.meta, cache_dir=tmp_path)
    wrong = x.target.replace(">", "<")
    assert not sql_execution_match(wrong, x.target, x.meta, cache_dir=tmp_path)


def test_hub_rows_are_checked_and_failures_are_clear(monkeypatch):
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: [{"question": "q", "answer": "no marker"}])
    with pytest.raises(DataError, match=r"openai/gsm8k train row 0.*####"):
        load_gsm8k(None)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: [{"target": "text"}])
    with pytest.raises(DataError, match=r"GEM/viggo train row 0.*'meaning_representation'"):
        load_viggo(None)

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match="--data-dir"):
        load_sql(None)


# --- the real data --------------------------------------------------------------------------------

def test_real_gsm8k_and_viggo_counts(data_dir):
    gsm = load_gsm8k(data_dir)
    assert {k: len(v) for k, v in gsm.items()} == {"train": 7473, "test": 1319}
    assert gsm["train"][0].meta["gold"] == "72" and gsm["train"][0].target.endswith("#### 72")
    assert gsm8k_accuracy([x.target for x in gsm["test"]], [x.meta["gold"] for x in gsm["test"]]) == 1.0
    viggo = load_viggo(data_dir)
    assert {k: len(v) for k, v in viggo.items()} == {"train": 5103, "validation": 714, "test": 1083}
    assert viggo_accuracy([x.target for x in viggo["test"]], [x.target for x in viggo["test"]]) == 1.0
    assert {x.meta["act"] for x in viggo["train"]} == set(VIGGO_ACTS)


def test_real_spider_counts_and_schemas(data_dir):
    sql = load_sql(data_dir)
    assert {k: len(v) for k, v in sql.items()} == {"train": 7000, "test": 1034}
    assert sum(x.meta["db_path"] is not None for x in sql["test"]) == 972
    assert sum(x.meta["db_path"] is not None for x in sql["train"]) == 7000 - 82 - 14
    assert {x.meta["db_id"] for x in sql["test"] if x.meta["db_path"] is None} == {"wta_1"}
    schemas = json.loads((data_dir / "spider" / "tables.json").read_text())
    for schema in schemas:
        tables = parse_create_tables(spider_schema_context(schema))
        names = [t for t in schema["table_names_original"] if not t.lower().startswith("sqlite_")]
        assert [t.name for t in tables] == names
        n_columns = sum(1 for t, _ in schema["column_names_original"]
                        if t >= 0 and not schema["table_names_original"][t].lower().startswith("sqlite_"))
        assert sum(len(t.columns) for t in tables) == n_columns


def test_real_spider_gold_against_itself(data_dir, tmp_path):
    sql = load_sql(data_dir)
    first_per_db: dict[str, GenExample] = {}
    for x in sql["test"]:
        first_per_db.setdefault(x.meta["db_id"], x)
    chosen = [x for x in first_per_db.values() if x.meta["db_path"]][:6]
    assert len(chosen) == 6
    for x in chosen:
        assert execution_match(x.target, x.target, x.meta["db_path"]), x.target
        assert sql_exact_match(x.target, x.target)
    wta = first_per_db["wta_1"]  # no database: populated from its schema
    assert sql_execution_match(wta.target, wta.target, wta.meta, cache_dir=tmp_path)
