"""GSM8K and Spider scores under the conventions published tables use, beside pefteval's own:
lm-evaluation-harness's strict-match and flexible-extract (lm_eval/tasks/gsm8k/gsm8k.yaml), the
original GSM8K ``extract_answer`` (openai/grade-school-math, grade_school_math/dataset.py) and the
execution verdict of test-suite-sql-eval (exec_eval.py ``eval_exec_match``). Each case's expected
verdicts follow from the rule named beside it."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from pefteval.reporting.generation import GenTable, secondary_rows
from pefteval.tasks import get_task
from pefteval.tasks.generation import GenExample
from pefteval.tasks.gsm8k import (
    LM_EVAL_FALLBACK,
    LM_EVAL_FLEXIBLE_PATTERN,
    LM_EVAL_STRICT_PATTERN,
    extract_gsm8k_answer,
    gsm8k_extract_answer,
    gsm8k_is_correct,
    lm_eval_exact_match,
    lm_eval_gsm8k_verdicts,
    lm_eval_regex_filter,
    load_gsm8k,
)
from pefteval.tasks.sql import sql_execution_match, sql_test_suite_match
from pefteval.tasks.sql.data import load_sql
from pefteval.tasks.sql.sandbox import GoldQueryError, execution_match
from pefteval.tasks.sql.testsuite_eval import (
    order_matters,
    prepare_queries,
    remove_distinct,
    replace_cur_year,
    results_equivalent,
    suite_databases,
    suite_exec_match,
)

GOLD_5 = "She has 2 + 3 = <<2+3=5>>5 apples.\n#### 5"


def verdicts(prediction: str, gold_answer: str = GOLD_5) -> tuple[bool, bool, bool, bool]:
    """(pefteval, lm-eval strict-match, lm-eval flexible-extract, original extract_answer)."""
    own = extract_gsm8k_answer(prediction) == extract_gsm8k_answer(gold_answer)
    strict, flexible = lm_eval_gsm8k_verdicts(prediction, gold_answer)
    return own, strict, flexible, gsm8k_is_correct(prediction, gold_answer)


# --- GSM8K ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("prediction, expected, rule", [
    # strict needs "#### "; flexible takes the last number-like run "$5." and exact_match's
    # regexes_to_ignore drop "$" and the final "."; ANS_RE needs "#### "
    ("The answer is $5.", (True, False, True, False), "strict regex needs '#### '; ignore \\$ and \\.$"),
    ("so she has 5 apples\n#### 5", (True, True, True, True), "every rule reads '#### 5'"),
    # "5.0" stays "5.0" under every lm-eval regex and under extract_answer: only pefteval reads a value
    ("5.0", (True, False, False, False), "no normalisation of 5.0 outside pefteval"),
    ("#### 5.0", (True, False, False, False), "strict captures '5.0'; extract_answer '5.0' != '5'"),
    # lm-eval drops a final "." (regexes_to_ignore \.$); extract_answer keeps it
    ("#### 5.", (True, True, True, False), "\\.$ ignored by lm-eval; ANS_RE keeps '5.'"),
    ("#### $5", (True, False, True, False), "[0-9.,] after '#### ' excludes $; flexible allows $"),
    ("5%", (True, False, True, False), "flexible's second group (-?[0-9]+) finds 5"),
    ("It is 5 apples", (True, False, True, False), "a one-digit answer is flexible's second group"),
    # strict and extract_answer take the first marker (take_first / re.search), pefteval the last
    ("#### 4 #### 5", (True, False, True, False), "first '####' for strict and ANS_RE"),
    ("#### 5 #### 4", (False, True, False, True), "last '####' for pefteval, last number for flexible"),
    # lm-eval cuts the generation at gsm8k.yaml's stop sequence "Question:" before filtering
    ("#### 5\nQuestion: and 2 + 2?\n#### 4", (False, True, True, True), "until: Question: truncates"),
    ("#### 05", (True, False, False, False), "string equality outside pefteval: '05' != '5'"),
    ("#### -5", (False, False, False, False), "a wrong sign is wrong everywhere"),
    ("no number at all", (False, False, False, False), "'[invalid]' fallback matches nothing"),
    ("", (False, False, False, False), "empty generation"),
])
def test_gsm8k_verdicts_under_each_convention(prediction, expected, rule):
    assert verdicts(prediction) == expected, rule


def test_gsm8k_commas_are_ignored_by_every_convention():
    gold = "It is big.\n#### 1,200"
    # lm-eval's regexes_to_ignore drop "," on both sides; extract_answer replaces "," by ""
    assert verdicts("#### 1200", gold) == (True, True, True, True)
    assert verdicts("#### 1,200", gold) == (True, True, True, True)
    assert verdicts("so 1,200 in all", gold) == (True, False, True, False)


def test_lm_eval_regex_filter_rules():
    # findall; group_select picks the match (0 first, -1 last); a tuple gives its first non-empty group
    assert lm_eval_regex_filter("#### 3 then #### 4", LM_EVAL_STRICT_PATTERN, 0) == "3"
    assert lm_eval_regex_filter("#### 3 then #### 4", LM_EVAL_STRICT_PATTERN, -1) == "4"
    assert lm_eval_regex_filter("a 12, b 7", LM_EVAL_FLEXIBLE_PATTERN, -1) == "7"
    assert lm_eval_regex_filter("a 12, b 7", LM_EVAL_FLEXIBLE_PATTERN, 0) == "12,"
    assert lm_eval_regex_filter("nothing", LM_EVAL_STRICT_PATTERN, 0) == LM_EVAL_FALLBACK == "[invalid]"
    # exact_match: ignore_case on, regexes_to_ignore on both sides, "(?s).*#### " through the last marker
    assert lm_eval_exact_match("12,", "x\n#### 1\n#### 12")
    assert lm_eval_exact_match("[INVALID]", "[invalid]")
    assert not lm_eval_exact_match("[invalid]", GOLD_5)


def test_original_extract_answer_rules():
    assert gsm8k_extract_answer("#### 1,234.") == "1234."
    assert gsm8k_extract_answer("no marker 5") == "[invalid]"
    with pytest.raises(ValueError, match="no '#### <number>'"):
        gsm8k_is_correct("#### 5", "#### $5")  # is_correct asserts the gold answer is valid


def write_gsm8k(root: Path, rows: list[dict]) -> None:
    (root / "gsm8k").mkdir(parents=True)
    for split in ("train", "test"):
        (root / "gsm8k" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_gsm8k_split_scores_carry_each_convention(tmp_path):
    rows = [{"question": f"What is {i} plus {i}?", "answer": f"{i}+{i}=<<{i}+{i}={2 * i}>>{2 * i}\n#### {2 * i}"}
            for i in (1, 2, 3, 600)]
    write_gsm8k(tmp_path, rows)
    examples = load_gsm8k(tmp_path)["test"]
    predictions = ["#### 2", "The answer is $4.", "#### 6.0", "#### 1,200"]
    task = get_task("gsm8k")
    scored = task.score(predictions, examples, False)
    # per example (pefteval, strict, flexible, original): TTTT, TFTF, TFFF, TTTT
    assert scored.metrics == {"accuracy": 1.0, "lm_eval_strict_match": 0.5, "lm_eval_flexible_extract": 0.75,
                              "gsm8k_extract_answer": 0.5, "n": 4}
    assert scored.per_example == [1.0, 1.0, 1.0, 1.0]  # pefteval's own verdicts
    assert task.selection_metric == "accuracy"
    assert task.report_columns == ("accuracy", "lm_eval_strict_match", "lm_eval_flexible_extract",
                                   "gsm8k_extract_answer")
    assert task.column_names["lm_eval_strict_match"] == "lm-eval strict-match"
    assert task.column_names["lm_eval_flexible_extract"] == "lm-eval flexible-extract"


def test_gsm8k_gold_without_a_strict_marker_is_unjudged_by_the_original_rule():
    examples = [GenExample("a", "p", "#### $5", {"gold": "5"}), GenExample("b", "p", "#### 7", {"gold": "7"})]
    m = get_task("gsm8k").score(["#### 5", "#### 7"], examples, False).metrics
    assert m["accuracy"] == 1.0 and m["gsm8k_extract_answer"] == 1.0  # over the one judged example
    assert m["lm_eval_strict_match"] == 1.0  # lm-eval's reference drops the "$" (regexes_to_ignore)


# --- Spider: test-suite-sql-eval ------------------------------------------------------------------

SINGERS = [("Ann", 25, "France"), ("Bob", 35, "France"), ("Cid", 41, "Spain"), ("Dee", 35, "Italy")]


def make_singer_db(path: Path, rows=SINGERS) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE singer (singer_id INTEGER PRIMARY KEY, name VARCHAR, age INTEGER, country VARCHAR)")
    conn.executemany("INSERT INTO singer (name, age, country) VALUES (?, ?, ?)", rows)
    conn.commit()
    conn.close()
    return path


@pytest.fixture
def singer_db(tmp_path: Path) -> Path:
    return make_singer_db(tmp_path / "concert" / "concert.sqlite")


@pytest.mark.parametrize("pred, gold, own, suite, rule", [
    ("SELECT age, name FROM singer", "SELECT name, age FROM singer", False, True,
     "result_eq tries column permutations"),
    ("SELECT country FROM singer", "SELECT DISTINCT country FROM singer", False, True,
     "remove_distinct on both queries (keep_distinct off)"),
    ("SELECT count(country) FROM singer", "SELECT count(DISTINCT country) FROM singer", False, True,
     "remove_distinct drops DISTINCT inside count() too"),
    ("SELECT name FROM singer ORDER BY name DESC", "SELECT name FROM singer", True, True,
     "bags when the gold query has no 'order by'"),
    ("SELECT name FROM singer ORDER BY age DESC, name", "SELECT name FROM singer ORDER BY age, name", False, False,
     "lists when the gold query has 'order by'"),
    ("SELECT name FROM (SELECT name, age FROM singer ORDER BY age LIMIT 3) ORDER BY name DESC",
     "SELECT name FROM (SELECT name, age FROM singer ORDER BY age LIMIT 3)", True, False,
     "'order by' anywhere in the gold query (a subquery's) makes row order count"),
    ("SELECT name, age FROM singer WHERE age > 100", "SELECT name FROM singer WHERE age > 100", False, True,
     "result_eq: two empty results are equal whatever their columns"),
    ("SELECT count(*) FROM singer WHERE age > value", "SELECT count(*) FROM singer WHERE age > 1", False, True,
     "evaluation.py evaluate: 'value' -> '1' in the prediction"),
    ("SELECT name FROM singer WHERE age > = 35", "SELECT name FROM singer WHERE age >= 35", False, True,
     "postprocess closes '> ='"),
    ("SELECT 0.1 + 0.2", "SELECT 0.3", True, False, "test-suite compares floats unrounded"),
    ("SELECT name, name FROM singer", "SELECT name, age FROM singer", False, False, "no permutation fits"),
    ("SELECT nme FROM singer", "SELECT name FROM singer", False, False, "a failing prediction is wrong"),
])
def test_spider_verdicts_under_each_convention(singer_db, pred, gold, own, suite, rule):
    assert execution_match(pred, gold, singer_db) is own, rule
    assert suite_exec_match(pred, gold, singer_db) is suite, rule


def test_keep_distinct_flag(singer_db):
    pred, gold = "SELECT country FROM singer", "SELECT DISTINCT country FROM singer"
    assert suite_exec_match(pred, gold, singer_db) and not suite_exec_match(pred, gold, singer_db, keep_distinct=True)
    assert prepare_queries("SELECT DISTINCT a", "SELECT b", keep_distinct=True) == ("SELECT DISTINCT a", "SELECT b")


def test_every_database_of_the_folder_must_agree(singer_db):
    pred, gold = "SELECT name FROM singer WHERE age >= 35", "SELECT name FROM singer WHERE age > 30"
    assert suite_exec_match(pred, gold, singer_db)
    # a second database in the folder (the test suite's layout) where the two queries differ
    make_singer_db(singer_db.parent / "concert_2.sqlite", [("Eve", 33, "Peru")])
    (singer_db.parent / "schema.sql").write_text("-- not a database")
    assert [p.name for p in suite_databases(singer_db)] == ["concert.sqlite", "concert_2.sqlite"]
    assert not suite_exec_match(pred, gold, singer_db)
    assert execution_match(pred, gold, singer_db)  # pefteval's own reads the example's database only


def test_sandbox_holds_for_the_test_suite_verdict(singer_db):
    for attack in ("DELETE FROM singer", "DROP TABLE singer", "ATTACH DATABASE 'x.db' AS x",
                   "SELECT name FROM singer; DELETE FROM singer"):
        assert not suite_exec_match(attack, "SELECT name FROM singer", singer_db)
    assert sqlite3.connect(singer_db).execute("SELECT count(*) FROM singer").fetchone() == (4,)
    runaway = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
    assert not suite_exec_match(runaway, "SELECT count(*) FROM singer", singer_db, timeout_s=0.3)
    with pytest.raises(GoldQueryError, match="test-suite rules"):
        suite_exec_match("SELECT name FROM singer", "SELECT nme FROM singer", singer_db)
    with pytest.raises(FileNotFoundError):
        suite_exec_match("SELECT 1", "SELECT 1", singer_db.parent / "absent.sqlite")


@pytest.mark.parametrize("gold, pred, ordered, expected, rule", [
    ([(1, "a"), (2, "b")], [("a", 1), ("b", 2)], True, True, "columns permuted, rows in order"),
    ([(1, "a"), (2, "b")], [("b", 2), ("a", 1)], True, False, "order matters: rows out of order"),
    ([(1, "a"), (2, "b")], [("b", 2), ("a", 1)], False, True, "bags: any row order"),
    ([(1, "a"), (2, "b")], [(1, "b"), (2, "a")], False, False, "same column bags, different rows"),
    ([(1,), (1,), (2,)], [(1,), (2,), (2,)], False, False, "multiset_eq: same set, other counts"),
    ([(1,), (2,)], [(1.0,), (2,)], False, True, "Python equality: 1 == 1.0"),
    ([], [], True, True, "both empty"),
    ([(1,)], [], False, False, "row counts differ"),
    ([(1, 2)], [(1,)], False, False, "column counts differ"),
    ([(1, 1, 2), (1, 2, 2)], [(2, 1, 1), (2, 2, 1)], False, True, "columns reversed"),
    ([(1, 1, 2), (3, 3, 4)], [(2, 1, 1), (4, 3, 3)], False, True, "two identical columns"),
    ([(1, 1, 2), (3, 3, 4)], [(2, 1, 1), (4, 3, 4)], False, False, "identical in gold only"),
])
def test_results_equivalent_follows_result_eq(gold, pred, ordered, expected, rule):
    assert results_equivalent(gold, pred, ordered) is expected, rule


def test_query_rewrites():
    assert remove_distinct("SELECT DISTINCT name FROM t WHERE x = 'distinct'") == \
        "SELECT  name FROM t WHERE x = 'distinct'"
    assert remove_distinct('SELECT count(distinct(a)), "Distinct", distinct_id FROM t') == \
        'SELECT count((a)), "Distinct", distinct_id FROM t'
    assert order_matters("SELECT a FROM (SELECT a FROM t ORDER BY a)") and not order_matters("SELECT a FROM t")
    assert order_matters("SELECT a FROM t WHERE b = 'order by'")  # a substring test, literal included
    assert replace_cur_year("SELECT year(curdate()) - age FROM t") == "SELECT 2020- age FROM t"
    assert prepare_queries("SELECT value FROM t WHERE a ! = 1", "SELECT value FROM t") == \
        ("SELECT 1 FROM t WHERE a != 1", "SELECT value FROM t")


def write_spider(root: Path) -> None:
    spider = root / "spider"
    spider.mkdir(parents=True)
    tables = [{"db_id": "concert", "table_names_original": ["singer"],
               "column_names_original": [[-1, "*"], [0, "singer_id"], [0, "name"], [0, "age"], [0, "country"]],
               "column_types": ["text", "number", "text", "number", "text"], "primary_keys": [1], "foreign_keys": []}]
    (spider / "tables.json").write_text(json.dumps(tables))
    queries = ["SELECT name, age FROM singer WHERE age > 30", "SELECT DISTINCT country FROM singer",
               "SELECT name FROM singer ORDER BY age, name", "SELECT count(*) FROM singer"]
    records = [{"db_id": "concert", "question": f"Question {i}?", "query": q} for i, q in enumerate(queries)]
    for name in ("dev.json", "train_spider.json"):
        (spider / name).write_text(json.dumps(records))
    make_singer_db(spider / "database" / "concert" / "concert.sqlite")


def test_sql_split_scores_carry_the_test_suite_verdict(tmp_path):
    write_spider(tmp_path)
    examples = load_sql(tmp_path)["test"]
    predictions = ["SELECT age, name FROM singer WHERE age > 30",  # columns swapped: test-suite only
                   "SELECT country FROM singer",  # DISTINCT on the gold only: test-suite only
                   "```sql\nSELECT name FROM singer ORDER BY age DESC, name;\n```",  # wrong order: neither
                   "SELECT count(*) FROM singer"]  # right: both
    task = get_task("sql")
    scored = task.score(predictions, examples, False)
    assert scored.metrics["accuracy"] == 0.25 and scored.metrics["test_suite_exec"] == 0.75
    assert scored.metrics["exact_match"] == 0.25 and scored.metrics["gold_errors"] == 0
    assert scored.per_example == [0.0, 0.0, 0.0, 1.0]
    assert task.selection_metric == "accuracy"
    assert task.report_columns == ("accuracy", "exact_match", "test_suite_exec")
    assert task.column_names["test_suite_exec"] == "test-suite exec"


def test_sql_test_suite_on_populated_databases_and_broken_gold(tmp_path):
    schema = "CREATE TABLE singer (name VARCHAR, age INTEGER, country VARCHAR)"
    meta = {"db_path": None, "schema": schema}
    gold = "SELECT name, age FROM singer WHERE age > 30"
    cache = tmp_path / "cache"
    assert sql_test_suite_match("SELECT age, name FROM singer WHERE age > 30", gold, meta, cache_dir=cache)
    assert not sql_execution_match("SELECT age, name FROM singer WHERE age > 30", gold, meta, cache_dir=cache)
    assert not sql_test_suite_match("SELECT age, name FROM singer WHERE age > 31", gold, meta, cache_dir=cache)
    examples = [GenExample("a", "p", "SELECT nme FROM singer", meta), GenExample("b", "p", gold, meta)]
    m = get_task("sql").score(["SELECT name FROM singer", gold], examples, False).metrics
    assert m["gold_errors"] == 1 and m["accuracy"] == 1.0 and m["test_suite_exec"] == 1.0


def test_report_shows_the_conventions_beside_the_main_scores():
    table = GenTable(["gsm8k", "sql"])
    table.scores["lora"] = {
        "gsm8k": {"accuracy": (0.5, 0.0), "lm_eval_strict_match": (0.25, 0.0), "lm_eval_flexible_extract": (0.4, 0.0),
                  "gsm8k_extract_answer": (0.2, 0.0)},
        "sql": {"accuracy": (0.1, 0.0), "exact_match": (0.05, 0.0), "test_suite_exec": (0.3, 0.0)},
    }
    header, body = secondary_rows(table, ["lora"])
    assert header == ["Method", "gsm8k lm-eval strict-match", "gsm8k lm-eval flexible-extract",
                      "gsm8k GSM8K extract_answer", "sql exact match", "sql test-suite exec"]
    assert body == [["lora", "25.00 (0.00)", "40.00 (0.00)", "20.00 (0.00)", "5.00 (0.00)", "30.00 (0.00)"]]
