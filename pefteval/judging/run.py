"""Judging MT-Bench answers: the entry points ``judge_answers`` (given answer files) and
``judge_run`` (every instruction-tuning trial of a results directory).

One judging: read FastChat's questions, reference answers and judge prompts; copy each model's
answers to OUT/mt_bench/model_answer; run the judge's sanity check; judge every answer turn not
judged before by this judge (the cache: ``identity.cache_key``), writing each chunk as it is done;
return a ``JudgeSummary``. The judge model is loaded (or the endpoint's client made) only when there
is something new to judge. Judging time and memory go to the summary only, never into a trial's record.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pefteval.config import JudgeConfig
from pefteval.errors import DataError, UserError
from pefteval.files import make_dir
from pefteval.judging import check as sanity
from pefteval.judging.grading import Generator, Graded, grade
from pefteval.judging.identity import judge_identity, judge_slug
from pefteval.judging.output import (
    JudgmentFile,
    answer_path,
    check_path,
    judgment_line,
    judgment_path,
    read_check,
    write_check,
)
from pefteval.judging.prompts import UNRATED, JudgeRequest, answer_requests, check_prompts
from pefteval.store import ResultStore
from pefteval.tasks.mt_bench import (
    read_answers,
    read_judge_prompts,
    read_questions,
    read_reference_answers,
    write_answers,
)

Say = Callable[[str], None]
ANSWERS_FILE = "mt_bench_answers.jsonl"  # a trial's answers, when its record names none
INSTRUCT_KIND = "instruct"
MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
PROGRESS_EVERY_S = 15.0
DEFAULT_CHUNK = 16  # judgments per written chunk for a generator that names no chunk size


@dataclass
class JudgeSummary:
    """What one judging did. ``judged``: answer turns judged now; ``cached``: found judged before;
    ``unrated``: current judgments without a rating (score -1; in no mean); ``missing``: turns of
    questions a model has no answer for; ``seconds``: the whole judging (model load included);
    ``judgments_per_s``: new judgments (sanity check's included) per second of judging them."""

    judge: dict[str, Any]
    slug: str
    models: list[str]
    judged: int = 0
    cached: int = 0
    unrated: int = 0
    missing: int = 0
    check_judged: int = 0
    check_cached: int = 0
    superseded: int = 0
    seconds: float = 0.0
    generate_seconds: float = 0.0
    judgments_per_s: float | None = None
    verdict: str = ""
    judgment_file: str = ""
    check_file: str = ""
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def collect_answers(out: Path) -> list[tuple[str, Path]]:
    """(model id, answers file) of every complete instruction-tuning trial in OUT's results store, in
    store order: its record's ``mt_bench`` entry names them (the model id defaults to the run
    directory's name, the file to mt_bench_answers.jsonl in it)."""
    out = Path(out)
    pairs = []
    with ResultStore(out / "results.sqlite", read_only=True) as store:
        for record in store.records():
            if record.get("task_kind") != INSTRUCT_KIND:
                continue
            run_dir = out / str(record.get("run_dir", ""))
            info = record.get("mt_bench") if isinstance(record.get("mt_bench"), dict) else {}
            model_id = str(info.get("model_id") or run_dir.name)
            path = run_dir / str(info.get("answers") or ANSWERS_FILE)
            if not path.is_file():
                raise DataError(f"trial {record.get('key')} ({record.get('run_dir')}) is complete but its MT-Bench "
                                f"answers {path} are missing: run the experiment again (pefteval run redoes a trial "
                                "whose files are gone), or move the damaged run directory away")
            pairs.append((model_id, path))
    return pairs


def judge_run(out: Path, judge: JudgeConfig, data_dir: Path | None, say: Say = print,
              generator: Generator | None = None) -> JudgeSummary:
    """Judge the MT-Bench answers of every complete instruction-tuning trial in ``out`` (see
    ``judge_answers``); a UserError when there is none."""
    pairs = collect_answers(Path(out))
    if not pairs:
        raise UserError(f"{out} has no complete instruction-tuning trial with MT-Bench answers to judge: run an "
                        "experiment with an instruction-tuning task (e.g. alpaca) into it first")
    return judge_answers(Path(out), pairs, judge, data_dir, say, generator)


def _read_model_answers(pairs: Sequence[tuple[str, Path]], known: set[int]) -> dict[str, dict[int, dict[str, Any]]]:
    models: dict[str, dict[int, dict[str, Any]]] = {}
    for model_id, path in pairs:
        if not MODEL_ID.fullmatch(model_id):
            raise UserError(f"model id {model_id!r} (answers {path}) cannot name a file: use letters, digits and "
                            "._+- only")
        if model_id in models:
            raise UserError(f"model id {model_id!r} is given twice: each answer file needs its own model id")
        rows = read_answers(Path(path))
        unknown = sorted(set(rows) - known)
        if unknown:
            raise DataError(f"{path}: question_id {unknown[0]} is no MT-Bench question (question.jsonl has ids "
                            f"{min(known)}..{max(known)}): these are not answers to MT-Bench")
        models[model_id] = rows
    return models


def _load_backend(judge: JudgeConfig, say: Say) -> Any:
    if judge.backend == "local":
        from pefteval.judging.local import LocalJudge  # torch, only when a local judge runs

        say(f"loading the judge model {judge.model} ...")
        return LocalJudge(judge, say)
    from pefteval.judging.endpoint import EndpointJudge

    return EndpointJudge(judge)


class _Lazy:
    """The judgment generator, made on first use (the judge model is not loaded for a run that has
    nothing new to judge)."""

    def __init__(self, judge: JudgeConfig, say: Say, given: Generator | None):
        self.judge, self.say, self.given = judge, say, given
        self.backend: Any = given

    def get(self) -> Any:
        if self.backend is None:
            self.backend = _load_backend(self.judge, self.say)
        return self.backend

    @property
    def chunk_size(self) -> int:
        return int(getattr(self.get(), "chunk_size", DEFAULT_CHUNK))

    def close(self) -> None:
        if self.backend is not None and self.backend is not self.given and hasattr(self.backend, "close"):
            self.backend.close()


def _judge_all(requests: Sequence[JudgeRequest], lazy: _Lazy, on_chunk: Callable[[list[Graded]], None],
               say: Say, label: str) -> float:
    """Judge ``requests`` (shortest prompts first: less padding in a batch), handing each finished
    chunk to ``on_chunk``; the seconds spent judging."""
    if not requests:
        return 0.0
    generate = lazy.get()
    start = last = time.monotonic()
    done = 0
    ordered = sorted(requests, key=lambda r: len(r.system) + len(r.user))
    for chunk in grade(ordered, generate, lazy.chunk_size):
        on_chunk(chunk)
        done += len(chunk)
        now = time.monotonic()
        if now - last >= PROGRESS_EVERY_S and done < len(requests):
            say(f"{label}: {done}/{len(requests)} judged ({done / (now - start):.2f}/s)")
            last = now
    return time.monotonic() - start


def judge_answers(out: Path, answers: Sequence[tuple[str, Path]], judge: JudgeConfig, data_dir: Path | None,
                  say: Say = print, generator: Generator | None = None) -> JudgeSummary:
    """Judge MT-Bench answers with FastChat's single-answer grading and write OUT/mt_bench/ (see
    ``output``). ``answers``: (model id, FastChat model_answer file) pairs; ``data_dir``: the folder
    holding mt_bench/ (None: the hub). ``generator`` replaces the configured backend (tests; a judge
    of one's own): ``generator(requests, retry) -> texts``. Judgments made before by the same judge
    for the same answers are reused, so a second run judges nothing."""
    began = time.monotonic()
    out = Path(out)
    slug = judge_slug(judge)
    summary = JudgeSummary(judge=judge_identity(judge), slug=slug, models=[m for m, _ in answers],
                           judgment_file=str(judgment_path(out, slug)), check_file=str(check_path(out, slug)))

    def identity_of(prompt: str) -> dict[str, Any]:
        return judge_identity(judge, prompt)

    def note(text: str) -> None:
        summary.notes.append(text)
        say(text)

    questions = read_questions(data_dir)
    references = read_reference_answers(data_dir)
    prompts = read_judge_prompts(data_dir)
    check_prompts(prompts)
    models = _read_model_answers(answers, {q.question_id for q in questions})

    requests: list[JudgeRequest] = []
    for model_id, rows in models.items():
        make_dir(answer_path(out, model_id).parent)
        write_answers(answer_path(out, model_id), [{**row, "model_id": model_id} for row in rows.values()])
        turns = {qid: row["choices"][0]["turns"] for qid, row in rows.items()}
        made, missing = answer_requests(model_id, turns, questions, prompts, references, identity_of)
        requests += made
        summary.missing += len(missing)
        if missing:
            note(f"{model_id}: {len(missing)} of {2 * len(questions)} turns have no answer (e.g. question "
                 f"{missing[0]}); its mean is not comparable with published MT-Bench scores")

    items, check_note = sanity.check_items(questions, references, prompts, judge.sanity_questions,
                                           identity_of(sanity.CHECK_PROMPT))
    if check_note:
        note(check_note)
    lazy = _Lazy(judge, say, generator)
    try:
        summary.generate_seconds += _run_check(out, slug, judge, items, lazy, summary, say, check_note)
        summary.generate_seconds += _run_answers(out, slug, models, requests, lazy, summary, say, identity_of)
    finally:
        lazy.close()
    summary.seconds = time.monotonic() - began
    new = summary.judged + summary.check_judged
    if new and summary.generate_seconds > 0:
        summary.judgments_per_s = new / summary.generate_seconds
    say(f"judged {summary.judged} answer turn(s) of {len(models)} model(s) with {slug} ({summary.cached} cached, "
        f"{summary.unrated} unrated) in {summary.seconds:.1f}s"
        + (f", {summary.judgments_per_s:.3f} judgments/s" if summary.judgments_per_s else ""))
    return summary


def _untimed(check: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if check is None else {k: v for k, v in check.items() if k != "tstamp"}


def _run_check(out: Path, slug: str, judge: JudgeConfig, items: list[sanity.CheckItem], lazy: _Lazy,
               summary: JudgeSummary, say: Say, check_note: str) -> float:
    """The judge's sanity check, each rating not made before made now; writes judge_check/<slug>.json."""
    path = check_path(out, slug)
    identity = judge_identity(judge, sanity.CHECK_PROMPT)
    previous = sanity.cached_items(read_check(path))
    graded: dict[str, Graded | dict[str, Any]] = {}
    todo: dict[str, JudgeRequest] = {}
    for item in items:
        key = item.request.cache_key
        if key in previous:
            graded[key] = previous[key]
        else:
            todo.setdefault(key, item.request)
    summary.check_cached = len(items) - len(todo)

    def write(chunk: list[Graded]) -> None:
        graded.update({g.request.cache_key: g for g in chunk})
        summary.check_judged += len(chunk)
        write_check(path, sanity.check_result(identity, items, graded, time.time(), check_note))

    seconds = _judge_all(list(todo.values()), lazy, write, say, "sanity check")
    result = sanity.check_result(identity, items, graded, time.time(), check_note)
    if not todo and _untimed(read_check(path)) != _untimed(result):
        write_check(path, result)  # nothing new, but the file says otherwise (missing, other questions, a new rule)
    summary.verdict = result["verdict"]
    sanity.check_line(result, say)
    return seconds


def _run_answers(out: Path, slug: str, models: dict[str, Any], requests: list[JudgeRequest], lazy: _Lazy,
                 summary: JudgeSummary, say: Say, identity_of: Callable[[str], dict[str, Any]]) -> float:
    """Every answer turn judged (or found judged before); writes model_judgment/<slug>_single.jsonl."""
    file = JudgmentFile(judgment_path(out, slug), models)
    todo = file.plan(requests)
    summary.cached = len(requests) - len(todo)
    summary.superseded = file.superseded
    if file.superseded:
        say(f"{file.superseded} earlier judgment(s) of these models no longer match their answers or the judge "
            "prompts: replaced")
    say(f"judging {len(todo)} answer turn(s) of {len(models)} model(s) with {slug} "
        f"({summary.cached} judged before)")

    def write(chunk: list[Graded]) -> None:
        tstamp = time.time()
        file.add([judgment_line(g, identity_of(g.request.prompt_name), tstamp) for g in chunk])
        file.flush()
        summary.judged += len(chunk)

    try:
        seconds = _judge_all(todo, lazy, write, say, "judging")
    finally:
        file.flush()
    summary.unrated = sum(1 for r in requests if (file.line_for(r) or {}).get("score") == UNRATED)
    if summary.unrated:
        say(f"{summary.unrated} judgment(s) hold no parsable rating after a retry: score -1, in no mean")
    return seconds
