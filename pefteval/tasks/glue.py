"""GLUE classification tasks and their AdvGLUE adversarial sets.

Offline files (``<data_dir>/glue/...``, ``<data_dir>/advglue/dev.json``) are read in
their release formats; without a data directory the same splits come from the hub
(``nyu-mll/glue``, ``AI-secure/adv_glue``). Label ids follow the Hugging Face GLUE
features, which is also AdvGLUE's convention, so a label id means the same class on
the clean and the adversarial set.

Splits. The GLUE dev set is the "original" test set (as in the paper). Model
selection needs a validation set that is not the test set, so it is held out from
the training source. MNLI, QQP and QNLI have no train split offline: with
``train_from: dev`` (the default when no train split exists) their dev set is split
deterministically into a test part (``dev_test_fraction``) and a training part, and
training examples that share a sentence with an AdvGLUE item are dropped, because
AdvGLUE perturbs GLUE dev sentences.
"""

from __future__ import annotations

import csv
import io
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pefteval.errors import DataError
from pefteval.tasks.base import (
    Example,
    Task,
    TaskSplits,
    hold_out_validation,
    load_hub_split,
    read_data_bytes,
    read_data_text,
    register,
    score_accuracy,
)


@dataclass(frozen=True)
class LocalFile:
    relpath: str
    fmt: str  # tsv | parquet


@dataclass(frozen=True)
class GlueSpec:
    name: str
    display: str
    hub_config: str
    fields: tuple[str, str | None]
    label_names: tuple[str, ...]
    local_train: LocalFile | None
    local_test: LocalFile
    hub_test_split: str
    advglue_key: str
    # dev file divided for training when no train split exists (MNLI-MM trains on MNLI matched)
    local_train_dev: LocalFile | None = None
    help: str = ""


MNLI_MATCHED = LocalFile("glue/MNLI/validation_matched-00000-of-00001.parquet", "parquet")
SPECS = [
    GlueSpec("sst2", "SST-2", "sst2", ("sentence", None), ("negative", "positive"),
             LocalFile("glue/SST-2/train.tsv", "tsv"), LocalFile("glue/SST-2/dev.tsv", "tsv"), "validation", "sst2",
             help="binary sentiment of movie-review sentences"),
    GlueSpec("qqp", "QQP", "qqp", ("question1", "question2"), ("not_duplicate", "duplicate"),
             None, LocalFile("glue/QQP/validation-00000-of-00001.parquet", "parquet"), "validation", "qqp",
             help="are two Quora questions duplicates (offline: trains on part of dev)"),
    GlueSpec("mnli", "MNLI", "mnli", ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"),
             None, MNLI_MATCHED, "validation_matched", "mnli",
             help="3-way entailment, matched genres (offline: trains on part of dev_matched)"),
    GlueSpec("mnli-mm", "MNLI-MM", "mnli", ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"),
             None, LocalFile("glue/MNLI/validation_mismatched-00000-of-00001.parquet", "parquet"),
             "validation_mismatched", "mnli-mm", local_train_dev=MNLI_MATCHED,
             help="MNLI trained on matched genres, tested on mismatched genres"),
    GlueSpec("qnli", "QNLI", "qnli", ("question", "sentence"), ("entailment", "not_entailment"),
             None, LocalFile("glue/QNLI/dev.tsv", "tsv"), "validation", "qnli",
             help="does the sentence answer the question (offline: trains on part of dev)"),
    GlueSpec("rte", "RTE", "rte", ("sentence1", "sentence2"), ("entailment", "not_entailment"),
             LocalFile("glue/RTE/train.tsv", "tsv"), LocalFile("glue/RTE/dev.tsv", "tsv"), "validation", "rte",
             help="binary textual entailment (small: 2,490 train examples)"),
]
ADVGLUE_FILE = "advglue/dev.json"
ADVGLUE_HUB = {"sst2": "adv_sst2", "qqp": "adv_qqp", "mnli": "adv_mnli", "mnli-mm": "adv_mnli_mismatched",
               "qnli": "adv_qnli", "rte": "adv_rte"}


def _missing(path: Path, what: str) -> DataError:
    return DataError(f"{what} not found: {path}. Put the GLUE/AdvGLUE release files under the data directory "
                     "(see the dataset's SOURCE.md), or run without --data-dir to read from the hub.")


def _label_id(raw: Any, spec: GlueSpec) -> int | None:
    """A label name or an integer id; anything else (1.5, True, "x") is rejected."""
    if isinstance(raw, str):
        if raw in spec.label_names:
            return spec.label_names.index(raw)
        if not re.fullmatch(r"\d+", raw.strip()):
            return None
        value = int(raw)
    elif isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    elif isinstance(raw, float) and raw.is_integer():
        value = int(raw)
    else:
        return None
    return value if 0 <= value < len(spec.label_names) else None


def read_tsv(path: Path, spec: GlueSpec) -> list[Example]:
    examples = []
    # newline="" hands the csv module each line with its own ending, as open(newline="") does
    with io.StringIO(read_data_text(path, _missing(path, f"{spec.display} file")), newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: empty file; expected a GLUE TSV with a header row")
        wanted = [c for c in (*spec.fields, "label") if c]
        absent = [c for c in wanted if c not in header]
        if absent:
            raise DataError(f"{path}:1: header lacks column(s) {', '.join(absent)}; found {', '.join(header)}. "
                            "Expected the GLUE release format.")
        index = [header.index(c) for c in wanted]
        for lineno, row in enumerate(reader, start=2):
            if len(row) != len(header):
                raise DataError(f"{path}:{lineno}: expected {len(header)} tab-separated columns, found {len(row)}. "
                                "Fix or remove that line (GLUE TSVs use no quoting).")
            values = [row[i] for i in index]
            label = _label_id(values[-1], spec)
            if label is None:
                raise DataError(f"{path}:{lineno}: label {values[-1]!r} is not one of "
                                f"{', '.join(spec.label_names)} (or their ids 0..{len(spec.label_names) - 1})")
            examples.append(Example(values[0], values[1] if spec.fields[1] else None, label))
    return examples


def read_parquet(path: Path, spec: GlueSpec) -> list[Example]:
    data = read_data_bytes(path, _missing(path, f"{spec.display} file"))
    try:
        table = pq.read_table(pa.BufferReader(data))
    except Exception as err:  # noqa: BLE001 - pyarrow raises several types for a corrupt file
        raise DataError(f"{path}: not a readable Parquet file ({err})") from None
    wanted = [c for c in (*spec.fields, "label") if c]
    absent = [c for c in wanted if c not in table.column_names]
    if absent:
        raise DataError(f"{path}: missing column(s) {', '.join(absent)}; found {', '.join(table.column_names)}. "
                        "Expected the Hugging Face nyu-mll/glue Parquet export.")
    return _rows_to_examples(table.select(wanted).to_pylist(), spec, str(path))


def _rows_to_examples(rows: list[dict[str, Any]], spec: GlueSpec, where: str) -> list[Example]:
    a, b = spec.fields
    examples = []
    for i, row in enumerate(rows):
        label = _label_id(row.get("label"), spec)
        text_a = row.get(a)
        text_b = row.get(b) if b else None
        if label is None or not isinstance(text_a, str) or (b and not isinstance(text_b, str)):
            raise DataError(f"{where}: row {i} is malformed (label {row.get('label')!r}, fields {a}"
                            f"{', ' + b if b else ''} must be strings; labels 0..{len(spec.label_names) - 1})")
        examples.append(Example(text_a, text_b, label))
    return examples


def read_local(data_dir: Path, file: LocalFile, spec: GlueSpec) -> list[Example]:
    path = data_dir / file.relpath
    return read_tsv(path, spec) if file.fmt == "tsv" else read_parquet(path, spec)


def read_advglue(path: Path, spec: GlueSpec) -> list[Example]:
    text = read_data_text(path, _missing(path, "AdvGLUE dev.json"))
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
    if not isinstance(data, dict) or spec.advglue_key not in data:
        raise DataError(f"{path}: no '{spec.advglue_key}' key; expected the AdvGLUE dev.json layout "
                        "(keys sst2, qqp, mnli, mnli-mm, qnli, rte)")
    return _rows_to_examples(data[spec.advglue_key], spec, f"{path} [{spec.advglue_key}]")


def _hub(path: str, config: str, split: str) -> list[dict[str, Any]]:
    return list(load_hub_split(path, config, split))


def normalise(text: str | None) -> str:
    """Case- and tokenisation-insensitive key (AdvGLUE spaces out punctuation, GLUE TSVs do not)."""
    return re.sub(r"[^a-z0-9]", "", (text or "").lower())


def _shuffled(items: list[Example], seed: int) -> list[Example]:
    out = list(items)
    random.Random(seed).shuffle(out)
    return out


def _words(text: str | None) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", (text or "").lower()))


class _LeakIndex:
    """AdvGLUE items, indexed to find the GLUE sentences they were made from."""

    def __init__(self, items: list[Example]):
        self.keys_a = {normalise(x.text_a) for x in items}
        self.keys_b = {normalise(x.text_b) for x in items if x.text_b}
        self.single = [_words(x.text_a) for x in items if x.text_b is None]


def _derived_from(example: Example, index: _LeakIndex) -> bool:
    """True if an AdvGLUE item was made from this example. Pair tasks perturb one side,
    so the other side matches exactly; a single sentence (SST-2) is perturbed a few
    words at a time, so word-set Jaccard similarity >= 0.6 counts as derived."""
    if normalise(example.text_a) in index.keys_a or normalise(example.text_b) in index.keys_b:
        return True
    if example.text_b is None and index.single:
        words = _words(example.text_a)
        return any(len(words & w) >= 0.6 * len(words | w) for w in index.single if words | w)
    return False


def make_splits(spec: GlueSpec, train_source: list[Example] | None, test_source: list[Example],
                train_dev: list[Example] | None, adversarial: list[Example], cfg: Any,
                leak_items: list[Example] | None = None) -> TaskSplits:
    """leak_items: the AdvGLUE items whose sources must not be trained on when the dev
    set is divided (default: this task's adversarial set)."""
    notes: list[str] = []
    use_dev = cfg.train_from == "dev" or (cfg.train_from == "auto" and train_source is None)
    if not use_dev:
        if train_source is None:
            raise DataError(f"{spec.name}: no train split in the data directory (see glue/MISSING.md). Set "
                            "data.train_from: dev to train on a fixed part of the dev set, or read from the hub.")
        pool = _shuffled(train_source, cfg.split_seed)
        test = test_source
    else:
        # dev is divided: a fixed test part, the rest (minus AdvGLUE overlaps) for training and validation
        divided = train_dev if train_dev is not None else test_source
        order = _shuffled(divided, cfg.split_seed)
        n_test = round(len(order) * cfg.dev_test_fraction)
        if train_dev is None:
            test, pool = order[:n_test], order[n_test:]
            notes.append(f"{spec.display}: trained on {1 - cfg.dev_test_fraction:.0%} of the dev set, tested on the "
                         f"disjoint {cfg.dev_test_fraction:.0%} ({n_test} examples)")
        else:
            test, pool = test_source, order[n_test:]
            notes.append(f"{spec.display}: trained on the same part of MNLI dev_matched as MNLI, tested on the whole "
                         f"dev_mismatched ({len(test)} examples)")
        leak_index = _LeakIndex(adversarial if leak_items is None else leak_items)
        kept = [x for x in pool if not _derived_from(x, leak_index)]
        if len(kept) < len(pool):
            notes.append(f"{spec.display}: dropped {len(pool) - len(kept)} training examples sharing a sentence "
                         "with an AdvGLUE item")
        pool = kept
    validation, train = hold_out_validation(pool, cfg)
    adv = adversarial
    if cfg.max_eval_examples is not None:
        cap = cfg.max_eval_examples
        validation = validation[:cap]
        test = _shuffled(test, cfg.split_seed)[:cap]
        adv = _shuffled(adversarial, cfg.split_seed)[:cap]
        notes.append(f"{spec.display}: evaluation splits capped at {cap} examples (--max-eval-examples)")
    return TaskSplits(train=train, validation=validation, test=test, adversarial={"advglue": adv},
                      notes=notes, train_source="dev" if use_dev else "train")


def _loader(spec: GlueSpec):
    def load(data_dir: Path | None, cfg: Any) -> TaskSplits:
        leak = None  # MNLI-MM trains on MNLI's matched part, so it drops MNLI's AdvGLUE sources too
        if data_dir is not None:
            train = read_local(data_dir, spec.local_train, spec) if spec.local_train else None
            if train is not None and cfg.train_from == "dev":
                train = None
            test = read_local(data_dir, spec.local_test, spec)
            train_dev = read_local(data_dir, spec.local_train_dev, spec) if spec.local_train_dev else None
            adversarial = read_advglue(data_dir / ADVGLUE_FILE, spec)
            if spec.local_train_dev is not None:
                leak = adversarial + read_advglue(data_dir / ADVGLUE_FILE, SPEC_BY_NAME["mnli"])
        else:
            rows = _hub("nyu-mll/glue", spec.hub_config, "train") if cfg.train_from != "dev" else None
            train = _rows_to_examples(rows, spec, f"nyu-mll/glue/{spec.hub_config}") if rows is not None else None
            test = _rows_to_examples(_hub("nyu-mll/glue", spec.hub_config, spec.hub_test_split), spec, "nyu-mll/glue")
            train_dev = None
            if spec.local_train_dev is not None and train is None:
                train_dev = _rows_to_examples(_hub("nyu-mll/glue", "mnli", "validation_matched"), spec, "nyu-mll/glue")
            adv_rows = _hub("AI-secure/adv_glue", ADVGLUE_HUB[spec.name], "validation")
            adversarial = _rows_to_examples(adv_rows, spec, "AI-secure/adv_glue")
            if train_dev is not None:
                matched = _hub("AI-secure/adv_glue", ADVGLUE_HUB["mnli"], "validation")
                leak = adversarial + _rows_to_examples(matched, spec, "AI-secure/adv_glue")
        return make_splits(spec, train, test, train_dev, adversarial, cfg, leak)

    return load


SPEC_BY_NAME = {s.name: s for s in SPECS}


def register_tasks() -> None:
    for spec in SPECS:
        load = _loader(spec)
        register(Task(
            name=spec.name, display=spec.display, help=spec.help, kind="classification",
            splits=lambda data_dir, cfg, seed=0, _load=load: _load(data_dir, cfg),
            score=score_accuracy, selection_metric="accuracy", label_names=spec.label_names,
            adversarial=("advglue",), report_columns=("accuracy",),
        ))
