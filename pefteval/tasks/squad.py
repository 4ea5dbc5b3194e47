"""SQuAD v1.1 reading comprehension and its adversarial sets (Table 4 and 5 of the paper).

Offline files, in the SQuAD v1.1 JSON layout:
- ``<data_dir>/squad/train-v1.1.reconstructed.json``: the training source (its answer
  offsets are first occurrences of the answer text, see its SOURCE.md);
- ``<data_dir>/squad/dev-v1.1.json``: the original test set (as in the paper);
- ``<data_dir>/adversarial_squad/AddSent.json`` and ``AddOneSent.json`` (Jia & Liang, 2017):
  the 1,000 sampled dev questions plus their adversarial copies ``<id>-high-conf-turkN``.
From the hub: ``rajpurkar/squad`` and ``stanfordnlp/squad_adversarial``.

AddAnsCtx and AddNegAns are generated from the dev questions that AddSent was built
on (``pefteval/adversarial/squad.py``, seeded and cached). AddAny and AddAnyExtend
search against the trained model, so a trial generates them after training; the
loader only hands over their source questions.

Validation for epoch and grid selection is held out from the training source, never
from dev, and dev is never trained on.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from pefteval.config import DataConfig
from pefteval.errors import DataError
from pefteval.tasks import QAExample, QATask, TaskSplits, hold_out_validation, read_json_file, register, source_id

TRAIN_FILE = "squad/train-v1.1.reconstructed.json"
DEV_FILE = "squad/dev-v1.1.json"
ADV_FILES = {"AddSent": "adversarial_squad/AddSent.json", "AddOneSent": "adversarial_squad/AddOneSent.json"}
GENERATED = ("AddAnsCtx", "AddNegAns")  # model-independent, generated from dev
MODEL_ATTACKS = ("AddAny", "AddAnyExtend")  # searched against the trained model
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
    """Questions of a SQuAD v1.1 JSON file, in file order; a malformed entry names its place."""
    data = read_json_file(path, _missing(path, what))
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


def _hub(config: str | None, split: str, path: str = HUB_SQUAD) -> list[QAExample]:
    import datasets

    try:
        rows = list(datasets.load_dataset(path, config, split=split))
    except Exception as err:  # noqa: BLE001 - network and hub errors come in many types
        raise DataError(f"could not load {path}{'/' + config if config else ''} split {split} from the hub "
                        f"({type(err).__name__}: {err}). Offline, pass --data-dir with the release files.") from None
    return from_hub_rows(rows, path)


def _shuffled(items: list[Any], seed: int) -> list[Any]:
    out = list(items)
    random.Random(seed).shuffle(out)
    return out


def keep_groups(items: list[QAExample], sources: list[str]) -> list[QAExample]:
    """The items whose source question is in ``sources`` (originals and their variants)."""
    wanted = set(sources)
    return [x for x in items if source_id(x.id) in wanted]


def adversarial_sources(adversarial_file_items: list[QAExample]) -> list[str]:
    """Ids of the source dev questions of an Adversarial SQuAD file, in file order."""
    seen: dict[str, None] = {}
    for item in adversarial_file_items:
        seen.setdefault(source_id(item.id), None)
    return list(seen)


def make_splits(train_source: list[QAExample], dev: list[QAExample], adversarial: dict[str, list[QAExample]],
                cfg: DataConfig, data_dir: Path | None) -> TaskSplits:
    notes: list[str] = []
    pool = _shuffled(train_source, cfg.split_seed)
    validation, train = hold_out_validation(pool, cfg)
    test = dev
    if cfg.max_eval_examples is not None:
        validation = validation[: cfg.max_eval_examples]
        test = _shuffled(dev, cfg.split_seed)[: cfg.max_eval_examples]
        notes.append(f"SQuAD: dev capped at {len(test)} of {len(dev)} questions, validation at {len(validation)} "
                     "(--max-eval-examples)")
    wanted = cfg.adversarial_sets if cfg.adversarial_sets is not None else list(ADVERSARIAL)
    unknown = [name for name in wanted if name not in ADVERSARIAL]
    if unknown:
        raise DataError(f"squad: unknown adversarial set(s) {', '.join(unknown)}; known: {', '.join(ADVERSARIAL)}")
    # every set is scored on the same source questions: those AddSent was built on
    reference = adversarial.get("AddSent") or next(iter(adversarial.values()), [])
    sources = adversarial_sources(reference)
    if cfg.max_adversarial_questions is not None and cfg.max_adversarial_questions < len(sources):
        sources = _shuffled(sources, cfg.split_seed)[: cfg.max_adversarial_questions]
        notes.append(f"Adversarial SQuAD: {len(sources)} of the source questions (data.max_adversarial_questions), "
                     "each scored with all its variants")
    adv_sets: dict[str, list[QAExample]] = {}
    model_attacks: dict[str, list[QAExample]] = {}
    source_key = _source_key(data_dir)
    by_id = {x.id: x for x in dev}
    source_items = [by_id[s] for s in sources if s in by_id]
    for name in wanted:
        if name in adversarial:
            adv_sets[name] = keep_groups(adversarial[name], sources)
        elif name in GENERATED:
            from pefteval.adversarial.squad import generated_set

            adv_sets[name] = generated_set(name, source_items, cfg.attack, pool=dev, model=None,
                                           source_key=source_key)
        elif name in MODEL_ATTACKS:
            model_attacks[name] = source_items
    return TaskSplits(train=train, validation=validation, test=test, adversarial=adv_sets, notes=notes,
                      train_source="train", model_attacks=model_attacks, attack_pool=dev,
                      attack_source_key=source_key)


def _source_key(data_dir: Path | None) -> str:
    """What the generated sets are made from, for their cache key: the dev file's hash, or the hub id."""
    if data_dir is None:
        return f"hub:{HUB_SQUAD}:validation"
    from pefteval.adversarial.squad import file_sha256

    return file_sha256(data_dir / DEV_FILE)


def load_squad(data_dir: Path | None, cfg: DataConfig) -> TaskSplits:
    wanted = cfg.adversarial_sets if cfg.adversarial_sets is not None else list(ADVERSARIAL)
    need_files = set(ADV_FILES) & (set(wanted) | {"AddSent"})
    if data_dir is not None:
        train = read_squad_json(data_dir / TRAIN_FILE, "SQuAD training file")
        dev = read_squad_json(data_dir / DEV_FILE, "SQuAD dev file")
        adversarial = {name: read_squad_json(data_dir / ADV_FILES[name], f"Adversarial SQuAD {name} file")
                       for name in need_files}
    else:
        train = _hub(None, "train")
        dev = _hub(None, "validation")
        adversarial = {name: _hub(name, "validation", HUB_ADVERSARIAL) for name in need_files}
    return make_splits(train, dev, adversarial, cfg, data_dir)


register(QATask(
    name="squad", display="SQuAD",
    help="SQuAD v1.1 reading comprehension (EM/F1); extractive with encoders, generative with decoders",
    adversarial=ADVERSARIAL, loader=load_squad,
))
