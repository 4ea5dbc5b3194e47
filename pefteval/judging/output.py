"""OUT/mt_bench/, laid out as FastChat's ``fastchat/llm_judge/data/mt_bench`` so that its scripts
(``show_result.py``, ``gen_judgment.py``) read it:

- ``model_answer/<model_id>.jsonl``: each judged trial's answers (FastChat's model_answer format);
- ``model_judgment/<judge_slug>_single.jsonl``: the judge's single-answer grades, one line per
  (model, question, turn) with FastChat's keys (``question_id``, ``model``, ``judge`` = [judge
  model, prompt name], ``user_prompt``, ``judgment``, ``score`` (-1: unrated), ``turn``, ``tstamp``)
  and pefteval's (``judge_info``, ``category``, ``attempts``, ``cache_key``);
- ``judge_check/<judge_slug>.json``: the judge's sanity check (pefteval's own).

Every file is written whole through a temporary name (``files.atomic_write_text``): the judgment
file is rewritten after every chunk of judgments, so a killed run keeps every chunk it finished.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pefteval.errors import DataError
from pefteval.files import atomic_write_json, atomic_write_text, make_dir
from pefteval.judging.grading import Graded
from pefteval.tasks.mt_bench import read_jsonl

MT_BENCH = "mt_bench"
SINGLE_SUFFIX = "_single.jsonl"
# FastChat's keys of a single-answer judgment line, and pefteval's additions
FASTCHAT_KEYS = ("question_id", "model", "judge", "user_prompt", "judgment", "score", "turn", "tstamp")
EXTRA_KEYS = ("judge_info", "category", "attempts", "cache_key")


def mt_bench_dir(out: Path) -> Path:
    return Path(out) / MT_BENCH


def answer_path(out: Path, model_id: str) -> Path:
    return mt_bench_dir(out) / "model_answer" / f"{model_id}.jsonl"


def judgment_path(out: Path, slug: str) -> Path:
    return mt_bench_dir(out) / "model_judgment" / f"{slug}{SINGLE_SUFFIX}"


def check_path(out: Path, slug: str) -> Path:
    return mt_bench_dir(out) / "judge_check" / f"{slug}.json"


def judgment_line(graded: Graded, identity: dict[str, Any], tstamp: float | None = None) -> dict[str, Any]:
    """One line of FastChat's model_judgment file (``play_a_match_single``'s ``result``) plus
    pefteval's keys; ``identity`` is the judge's, with this judgment's prompt name."""
    r = graded.request
    return {"question_id": r.question_id, "model": r.model, "judge": [identity["model"], r.prompt_name],
            "user_prompt": r.user, "judgment": graded.judgment, "score": graded.score, "turn": r.turn,
            "tstamp": time.time() if tstamp is None else tstamp,
            "judge_info": dict(identity), "category": r.category, "attempts": graded.attempts,
            "cache_key": r.cache_key}


def _rewritten_by_other(path: Path) -> str:
    return (f"pefteval writes {path} whole, so another program changed it: move it away and judge again "
            "(the judgments are then made anew)")


def read_judgment_lines(path: Path) -> list[dict[str, Any]]:
    """The lines of a model_judgment file ([] when there is none)."""
    if not path.is_file():
        return []
    rows = []
    for number, row in read_jsonl(path):
        if not isinstance(row.get("model"), str) or not isinstance(row.get("question_id"), int):
            raise DataError(f"{path} line {number}: not a model_judgment line (it needs 'model' and 'question_id'); "
                            + _rewritten_by_other(path))
        rows.append(row)
    return rows


def _slot(row: dict[str, Any]) -> tuple[str, int, int]:
    return row["model"], row["question_id"], row["turn"]


class JudgmentFile:
    """A judge's model_judgment file during a run. The lines of models not judged now are kept as they
    are; the judged models' lines become exactly their current judgments, one per question and turn,
    so that FastChat's means never count a superseded one. An earlier judgment with a request's cache
    key (the same answer, prompt and judge; of any model) is reused instead of judged again."""

    def __init__(self, path: Path, models: Iterable[str]):
        self.path = path
        judged = set(models)
        rows = read_judgment_lines(path)
        self.kept = [r for r in rows if r["model"] not in judged]
        self._old = [r for r in rows if r["model"] in judged]
        self._by_key = {r["cache_key"]: r for r in rows if isinstance(r.get("cache_key"), str)}
        self._waiting: dict[str, list[Any]] = {}
        self.current: dict[tuple[str, int, int], dict[str, Any]] = {}
        self.superseded = 0
        self.changed = False

    def _fill(self, request: Any, line: dict[str, Any]) -> None:
        if line["model"] != request.model:
            line = {**line, "model": request.model}
        self.current[(request.model, request.question_id, request.turn)] = line

    def plan(self, requests: Sequence[Any]) -> list[Any]:
        """The requests to judge now: one per cache key that has no judgment yet; every other request's
        line is its earlier judgment. Sets ``superseded``: the judged models' earlier lines that are
        no current judgment (their answer or the prompts changed), dropped at the next write."""
        todo = []
        for request in requests:
            line = self._by_key.get(request.cache_key)
            if line is not None:
                self._fill(request, line)
            elif request.cache_key in self._waiting:
                self._waiting[request.cache_key].append(request)
            else:
                self._waiting[request.cache_key] = [request]
                todo.append(request)
        current = {id(line) for line in self.current.values()}
        self.superseded = sum(1 for r in self._old if id(r) not in current)
        self.changed = self.superseded > 0 or len(current & {id(r) for r in self._old}) < len(self.current)
        return todo

    def add(self, lines: Sequence[dict[str, Any]]) -> None:
        """New judgments (judgment_line's), each filling every request that waited on its cache key."""
        for line in lines:
            self._by_key[line["cache_key"]] = line
            waiting = self._waiting.pop(line["cache_key"], [])
            if not waiting:
                self.current[_slot(line)] = line
            for request in waiting:
                self._fill(request, line)
        self.changed = True

    def line_for(self, request: Any) -> dict[str, Any] | None:
        return self.current.get((request.model, request.question_id, request.turn))

    def flush(self) -> None:
        """Rewrite the file (atomically) when anything changed: the kept lines, then the current ones
        by model, question and turn."""
        if not self.changed:
            return
        rows = self.kept + sorted(self.current.values(), key=_slot)
        make_dir(self.path.parent)
        atomic_write_text(self.path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        self.changed = False


def write_check(path: Path, check: dict[str, Any]) -> None:
    make_dir(path.parent)
    atomic_write_json(path, check)


def read_check(path: Path) -> dict[str, Any] | None:
    """A judge_check file, or None when there is none; one that is not a JSON object is a DataError."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as err:
        raise DataError(f"{path}: not a readable judge check ({err}); " + _rewritten_by_other(path)) from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: a judge check is a JSON object; " + _rewritten_by_other(path))
    return data


def load_judgments(out: Path, slug: str | None = None) -> list[dict[str, Any]]:
    """Every judgment under OUT/mt_bench/model_judgment (or only the judge ``slug``'s), each line as
    written plus ``judge_slug`` (the file's judge); [] when nothing was judged."""
    folder = mt_bench_dir(out) / "model_judgment"
    paths = [judgment_path(out, slug)] if slug is not None else sorted(folder.glob(f"*{SINGLE_SUFFIX}"))
    rows = []
    for path in paths:
        name = path.name.removesuffix(SINGLE_SUFFIX)
        rows += [{**row, "judge_slug": name} for row in read_judgment_lines(path)]
    return rows


def load_checks(out: Path) -> dict[str, dict[str, Any]]:
    """judge slug -> its sanity check (the judge_check/<slug>.json files); {} when there is none."""
    folder = mt_bench_dir(out) / "judge_check"
    checks = {}
    for path in sorted(folder.glob("*.json")):
        check = read_check(path)
        if check is not None:
            checks[path.stem] = check
    return checks
