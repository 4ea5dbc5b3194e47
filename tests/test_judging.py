"""MT-Bench judging (pefteval/judging): FastChat's single-answer grading on the real MT-Bench files.

Most tests pass a plain function as the judgment generator (``generate(requests, retry) -> texts``):
they test the prompts, the parsing, the files, the cache and the sanity check, not a judge. The
local backend runs for real twice: a tiny LLaMA trained here in seconds to answer one way or another
(for the per-row stop, exactly), and the packaged SmolLM2-135M on a few judgments (integration).
"""

from __future__ import annotations

import ast
import builtins
import json
import os
import random
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest

from pefteval.config import JudgeConfig
from pefteval.errors import DataError, UserError
from pefteval.judging import check as sanity
from pefteval.judging import (
    collect_answers,
    judge_answers,
    judge_identity,
    judge_run,
    judge_slug,
    load_checks,
    load_judgments,
    mt_bench_scores,
    parse_rating,
)
from pefteval.judging.identity import endpoint_host, is_loopback
from pefteval.judging.output import EXTRA_KEYS, FASTCHAT_KEYS, answer_path, check_path, judgment_path
from pefteval.judging.prompts import JudgeRequest, answer_requests
from pefteval.store import ResultStore
from pefteval.tasks.mt_bench import (
    CATEGORIES,
    answer_row,
    read_answers,
    read_judge_prompts,
    read_questions,
    read_reference_answers,
    write_answers,
)
from tests.conftest import DATA_DIR

MATH_LIKE = {"math", "reasoning", "coding"}


def mt_bench_data() -> Path:
    """The folder holding FastChat's mt_bench/ files (read-only); the test is skipped without them."""
    if not (DATA_DIR / "mt_bench" / "question.jsonl").is_file():
        pytest.skip(f"MT-Bench data not found under {DATA_DIR / 'mt_bench'}")
    return DATA_DIR


@pytest.fixture(scope="module")
def mt_data() -> Path:
    return mt_bench_data()


@pytest.fixture(scope="module")
def mt(mt_data: Path) -> SimpleNamespace:
    return SimpleNamespace(questions=read_questions(mt_data), references=read_reference_answers(mt_data),
                           prompts=read_judge_prompts(mt_data))


class Gen:
    """A judgment generator from a rule (request, retry) -> text, recording every call."""

    def __init__(self, rule: Callable[[JudgeRequest, bool], str], chunk_size: int | None = None,
                 fail_on_call: int | None = None):
        self.rule = rule
        self.calls: list[tuple[list[JudgeRequest], bool]] = []
        self.fail_on_call = fail_on_call
        if chunk_size is not None:
            self.chunk_size = chunk_size

    def __call__(self, requests: Sequence[JudgeRequest], retry: bool) -> list[str]:
        if self.fail_on_call is not None and len(self.calls) + 1 == self.fail_on_call:
            raise RuntimeError("the judge died")
        self.calls.append((list(requests), retry))
        return [self.rule(r, retry) for r in requests]

    @property
    def judged(self) -> int:
        return sum(len(reqs) for reqs, _ in self.calls)


def answers_file(path: Path, model_id: str, qids: Sequence[int], turn_1: str = "first answer to {qid}",
                 turn_2: str = "second answer to {qid}") -> Path:
    write_answers(path, [answer_row(q, model_id, [turn_1.format(qid=q), turn_2.format(qid=q)], tstamp=1.0)
                         for q in qids])
    return path


def quiet(lines: list[str] | None = None) -> Callable[[str], None]:
    return (lambda text: None) if lines is None else lines.append


def cfg(**kw: Any) -> JudgeConfig:
    return JudgeConfig(**{"sanity_questions": 2, **kw})


# --- rating parsing ------------------------------------------------------------------------------

@pytest.mark.parametrize("text, rating", [
    ("The answer is accurate. Rating: [[8]]", 8.0),
    ("Rating: [[8.5]]", 8.5),
    ("[[10]]", 10.0),
    ("[[8.]]", 8.0),
    ("I would rate it [7] overall.", 7.0),  # the backup pattern
    ("Rating: [[3]]. On reflection: [[9]]", 3.0),  # the first match wins
    ("[2] is wrong; Rating: [[9]]", 9.0),  # [[x]] is looked for first, in the whole text
    ("[[15]]", 15.0),  # FastChat keeps what it reads, in range or not
    ("8/10", None),
    ("Rating: [[ten]]", None),
    ("Rating: [[ 8 ]]", None),
    ("[[-3]]", None),
    ("Rating: [[rating]]", None),
    ("", None),
])
def test_rating_parsed_as_fastchat(text: str, rating: float | None) -> None:
    parsed = parse_rating(text)
    assert parsed == rating
    assert parsed is None or type(parsed) is float


def test_rating_is_never_evaluated(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a judgment's text must never be evaluated")

    monkeypatch.setattr(builtins, "eval", refuse)
    monkeypatch.setattr(ast, "literal_eval", refuse)
    assert parse_rating("Rating: [[6.5]]") == 6.5
    assert parse_rating("[[__import__('os').system('true')]]") is None


# --- prompts -------------------------------------------------------------------------------------

def _identity(name: str) -> dict[str, Any]:
    return judge_identity(JudgeConfig(), name)


def test_prompt_choice_per_category_and_turn(mt: SimpleNamespace) -> None:
    answers = {q.question_id: ["a", "b"] for q in mt.questions}
    requests, missing = answer_requests("m", answers, mt.questions, mt.prompts, mt.references, _identity)
    assert missing == [] and len(requests) == 160
    assert {r.category for r in requests} == set(CATEGORIES)
    for r in requests:
        expected = ("single-math-v1" if r.category in MATH_LIKE else "single-v1") + (
            "-multi-turn" if r.turn == 2 else "")
        assert r.prompt_name == expected, (r.question_id, r.category, r.turn)
        assert r.system == mt.prompts[expected].system_prompt
    assert sum(1 for r in requests if r.prompt_name.startswith("single-math")) == 2 * 30


def _fill(template: str, values: dict[str, str]) -> str:
    """The template's {name} placeholders replaced in one pass (independent of str.format)."""
    used = set(re.findall(r"\{(\w+)\}", template))
    assert used <= values.keys(), used - values.keys()
    return re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], template)


def test_prompt_text_filled_with_answers_and_references(mt: SimpleNamespace) -> None:
    by_id = {q.question_id: q for q in mt.questions}
    answer = ["My {answer_2} answer, with {0} braces.", "Second {question} turn."]
    requests, _ = answer_requests("m", {81: answer, 111: answer}, [by_id[81], by_id[111]], mt.prompts,
                                  mt.references, _identity)
    got = {(r.question_id, r.turn): r for r in requests}
    q81, q111, ref = by_id[81], by_id[111], mt.references[111]
    assert got[81, 1].user == _fill(mt.prompts["single-v1"].prompt_template,
                                    {"question": q81.turns[0], "answer": answer[0]})
    assert got[81, 2].user == _fill(mt.prompts["single-v1-multi-turn"].prompt_template,
                                    {"question_1": q81.turns[0], "answer_1": answer[0],
                                     "question_2": q81.turns[1], "answer_2": answer[1]})
    assert got[111, 1].user == _fill(mt.prompts["single-math-v1"].prompt_template,
                                     {"question": q111.turns[0], "answer": answer[0], "ref_answer_1": ref[0]})
    assert got[111, 2].user == _fill(mt.prompts["single-math-v1-multi-turn"].prompt_template,
                                     {"question_1": q111.turns[0], "answer_1": answer[0], "question_2": q111.turns[1],
                                      "answer_2": answer[1], "ref_answer_1": ref[0], "ref_answer_2": ref[1]})
    assert ref[0] in got[111, 1].user and ref[1] in got[111, 2].user
    assert ref[0] not in got[81, 1].user
    assert answer[0] in got[81, 1].user  # the answer's braces are text, not placeholders
    assert got[81, 1].system == "You are a helpful assistant."


def test_a_reference_category_without_reference_is_a_data_error(mt: SimpleNamespace) -> None:
    references = {k: v for k, v in mt.references.items() if k != 111}
    q111 = [q for q in mt.questions if q.question_id == 111]
    with pytest.raises(DataError, match="question 111"):
        answer_requests("m", {111: ["a", "b"]}, q111, mt.prompts, references, _identity)


def test_a_turn_without_answer_is_counted_missing(mt_data: Path, tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    write_answers(path, [answer_row(81, "m", ["only one turn"], tstamp=1.0)])
    gen = Gen(lambda r, retry: "[[5]]")
    summary = judge_answers(tmp_path / "out", [("m", path)], cfg(), mt_data, quiet(), gen)
    assert summary.judged == 1 and summary.missing == 159
    assert any("159 of 160 turns have no answer" in n for n in summary.notes)


# --- the judgment file -----------------------------------------------------------------------------

def test_judgment_file_reads_as_fastchat_reads_it(mt_data: Path, tmp_path: Path) -> None:
    path = answers_file(tmp_path / "a.jsonl", "ignored-in-file", [81, 101, 111])
    rates = {81: "Rating: [[8]]", 101: "Rating: [[6.5]]", 111: "no verdict"}
    gen = Gen(lambda r, retry: rates.get(r.question_id, "[[1]]"))
    out = tmp_path / "out"
    judge = cfg()
    summary = judge_answers(out, [("trial-a", path)], judge, mt_data, quiet(), gen)
    assert (summary.judged, summary.unrated) == (6, 2)
    file = judgment_path(out, judge_slug(judge))
    lines = [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == 6
    for line in lines:
        assert set(line) == set(FASTCHAT_KEYS) | set(EXTRA_KEYS)
        assert type(line["question_id"]) is int and line["turn"] in (1, 2)
        assert line["model"] == "trial-a"
        assert isinstance(line["score"], (int, float)) and not isinstance(line["score"], bool)
        assert line["judge"] == ["smollm2-135m", line["judge_info"]["prompt"]]
        assert line["judge_info"] == judge_identity(judge, line["judge"][1])
        assert isinstance(line["user_prompt"], str) and isinstance(line["judgment"], str)
        assert isinstance(line["tstamp"], float) and isinstance(line["cache_key"], str)
    scores = {(line["question_id"], line["turn"]): (line["score"], line["attempts"]) for line in lines}
    assert scores == {(81, 1): (8.0, 1), (81, 2): (8.0, 1), (101, 1): (6.5, 1), (101, 2): (6.5, 1),
                      (111, 1): (-1, 2), (111, 2): (-1, 2)}
    categories = {line["question_id"]: line["category"] for line in lines}
    assert categories == {81: "writing", 101: "reasoning", 111: "math"}

    # FastChat's show_result.py, single mode
    df_all = pd.read_json(file, lines=True)
    df = df_all[["model", "score", "turn"]]
    df = df[df["score"] != -1]
    first = df[df["turn"] == 1].groupby(["model", "turn"]).mean()
    assert first.loc[("trial-a", 1), "score"] == pytest.approx(7.25)
    assert df[["model", "score"]].groupby(["model"]).mean().loc["trial-a", "score"] == pytest.approx(7.25)
    assert all(isinstance(j, list) and len(j) == 2 for j in df_all["judge"])
    [row] = mt_bench_scores(load_judgments(out))
    assert (row["turn_1"], row["turn_2"], row["score"], row["rated"], row["unrated"]) == (7.25, 7.25, 7.25, 4, 2)

    # the answers, in FastChat's model_answer layout, named by the model id
    copied = read_answers(answer_path(out, "trial-a"))
    assert sorted(copied) == [81, 101, 111]
    assert all(row["model_id"] == "trial-a" for row in copied.values())
    assert copied[81]["choices"][0]["turns"] == ["first answer to 81", "second answer to 81"]


def test_second_run_judges_nothing_and_a_changed_answer_only_itself(mt_data: Path, tmp_path: Path) -> None:
    out, path = tmp_path / "out", answers_file(tmp_path / "a.jsonl", "m", [81, 82, 111])
    judge = cfg()
    first = Gen(lambda r, retry: "[[7]]")
    s1 = judge_answers(out, [("m", path)], judge, mt_data, quiet(), first)
    assert (s1.judged, s1.cached, s1.check_judged) == (6, 0, 6)
    file = judgment_path(out, judge_slug(judge))
    before = file.read_bytes()

    def never(requests: Sequence[JudgeRequest], retry: bool) -> list[str]:
        raise AssertionError(f"nothing is new, yet {len(requests)} judgment(s) were asked for")

    s2 = judge_answers(out, [("m", path)], judge, mt_data, quiet(), never)
    assert (s2.judged, s2.cached, s2.check_judged, s2.check_cached) == (0, 6, 0, 6)
    assert file.read_bytes() == before

    write_answers(path, [answer_row(q, "m", [f"first answer to {q}", f"a new second answer to {q}"
                                             if q != 111 else "second answer to 111"], 1.0) for q in (81, 82, 111)])
    third = Gen(lambda r, retry: "[[4]]")
    s3 = judge_answers(out, [("m", path)], judge, mt_data, quiet(), third)
    assert sorted((r.question_id, r.turn) for reqs, _ in third.calls for r in reqs) == [(81, 2), (82, 2)]
    assert (s3.judged, s3.cached, s3.superseded) == (2, 4, 2)
    lines = load_judgments(out)
    assert sorted((r["question_id"], r["turn"]) for r in lines) == [(81, 1), (81, 2), (82, 1), (82, 2),
                                                                   (111, 1), (111, 2)]
    assert {(r["question_id"], r["turn"]): r["score"] for r in lines}[81, 2] == 4.0

    other = cfg(model="another-judge")  # another judge: its own file, everything judged again
    fourth = Gen(lambda r, retry: "[[2]]")
    judge_answers(out, [("m", path)], other, mt_data, quiet(), fourth)
    assert fourth.judged == 12 and judgment_path(out, judge_slug(other)).is_file()
    assert {judge_slug(judge), judge_slug(other)} == set(load_checks(out))


def test_identical_answers_of_two_models_are_judged_once(mt_data: Path, tmp_path: Path) -> None:
    a = answers_file(tmp_path / "a.jsonl", "a", [81, 82])
    b = answers_file(tmp_path / "b.jsonl", "b", [81, 82])
    gen = Gen(lambda r, retry: "[[6]]")
    summary = judge_answers(tmp_path / "out", [("a", a), ("b", b)], cfg(), mt_data, quiet(), gen)
    assert summary.judged == 4 and summary.cached == 4
    lines = load_judgments(tmp_path / "out")
    assert sorted((r["model"], r["question_id"], r["turn"]) for r in lines) == [
        (m, q, t) for m in ("a", "b") for q in (81, 82) for t in (1, 2)]


def test_unparsable_judgment_is_retried_once_then_unrated(mt_data: Path, tmp_path: Path) -> None:
    path = answers_file(tmp_path / "a.jsonl", "m", [81, 82, 83])

    def rule(r: JudgeRequest, retry: bool) -> str:
        if r.question_id == 81:
            return "fine: [[9]]"
        if r.question_id == 82:
            return "second thoughts: [[3]]" if retry else "I cannot decide"
        return "still no rating" if retry else "no rating"

    gen = Gen(rule)
    out = tmp_path / "out"
    summary = judge_answers(out, [("m", path)], cfg(sanity_questions=1), mt_data, quiet(), gen)
    answer_calls = [(reqs, retry) for reqs, retry in gen.calls if reqs[0].model == "m"]
    retried = [r for reqs, retry in answer_calls if retry for r in reqs]
    assert sorted((r.question_id, r.turn) for r in retried) == [(82, 1), (82, 2), (83, 1), (83, 2)]
    lines = {(r["question_id"], r["turn"]): r for r in load_judgments(out)}
    assert [(lines[81, t]["score"], lines[81, t]["attempts"]) for t in (1, 2)] == [(9.0, 1)] * 2
    assert [(lines[82, t]["score"], lines[82, t]["attempts"]) for t in (1, 2)] == [(3.0, 2)] * 2
    assert [(lines[83, t]["score"], lines[83, t]["attempts"]) for t in (1, 2)] == [(-1, 2)] * 2
    assert lines[82, 1]["judgment"] == "second thoughts: [[3]]"
    assert summary.unrated == 2
    [row] = mt_bench_scores(load_judgments(out))
    assert row["score"] == pytest.approx(6.0) and row["unrated"] == 2  # (9+9+3+3)/4: -1 in no mean


def test_a_judging_that_dies_keeps_every_finished_chunk(mt_data: Path, tmp_path: Path) -> None:
    out, path = tmp_path / "out", answers_file(tmp_path / "a.jsonl", "m", [81, 82, 83, 84, 85, 86])
    judge = cfg(sanity_questions=1)
    # 3 check ratings in one chunk (call 1), then the 12 answer turns 4 at a time: calls 2, 3 and it dies at 4
    dying = Gen(lambda r, retry: "[[5]]", chunk_size=4, fail_on_call=4)
    with pytest.raises(RuntimeError, match="the judge died"):
        judge_answers(out, [("m", path)], judge, mt_data, quiet(), dying)
    assert len(load_judgments(out)) == 8
    assert not list(judgment_path(out, judge_slug(judge)).parent.glob(".*tmp"))
    rest = Gen(lambda r, retry: "[[5]]", chunk_size=4)
    summary = judge_answers(out, [("m", path)], judge, mt_data, quiet(), rest)
    assert (summary.judged, summary.cached, rest.judged) == (4, 8, 4)
    assert len(load_judgments(out)) == 12


def test_a_model_judgment_file_changed_by_another_program_is_named(mt_data: Path, tmp_path: Path) -> None:
    out, path = tmp_path / "out", answers_file(tmp_path / "a.jsonl", "m", [81])
    judge = cfg()
    judge_answers(out, [("m", path)], judge, mt_data, quiet(), Gen(lambda r, retry: "[[5]]"))
    file = judgment_path(out, judge_slug(judge))
    file.write_text(file.read_text(encoding="utf-8") + "{not json\n", encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(str(file)) + " line 3"):
        judge_answers(out, [("m", path)], judge, mt_data, quiet(), Gen(lambda r, retry: "[[5]]"))


# --- the sanity check ----------------------------------------------------------------------------

@pytest.mark.parametrize("ratings, verdict", [
    ({"reference": [8, 9], "empty": [1, 1], "off_topic": [2, 3]}, "can tell"),
    ({"reference": [6, 6], "empty": [5, 5], "off_topic": [4, 5]}, "can tell"),  # a gap of exactly 1 is enough
    ({"reference": [6, 6], "empty": [5.5, 5], "off_topic": [1, 1]}, "cannot tell"),  # empty only 0.75 below
    ({"reference": [8, 8], "empty": [1, 1], "off_topic": [7.5, 7.5]}, "cannot tell"),
    ({"reference": [9, None, None], "empty": [1, 1, 1], "off_topic": [1, 1, 1]}, "cannot tell"),  # 1 of 3 rated
    ({"reference": [9, 9, None, None], "empty": [1] * 4, "off_topic": [1] * 4}, "can tell"),  # half rated
    ({"reference": [9, 9], "empty": [None, None], "off_topic": [1, 1]}, "cannot tell"),  # empties unrated
    ({"reference": [None, None], "empty": [None, None], "off_topic": [None, None]}, "cannot tell"),
])
def test_sanity_verdict_rule(ratings: dict[str, list[float | None]], verdict: str) -> None:
    result = sanity.verdict(ratings)
    assert result["verdict"] == verdict and result["can_tell"] == (verdict == "can tell")
    assert result["unrated"] == {k: sum(v is None for v in ratings[k]) for k in sanity.KINDS}


def test_sanity_check_rates_references_against_empty_and_off_topic(mt: SimpleNamespace, mt_data: Path,
                                                                   tmp_path: Path) -> None:
    refs = list(mt.references)  # file order

    def discerning(r: JudgeRequest, retry: bool) -> str:
        if "[The Start of Assistant's Answer]\n\n[The End" in r.user:
            return "Nothing was said. Rating: [[1]]"
        if mt.references[r.question_id][0] in r.user:
            return "Correct. Rating: [[9]]"
        return "Off topic. Rating: [[2]]"

    out = tmp_path / "good"
    judge = cfg(sanity_questions=3)
    gen = Gen(discerning)
    summary = judge_answers(out, [], judge, mt_data, quiet(), gen)
    assert summary.verdict == "can tell" and summary.check_judged == 9
    assert {r.prompt_name for reqs, _ in gen.calls for r in reqs} == {"single-v1"}
    check = json.loads(check_path(out, judge_slug(judge)).read_text(encoding="utf-8"))
    assert check["questions"] == refs[:3] and check["complete"] is True
    assert check["means"] == {"reference": 9.0, "empty": 1.0, "off_topic": 2.0}
    assert check["unrated"] == {"reference": 0, "empty": 0, "off_topic": 0}
    assert check["judge"] == judge_identity(judge, "single-v1") and check["rule"] == sanity.RULE
    off = [i for i in check["items"] if i["kind"] == "off_topic"]
    assert [(i["question_id"], i["answer_from"]) for i in off] == [(refs[0], refs[1]), (refs[1], refs[2]),
                                                                    (refs[2], refs[3])]
    assert all(mt.references[i["answer_from"]][0] in i["user_prompt"] for i in off)
    assert load_checks(out)[judge_slug(judge)]["verdict"] == "can tell"

    lines: list[str] = []
    flat = judge_answers(tmp_path / "flat", [], judge, mt_data, quiet(lines), Gen(lambda r, retry: "[[7]]"))
    assert flat.verdict == "cannot tell"
    assert any("cannot tell" in line and "should not be trusted" in line for line in lines)


def test_sanity_check_is_cached(mt_data: Path, tmp_path: Path) -> None:
    judge = cfg(sanity_questions=2)
    judge_answers(tmp_path, [], judge, mt_data, quiet(), Gen(lambda r, retry: "[[7]]"))
    again = Gen(lambda r, retry: "[[7]]")
    summary = judge_answers(tmp_path, [], judge, mt_data, quiet(), again)
    assert again.calls == [] and summary.check_cached == 6
    more = Gen(lambda r, retry: "[[7]]")
    judge_answers(tmp_path, [], cfg(sanity_questions=3), mt_data, quiet(), more)
    assert more.judged == 3  # only the third question's ratings are new


# --- identity and the API key --------------------------------------------------------------------

def test_identity_and_slug() -> None:
    local = JudgeConfig(model="/models/judges/qwen-7b/")
    assert judge_identity(local, "single-v1") == {"backend": "local", "model": "/models/judges/qwen-7b/",
                                                  "host": None, "prompt": "single-v1"}
    remote = JudgeConfig(backend="openai", model="gpt-4o", base_url="http://user:secret@10.0.0.5:8000/v1")
    assert judge_identity(remote)["host"] == "10.0.0.5:8000"
    assert endpoint_host(None) == "api.openai.com:443" and endpoint_host("http://[::1]/v1") == "[::1]:80"
    slugs = [judge_slug(c) for c in (local, remote, JudgeConfig(backend="openai", model="gpt-4o"),
                                     JudgeConfig(model="/other/qwen-7b"))]
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", s) for s in slugs)
    assert len(set(slugs)) == 4
    assert slugs[0].startswith("local_qwen-7b_") and slugs[1].startswith("openai_gpt-4o_10.0.0.5-8000_")
    assert "secret" not in json.dumps(judge_identity(remote)) + slugs[1]
    assert is_loopback("127.0.0.1:8000") and is_loopback("localhost:1") and is_loopback("[::1]:80")
    assert not is_loopback("10.0.0.5:8000")


def test_api_key_comes_from_the_environment_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from pefteval.judging.endpoint import PLACEHOLDER_KEY, EndpointJudge, api_key

    monkeypatch.delenv("PEFTEVAL_JUDGE_TEST_KEY", raising=False)
    remote = JudgeConfig(backend="openai", model="gpt-4o", base_url="https://judge.example.com/v1",
                         api_key_env="PEFTEVAL_JUDGE_TEST_KEY")
    with pytest.raises(UserError, match="judge.example.com:443.*PEFTEVAL_JUDGE_TEST_KEY"):
        api_key(remote, "judge.example.com:443")
    assert api_key(remote, "127.0.0.1:8000") == PLACEHOLDER_KEY
    monkeypatch.setenv("PEFTEVAL_JUDGE_TEST_KEY", "sk-test-Zq8vNw3")
    assert api_key(remote, "judge.example.com:443") == "sk-test-Zq8vNw3"
    endpoint = EndpointJudge(remote)  # makes a client; sends nothing
    try:
        said = endpoint._said(RuntimeError("invalid key sk-test-Zq8vNw3 for this project"))
    finally:
        endpoint.close()
    assert "sk-test-Zq8vNw3" not in said and "***" in said


def test_a_missing_key_stops_before_judging(mt_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PEFTEVAL_JUDGE_TEST_KEY", raising=False)
    judge = cfg(backend="openai", model="gpt-4o", base_url="https://judge.example.com/v1",
                api_key_env="PEFTEVAL_JUDGE_TEST_KEY")
    path = answers_file(tmp_path / "a.jsonl", "m", [81])
    with pytest.raises(UserError, match="PEFTEVAL_JUDGE_TEST_KEY is not set"):
        judge_answers(tmp_path / "out", [("m", path)], judge, mt_data, quiet())


def test_the_api_key_is_written_nowhere(mt_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = "sk-pefteval-never-written-4b1d"
    monkeypatch.setenv("PEFTEVAL_JUDGE_TEST_KEY", key)
    judge = cfg(backend="openai", model="gpt-4o", base_url="http://127.0.0.1:9/v1",
                api_key_env="PEFTEVAL_JUDGE_TEST_KEY")
    lines: list[str] = []
    path = answers_file(tmp_path / "a.jsonl", "m", [81, 111])
    summary = judge_answers(tmp_path / "out", [("m", path)], judge, mt_data, quiet(lines),
                            Gen(lambda r, retry: "[[5]]"))
    assert summary.judged == 4
    written = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert len(written) == 3
    for p in written:
        assert key.encode() not in p.read_bytes(), p
    assert key not in "\n".join(lines) + repr(summary) + json.dumps(summary.to_dict())


# --- collecting the trials' answers ----------------------------------------------------------------

def _record(key: str, run_dir: str, kind: str, **extra: Any) -> dict[str, Any]:
    return {"key": key, "status": "complete", "experiment": "e", "run_dir": run_dir, "task_kind": kind,
            "config": {"task": "alpaca", "method_label": "lora", "seed": 0, "model": "smollm2-135m"}, **extra}


def test_judge_run_collects_the_instruct_trials_of_a_store(mt_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    for name in ("alpaca__lora__seed0__aaaa", "alpaca__fft__seed0__bbbb"):
        answers_file(out / "runs" / name / "mt_bench_answers.jsonl", name, [81, 82], turn_1=name + " on {qid}")
    with ResultStore(out / "results.sqlite") as store:
        store.put(_record("aaaa", "runs/alpaca__lora__seed0__aaaa", "instruct",
                          mt_bench={"model_id": "alpaca__lora__seed0__aaaa", "answers": "mt_bench_answers.jsonl"}))
        store.put(_record("bbbb", "runs/alpaca__fft__seed0__bbbb", "instruct"))  # defaults: the run directory
        store.put(_record("cccc", "runs/sst2__lora__seed0__cccc", "classification"))
    assert [m for m, _ in collect_answers(out)] == ["alpaca__lora__seed0__aaaa", "alpaca__fft__seed0__bbbb"]
    summary = judge_run(out, cfg(), mt_data, quiet(), Gen(lambda r, retry: "[[5]]"))
    assert summary.judged == 8 and sorted(summary.models) == sorted(m for m, _ in collect_answers(out))
    assert answer_path(out, "alpaca__fft__seed0__bbbb").is_file()

    (out / "runs" / "alpaca__fft__seed0__bbbb" / "mt_bench_answers.jsonl").unlink()
    with pytest.raises(DataError, match="bbbb.*answers.*missing"):
        judge_run(out, cfg(), mt_data, quiet(), Gen(lambda r, retry: "[[5]]"))

    empty = tmp_path / "empty"
    with ResultStore(empty / "results.sqlite") as store:
        store.put(_record("cccc", "runs/sst2__lora__seed0__cccc", "classification"))
    with pytest.raises(UserError, match="no complete instruction-tuning trial"):
        judge_run(empty, cfg(), mt_data, quiet(), Gen(lambda r, retry: "[[5]]"))


def test_answers_to_unknown_questions_are_refused(mt_data: Path, tmp_path: Path) -> None:
    path = answers_file(tmp_path / "a.jsonl", "m", [81, 999])
    with pytest.raises(DataError, match="question_id 999"):
        judge_answers(tmp_path / "out", [("m", path)], cfg(), mt_data, quiet(), Gen(lambda r, retry: "[[5]]"))
    with pytest.raises(UserError, match="cannot name a file"):
        judge_answers(tmp_path / "out", [("../m", path)], cfg(), mt_data, quiet(), Gen(lambda r, retry: "[[5]]"))


# --- the local backend -----------------------------------------------------------------------------

def test_render_without_chat_template() -> None:
    from pefteval.judging.local import render

    assert render(SimpleNamespace(chat_template=None), "SYSTEM", "USER") == "SYSTEM\n\nUSER\n"


def save_smollm_tokenizer(out: Path) -> Path:
    """The packaged SmolLM2 tokenizer (chat template included), loaded through pefteval.models and
    saved as a tokenizer directory; the test is skipped without the package."""
    from pefteval.models import load_tokenizer, resolve_model

    try:
        source = resolve_model("smollm2-135m")
    except UserError as err:
        pytest.skip(f"packaged SmolLM2 not installed: {err}")
    load_tokenizer(source).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def smollm_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_smollm_tokenizer(tmp_path_factory.mktemp("smollm2_tokenizer"))


def train_tiny_lm(tokenizer_dir: Path, out: Path, example: Callable[[random.Random, Any], tuple[str, list[int]]],
                  max_steps: int = 300, max_positions: int = 4096, layers: int = 1, seed: int = 0) -> Path:
    """A tiny LlamaForCausalLM (hidden 64) with the SmolLM2 tokenizer, trained (Adam, a few seconds)
    on ``example(rng, tokenizer) -> (prompt text, target token ids)``, loss on the target only, until
    the loss stays below 0.005; saved with safetensors, its generation config ending at <|im_end|>."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    eot = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=max_positions,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id, eos_token_id=eot,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = LlamaForCausalLM(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    low = 0
    for _ in range(max_steps):
        loss = torch.zeros(())
        for _ in range(4):
            prompt, target = example(rng, tokenizer)
            ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            hidden = model.model(input_ids=torch.tensor([ids + target])).last_hidden_state[0, len(ids) - 1:-1]
            loss = loss + torch.nn.functional.cross_entropy(model.lm_head(hidden), torch.tensor(target)) / 4
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        low = low + 1 if loss.item() < 0.005 else 0
        if low >= 5:
            break
    model.generation_config = GenerationConfig(eos_token_id=eot, pad_token_id=tokenizer.pad_token_id,
                                               bos_token_id=tokenizer.bos_token_id)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    assert (out / "model.safetensors").is_file()
    return out


WORDS = "the a judge answer question rating model good bad python math write story explain list number".split()
TALK = "Rating: [[7]] and then I keep talking for a long while about it"
MUTE = "I keep talking for a long while and give no verdict at all"


def chat(tokenizer: Any, system: str, user: str) -> str:
    return tokenizer.apply_chat_template([{"role": "system", "content": system}, {"role": "user", "content": user}],
                                         tokenize=False, add_generation_prompt=True)


@pytest.fixture(scope="module")
def talking_judge_dir(smollm_tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny judge that, after a user message ending in "talk", rates [[7]] and goes on talking (no
    end of turn), and after one ending in "mute" talks without ever rating."""

    def example(rng: random.Random, tokenizer: Any) -> tuple[str, list[int]]:
        tail = rng.choice(["talk", "mute"])
        user = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 30))) + " " + tail
        target = TALK if tail == "talk" else MUTE
        return chat(tokenizer, "judge", user), tokenizer(target, add_special_tokens=False)["input_ids"]

    return train_tiny_lm(smollm_tokenizer_dir, tmp_path_factory.mktemp("talking_judge"), example,
                         max_positions=256)


def _request(system: str, user: str, qid: int = 81) -> JudgeRequest:
    return JudgeRequest("m", qid, "writing", 1, "single-v1", system, user, f"key-{qid}")


def test_local_judge_stops_each_row_at_its_rating(talking_judge_dir: Path) -> None:
    from pefteval.judging.local import LocalJudge

    judge = LocalJudge(JudgeConfig(model=str(talking_judge_dir), batch_size=3, max_new_tokens=24, precision="fp32",
                                   device="cpu"), quiet())
    texts = judge([_request("judge", "a judge answer talk"), _request("judge", "the story mute"),
                   _request("judge", " ".join(["word"] * 300))], retry=False)
    assert texts[0] == "Rating: [[7]]"  # stopped at its rating; unstopped it goes on "and then I keep talking"
    assert texts[1].startswith("I keep talking for a long while") and parse_rating(texts[1]) is None
    count = [len(judge.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts[:2]]
    assert count[1] > count[0]  # the mute row ran on after the talking row had stopped
    assert texts[2].startswith("$ERROR$") and "256-token context" in texts[2]
    sampled = judge([_request("judge", "a judge answer talk")] * 2, retry=True)
    assert sampled == judge([_request("judge", "a judge answer talk")] * 2, retry=True)  # a fixed seed


def test_rating_stop_is_per_row(smollm_tokenizer_dir: Path) -> None:
    import torch
    from transformers import AutoTokenizer

    from pefteval.judging.local import RatingStop, bracket_token_ids

    tokenizer = AutoTokenizer.from_pretrained(smollm_tokenizer_dir)
    prompt = tokenizer("[[1]] in the prompt does not count", add_special_tokens=False)["input_ids"]
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in ("So: Rating: [[8]] and more words",
                                                                          "So: Rating: 8/10 and [x] more words")]
    width = min(len(r) for r in rows)
    stop = RatingStop(tokenizer, len(prompt), 2, bracket_token_ids(tokenizer))
    seen = []
    for step in range(1, width + 1):
        ids = torch.tensor([prompt + r[:step] for r in rows])
        seen.append(stop(ids, torch.zeros(2, 1)).tolist())
    assert seen[0] == [False, False] and seen[-1] == [True, False]
    first = next(i for i, s in enumerate(seen) if s[0]) + 1
    assert tokenizer.decode(rows[0][:first]).endswith("]]")


@pytest.mark.integration
def test_local_judge_with_packaged_smollm2(mt_data: Path, tmp_path: Path) -> None:
    """SmolLM2-135M judging for real: one answer turn and the 3 sanity-check ratings, 16 new tokens
    each (the 135M model rarely writes a [[rating]]: most are retried by sampling, then unrated)."""
    try:
        from pefteval.models import resolve_model

        resolve_model("smollm2-135m")
    except UserError as err:
        pytest.skip(f"packaged SmolLM2 not installed: {err}")
    path = tmp_path / "a.jsonl"
    write_answers(path, [answer_row(81, "m", ["Hawaii: beaches, volcanoes and poke. Aloha!"], tstamp=1.0)])
    judge = JudgeConfig(sanity_questions=1, max_new_tokens=16, batch_size=4, device="cpu", precision="fp32")
    lines: list[str] = []
    summary = judge_answers(tmp_path / "out", [("m", path)], judge, mt_data, quiet(lines))
    assert (summary.judged, summary.check_judged) == (1, 3)
    assert summary.judgments_per_s is not None and summary.judgments_per_s > 0
    [line] = load_judgments(tmp_path / "out")
    assert line["judge"] == ["smollm2-135m", "single-v1"] and line["judgment"].strip()
    assert (line["score"] == -1) == (parse_rating(line["judgment"]) is None)
    assert line["attempts"] == (1 if line["score"] != -1 else 2)
    check = load_checks(tmp_path / "out")[judge_slug(judge)]
    assert check["complete"] and len(check["items"]) == 3 and check["verdict"] in ("can tell", "cannot tell")
    assert os.path.basename(summary.judgment_file) == f"{judge_slug(judge)}_single.jsonl"
