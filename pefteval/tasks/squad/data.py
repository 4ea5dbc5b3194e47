"""SQuAD v1.1 files and ids: the release layout, the hub's rows, and which source question an
adversarial item was made from."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pefteval.errors import DataError
from pefteval.tasks.base import QAExample, load_hub_split, read_json_file

TRAIN_FILE = "squad/train-v1.1.reconstructed.json"
DEV_FILE = "squad/dev-v1.1.json"
ADV_FILES = {"AddSent": "adversarial_squad/AddSent.json", "AddOneSent": "adversarial_squad/AddOneSent.json"}
GENERATED = ("AddAnsCtx", "AddNegAns")  # model-independent, generated from dev
MODEL_ATTACKS = ("AddAny", "AddAnyExtend")  # searched against the trained model
# every adversarial set, in the report's order; the ids of generated items end in -<set>-N
ADVERSARIAL = ("AddSent", "AddOneSent", "AddAny", "AddAnyExtend", "AddAnsCtx", "AddNegAns")
SHORT_NAMES = {"AddSent": "AS", "AddOneSent": "AOS", "AddAny": "AA", "AddAnyExtend": "AAE", "AddAnsCtx": "AAC",
               "AddNegAns": "ANA"}
HUB_SQUAD = "rajpurkar/squad"
HUB_ADVERSARIAL = "stanfordnlp/squad_adversarial"


def _missing(path: Path, what: str) -> DataError:
    return DataError(f"{what} not found: {path}. Put the SQuAD v1.1 JSON release files there (layout: "
                     "<data_dir>/squad/dev-v1.1.json, <data_dir>/adversarial_squad/AddSent.json, see the "
                     "README), or omit --data-dir to read from the hub.")


def read_squad_json(path: Path, what: str = "SQuAD file") -> list[QAExample]:
    """Questions of a SQuAD v1.1 JSON data file, in file order; a malformed entry names its place."""
    return squad_examples(read_json_file(path, _missing(path, what)), path)


def squad_examples(data: Any, path: Path) -> list[QAExample]:
    """Questions of a parsed SQuAD v1.1 JSON document read from ``path`` (which errors name), in
    document order. Apart from :func:`read_squad_json` so that a cache in this layout can be read
    without counting as input data."""
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise DataError(f"{path}: expected the SQuAD layout {{\"version\", \"data\": [articles]}}")
    out = []
    for a, article in enumerate(data["data"]):
        for p, para in enumerate(article.get("paragraphs", []) if isinstance(article, dict) else []):
            where = f"{path}: data[{a}].paragraphs[{p}]"
            context = para.get("context") if isinstance(para, dict) else None
            if not isinstance(context, str):
                raise DataError(f"{where}: missing or non-text 'context'")
            for q, qa in enumerate(para.get("qas", [])):
                out.append(_example(qa, context, article.get("title", ""), f"{where}.qas[{q}]"))
    if not out:
        raise DataError(f"{path}: no questions found")
    return out


def _example(qa: Any, context: str, title: str, where: str) -> QAExample:
    if not isinstance(qa, dict) or not isinstance(qa.get("question"), str) or "id" not in qa:
        raise DataError(f"{where}: a question needs 'id' and 'question'")
    answers = qa.get("answers")
    if not isinstance(answers, list) or not answers:
        raise DataError(f"{where} (id {qa['id']}): no answers; SQuAD v1.1 questions all have one")
    texts, starts = [], []
    for answer in answers:
        text, start = answer.get("text"), answer.get("answer_start")
        if not isinstance(text, str) or not isinstance(start, int):
            raise DataError(f"{where} (id {qa['id']}): an answer needs 'text' and an integer 'answer_start'")
        if context[start:start + len(text)] != text:
            raise DataError(f"{where} (id {qa['id']}): answer {text!r} is not at offset {start} of its context")
        texts.append(text)
        starts.append(start)
    return QAExample(str(qa["id"]), qa["question"], context, tuple(texts), tuple(starts), title)


def from_hub_rows(rows: list[dict[str, Any]], where: str) -> list[QAExample]:
    """Rows of the hub's squad / squad_adversarial datasets (answers as {text: [...], answer_start: [...]})."""
    out = []
    for i, row in enumerate(rows):
        answers = row.get("answers") or {}
        qa = {"id": row.get("id"), "question": row.get("question"),
              "answers": [{"text": t, "answer_start": s} for t, s in zip(answers.get("text", []),
                                                                         answers.get("answer_start", []))]}
        out.append(_example(qa, row.get("context") or "", row.get("title", ""), f"{where} row {i}"))
    return out


def hub_split(config: str | None, split: str, path: str = HUB_SQUAD) -> list[QAExample]:
    return from_hub_rows(list(load_hub_split(path, config, split)), path)



# an adversarial item's id is its source question's id plus a suffix: Jia & Liang's
# "-high-conf-turkN" or pefteval's "-<Attack>-N" for the sets it generates
_VARIANT_ID = re.compile(r"^(?P<source>.+?)-(?:high-conf-turk\d+|(?:" + "|".join(GENERATED + MODEL_ATTACKS)
                         + r")-\d+)$")


def source_id(question_id: str) -> str:
    """The id of the SQuAD dev question an adversarial item was made from (itself if original)."""
    match = _VARIANT_ID.match(question_id)
    return match.group("source") if match else question_id
