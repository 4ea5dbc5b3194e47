"""MT-Bench (Zheng et al., 2023) as FastChat's ``llm_judge`` defines it: the 80 two-turn questions,
the GPT-4 reference answers, the judge prompts, the per-category sampling temperatures, and the
``model_answer`` / ``model_judgment`` JSONL formats its scripts read and write.

Offline the files come from ``<data_dir>/mt_bench/`` (FastChat's ``fastchat/llm_judge/data``
layout: ``question.jsonl``, ``reference_answer/gpt-4.jsonl``, ``judge_prompts.jsonl``); without a
data directory from the Hugging Face space ``lmsys/mt-bench`` (where FastChat's
``download_mt_bench_pregenerated.py`` reads them). Torch-free: the Alpaca task reads the questions
as its test split, and ``pefteval.judging`` reads all three.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pefteval.errors import DataError
from pefteval.files import atomic_write_text, make_dir
from pefteval.tasks.base import read_data_bytes, read_data_text

# FastChat's order of the categories (its radar chart and show_result's category view)
CATEGORIES = ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities")
# fastchat/llm_judge/common.py: temperature_config; 0.0 is greedy decoding
TEMPERATURES = {"writing": 0.7, "roleplay": 0.7, "extraction": 0.0, "math": 0.0, "coding": 0.0,
                "reasoning": 0.0, "stem": 0.1, "humanities": 0.1}
# the categories judged against a reference answer (common.py: NEED_REF_CATS)
NEED_REF_CATS = ("math", "reasoning", "coding")
# where FastChat's pregenerated MT-Bench data lives on the hub
HUB_SPACE = "lmsys/mt-bench"
REFERENCE_JUDGE = "gpt-4"
FASTCHAT_MAX_NEW_TOKENS = 1024  # gen_model_answer.py --max-new-token


@dataclass(frozen=True)
class MTBenchQuestion:
    """One MT-Bench question: its user turns (two), category and the references some carry."""

    question_id: int
    category: str
    turns: tuple[str, ...]
    reference: tuple[str, ...] = ()
    required_temperature: float | None = None  # a question may fix its own (FastChat honours it)

    @property
    def id(self) -> str:
        return str(self.question_id)

    @property
    def target(self) -> list[str]:
        """What predictions.json shows as the reference: the question's own references (most have none)."""
        return list(self.reference)

    @property
    def temperature(self) -> float:
        """FastChat's sampling temperature for the question (0.0: greedy)."""
        if self.required_temperature is not None:
            return self.required_temperature
        return TEMPERATURES.get(self.category, 0.7)  # gen_model_answer.py's default for other categories


@dataclass(frozen=True)
class JudgePrompt:
    """One entry of ``judge_prompts.jsonl``."""

    name: str
    type: str
    system_prompt: str
    prompt_template: str
    output_format: str
    category: str = "general"


def judge_prompt_name(category: str, turn: int) -> str:
    """The single-answer grading prompt FastChat uses for a category and turn (1 or 2): the math
    prompt, with the reference answer, for math, reasoning and coding; the multi-turn form for turn 2."""
    if turn not in (1, 2):
        raise ValueError(f"MT-Bench has turns 1 and 2, not {turn}")
    name = "single-math-v1" if category in NEED_REF_CATS else "single-v1"
    return name + ("-multi-turn" if turn == 2 else "")


# --- reading FastChat's files ---------------------------------------------------------------------

def _local(data_dir: Path | None, relative: str) -> Path | None:
    return None if data_dir is None else data_dir / "mt_bench" / relative


def _hub_file(relative: str) -> Path:
    """A file of FastChat's MT-Bench data from the hub space ``lmsys/mt-bench`` (cached by
    huggingface_hub), for runs without a data directory."""
    from huggingface_hub import hf_hub_download  # only when reading from the hub

    remote = "data/judge_prompts.jsonl" if relative == "judge_prompts.jsonl" else f"data/mt_bench/{relative}"
    try:
        return Path(hf_hub_download(HUB_SPACE, remote, repo_type="space"))
    except Exception as err:  # noqa: BLE001 - network and hub errors come in many types
        raise DataError(f"could not download {remote} of the hub space {HUB_SPACE} ({type(err).__name__}: {err}). "
                        "Offline, pass --data-dir with mt_bench/question.jsonl, mt_bench/judge_prompts.jsonl and "
                        "mt_bench/reference_answer/gpt-4.jsonl (FastChat's fastchat/llm_judge/data files)") from None


def _path(data_dir: Path | None, relative: str) -> Path:
    local = _local(data_dir, relative)
    return local if local is not None else _hub_file(relative)


def _missing(path: Path) -> DataError:
    return DataError(f"MT-Bench file not found: {path}. Put FastChat's fastchat/llm_judge/data files under "
                     "<data-dir>/mt_bench/ (question.jsonl, judge_prompts.jsonl, reference_answer/gpt-4.jsonl), "
                     "or omit --data-dir to download them from the hub")


def read_jsonl(path: Path, missing: DataError | None = None) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line of a JSONL file; a line that is not a JSON
    object is a DataError naming the file and line."""
    rows = []
    for number, line in enumerate(read_data_text(path, missing).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path} line {number}: not valid JSON ({err.msg}, column {err.colno})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path} line {number}: expected a JSON object, got {type(row).__name__}")
        rows.append((number, row))
    return rows


def _strings(row: dict[str, Any], key: str, where: str, required: bool = True) -> tuple[str, ...]:
    value = row.get(key)
    if value is None and not required:
        return ()
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise DataError(f"{where}: '{key}' must be a non-empty list of strings")
    return tuple(value)


def read_questions(data_dir: Path | None) -> list[MTBenchQuestion]:
    """The MT-Bench questions of ``question.jsonl``, in file order."""
    path = _path(data_dir, "question.jsonl")
    questions, seen = [], set()
    for number, row in read_jsonl(path, _missing(path)):
        where = f"{path} line {number}"
        qid, category = row.get("question_id"), row.get("category")
        if not isinstance(qid, int) or isinstance(qid, bool):
            raise DataError(f"{where}: 'question_id' must be an integer")
        if qid in seen:
            raise DataError(f"{where}: question_id {qid} appears twice")
        if not isinstance(category, str) or not category:
            raise DataError(f"{where}: 'category' must be a non-empty string")
        temperature = row.get("required_temperature")
        if temperature is not None and (not isinstance(temperature, (int, float)) or temperature < 0):
            raise DataError(f"{where}: 'required_temperature' must be a number >= 0")
        seen.add(qid)
        questions.append(MTBenchQuestion(qid, category, _strings(row, "turns", where),
                                         _strings(row, "reference", where, required=False),
                                         None if temperature is None else float(temperature)))
    if not questions:
        raise DataError(f"{path}: no questions")
    return questions


def read_reference_answers(data_dir: Path | None, judge: str = REFERENCE_JUDGE) -> dict[int, tuple[str, ...]]:
    """question_id -> the reference answer's turns, from ``reference_answer/<judge>.jsonl``."""
    path = _path(data_dir, f"reference_answer/{judge}.jsonl")
    out: dict[int, tuple[str, ...]] = {}
    for number, row in read_jsonl(path, _missing(path)):
        answer = read_answer_row(row, f"{path} line {number}")
        out[answer["question_id"]] = tuple(answer["choices"][0]["turns"])
    return out


def read_judge_prompts(data_dir: Path | None) -> dict[str, JudgePrompt]:
    """name -> judge prompt, from ``judge_prompts.jsonl``."""
    path = _path(data_dir, "judge_prompts.jsonl")
    prompts = {}
    for number, row in read_jsonl(path, _missing(path)):
        where = f"{path} line {number}"
        fields = {}
        for key in ("name", "type", "system_prompt", "prompt_template", "output_format"):
            if not isinstance(row.get(key), str):
                raise DataError(f"{where}: '{key}' must be a string")
            fields[key] = row[key]
        prompts[fields["name"]] = JudgePrompt(**fields, category=str(row.get("category", "general")))
    return prompts


def data_files(data_dir: Path | None) -> list[Path]:
    """The three files, read once each so that a trial's data fingerprint holds them."""
    paths = [_path(data_dir, name) for name in ("question.jsonl", f"reference_answer/{REFERENCE_JUDGE}.jsonl",
                                                "judge_prompts.jsonl")]
    for path in paths:
        read_data_bytes(path, _missing(path))
    return paths


# --- FastChat's model_answer format ---------------------------------------------------------------
#
# gen_model_answer.py writes one line per question:
#   {"question_id": int, "answer_id": str, "model_id": str,
#    "choices": [{"index": int, "turns": [str, ...]}], "tstamp": float}
# and gen_judgment.py reads a folder of such files, one per model (the file name is the model id).

def answer_row(question_id: int, model_id: str, turns: list[str], tstamp: float | None = None,
               answer_id: str | None = None) -> dict[str, Any]:
    """One line of a FastChat ``model_answer`` file (one choice, index 0)."""
    return {"question_id": question_id, "answer_id": answer_id or uuid.uuid4().hex[:22], "model_id": model_id,
            "choices": [{"index": 0, "turns": list(turns)}], "tstamp": time.time() if tstamp is None else tstamp}


def read_answer_row(row: Any, where: str) -> dict[str, Any]:
    """A ``model_answer`` line, checked: the keys and types FastChat's scripts rely on."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object")
    qid = row.get("question_id")
    if not isinstance(qid, int) or isinstance(qid, bool):
        raise DataError(f"{where}: 'question_id' must be an integer")
    if not isinstance(row.get("model_id"), str):
        raise DataError(f"{where}: 'model_id' must be a string")
    choices = row.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise DataError(f"{where}: 'choices' must be a non-empty list of objects")
    turns = choices[0].get("turns")
    if not isinstance(turns, list) or not all(isinstance(t, str) for t in turns):
        raise DataError(f"{where}: choices[0].turns must be a list of strings")
    tstamp = row.get("tstamp")
    if tstamp is not None and (not isinstance(tstamp, (int, float)) or not math.isfinite(tstamp)):
        raise DataError(f"{where}: 'tstamp' must be a number")
    return row


def read_answers(path: Path) -> dict[int, dict[str, Any]]:
    """question_id -> answer line of a ``model_answer`` file (a later line for the same question wins,
    as in FastChat's load_model_answers)."""
    missing = DataError(f"MT-Bench answer file not found: {path}")
    return {row["question_id"]: read_answer_row(row, f"{path} line {n}") for n, row in read_jsonl(path, missing)}


def write_answers(path: Path, rows: list[dict[str, Any]]) -> None:
    """A ``model_answer`` file, one JSON line per question sorted by question id (what FastChat's
    reorg_answer_file leaves), written through a temporary name."""
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in sorted(rows, key=lambda r: r["question_id"]))
    make_dir(path.parent)
    atomic_write_text(path, text)
