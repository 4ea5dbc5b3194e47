"""ViGGO (Table 1): video-game utterances to meaning representations ``act(slot[value], ...)``.

The task is reversed as in the paper: the prompt holds the utterance, the target is the meaning
representation. Metrics: exact match of the meaning representation (act and slots, slot order
ignored) and micro-averaged precision / recall / F1 over (slot, value) pairs, the dialogue act
counting as one pair.

Offline files, under a data directory: ``viggo/{train,valid,test}.csv`` (columns ``mr``,
``ref``). From the hub: ``GEM/viggo``.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from pathlib import Path

from pefteval.errors import DataError
from pefteval.tasks.base import Scored, read_data_text
from pefteval.tasks.generation import (
    GenExample,
    GenTaskSpec,
    _hub_rows,
    _missing,
    _rate,
    _text_field,
    register_generation_task,
)

# --- meaning representations and their metrics ----------------------------------------

VIGGO_ACTS = ("inform", "request", "give_opinion", "confirm", "verify_attribute", "suggest", "request_explanation",
              "recommend", "request_attribute")
VIGGO_SLOTS = ("name", "exp_release_date", "release_year", "developer", "esrb", "rating", "genres",
               "player_perspective", "has_multiplayer", "platforms", "available_on_steam", "has_linux_release",
               "has_mac_release", "specifier")
# slots whose value is a comma-separated list in ViGGO (genres[driving/racing, sport]); the
# others keep their commas (exp_release_date[August 14, 2018], developer[Spectrum HoloByte, Inc.])
VIGGO_LIST_SLOTS = frozenset({"genres", "platforms", "player_perspective"})
_MR_HEAD = re.compile(r"^\s*([A-Za-z_]\w*)\s*\(")
_MR_SLOT = re.compile(r"([A-Za-z_]\w*)\s*\[([^\]]*)\]")


def parse_mr(text: str | None) -> tuple[str, dict[str, tuple[str, ...]]]:
    """The dialogue act and slots of a ViGGO meaning representation ``act(slot[value], ...)``.

    Act and slot names are lower-cased; values are whitespace-normalised and keep their case.
    List slots (genres, platforms, player_perspective) split on commas into a sorted tuple;
    other slots hold one value, or none for an empty ``slot[]`` (request_attribute). A slot named
    twice merges its values. Junk is tolerated: the act is "" when there is no ``name(`` prefix,
    and whatever ``slot[value]`` pieces occur are returned. Never raises.
    """
    if not isinstance(text, str):
        return "", {}
    head = _MR_HEAD.match(text)
    act = head.group(1).lower() if head else ""
    body = text[head.end():] if head else text
    if not head:
        first = re.match(r"^\s*([A-Za-z_]\w*)", text)
        if first and first.group(1).lower() in VIGGO_ACTS:
            act, body = first.group(1).lower(), text[first.end():]
    slots: dict[str, set[str]] = {}
    for name, raw in _MR_SLOT.findall(body):
        name = name.lower()
        pieces = raw.split(",") if name in VIGGO_LIST_SLOTS else [raw]
        values = slots.setdefault(name, set())
        values.update(v for v in (" ".join(p.split()) for p in pieces) if v)
    return act, {name: tuple(sorted(values)) for name, values in slots.items()}


def viggo_exact_match(prediction: str, gold: str) -> bool:
    """Same act and same slots with the same values; slot order (and list order) is ignored."""
    return parse_mr(prediction) == parse_mr(gold)


def viggo_accuracy(predictions: Sequence[str], golds: Sequence[str]) -> float:
    """Share of exactly matching meaning representations (:func:`viggo_exact_match`)."""
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions for {len(golds)} golds")
    if not golds:
        return float("nan")
    return sum(viggo_exact_match(p, g) for p, g in zip(predictions, golds)) / len(golds)


def mr_pairs(text: str | None) -> set[tuple[str, str]]:
    """The (slot, value) pairs of a meaning representation, the act counting as the pair
    ("__act__", act); a slot without a value counts as (slot, "")."""
    act, slots = parse_mr(text)
    pairs = {("__act__", act)} if act else set()
    for name, values in slots.items():
        pairs.update((name, v) for v in (values or ("",)))
    return pairs


def viggo_slot_scores(predictions: Sequence[str], golds: Sequence[str]) -> dict[str, float]:
    """Micro-averaged precision, recall and F1 over (slot, value) pairs (:func:`mr_pairs`: the
    dialogue act counts as one pair, each value of a list slot as one pair)."""
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions for {len(golds)} golds")
    if not golds:
        return {"precision": float("nan"), "recall": float("nan"), "f1": float("nan")}
    hits = n_pred = n_gold = 0
    for pred, gold in zip(predictions, golds):
        p, g = mr_pairs(pred), mr_pairs(gold)
        hits += len(p & g)
        n_pred += len(p)
        n_gold += len(g)
    precision = hits / n_pred if n_pred else 0.0
    recall = hits / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


VIGGO = GenTaskSpec(
    name="viggo", display="ViGGO",
    help="video-game utterance to meaning representation act(slot[value], ...); exact match",
    instruction=("Convert the sentence into its meaning representation: one dialogue act with its attributes, "
                 "written as act(attribute[value], attribute[value], ...). The act is one of: "
                 + ", ".join(VIGGO_ACTS) + ". The attributes are among: " + ", ".join(VIGGO_SLOTS) + "."),
    prompt_template="{instruction}\n\nSentence: {text}",
    hub_path="GEM/viggo", hub_config=None, metric="viggo_accuracy", splits=("train", "validation", "test"),
)

# offline layout
VIGGO_FILES = {"train": "viggo/train.csv", "validation": "viggo/valid.csv", "test": "viggo/test.csv"}


# --- loading ------------------------------------------------------------------------

def viggo_example(text: str, mr: str, example_id: str, where: str) -> GenExample:
    act, slots = parse_mr(mr)
    if not act or not slots:
        raise DataError(f"{where}: meaning representation {mr!r} is not of the form act(slot[value], ...)")
    text = " ".join(text.split())
    return GenExample(example_id, VIGGO.render(text=text), mr.strip(), {"text": text, "act": act})


def read_viggo_csv(path: Path, split: str) -> list[GenExample]:
    """Rows of a ViGGO CSV file (header ``mr,ref``); a malformed row names its line."""
    fix = "ViGGO files are CSV with the header 'mr,ref' and both fields filled in every row."
    out = []
    # newline="" hands the csv module each line with its own ending, as open(newline="") does
    with io.StringIO(read_data_text(path, _missing(path, f"ViGGO {split} file")), newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"mr", "ref"} <= set(reader.fieldnames):
            raise DataError(f"{path}: line 1: header is {reader.fieldnames}, expected columns mr and ref. {fix}")
        try:
            for row in reader:
                where = f"{path}: line {reader.line_num}"
                if None in row or any(v is None for v in row.values()):
                    raise DataError(f"{where}: wrong number of fields. {fix}")
                mr, ref = _text_field(row, "mr", where, fix), _text_field(row, "ref", where, fix)
                out.append(viggo_example(ref, mr, f"viggo-{split}-{len(out)}", where))
        except csv.Error as err:
            raise DataError(f"{path}: line {reader.line_num}: malformed CSV ({err}). {fix}") from None
    if not out:
        raise DataError(f"{path}: no rows found")
    return out


def load_viggo(data_dir: Path | None) -> dict[str, list[GenExample]]:
    """{"train", "validation", "test"}: 5,103 / 714 / 1,083 utterances in the release."""
    if data_dir is not None:
        return {split: read_viggo_csv(Path(data_dir) / rel, split) for split, rel in VIGGO_FILES.items()}
    fix = "The hub rows of GEM/viggo have 'meaning_representation' and 'target'."
    out = {}
    for split in VIGGO.splits:
        rows = _hub_rows(VIGGO.hub_path, VIGGO.hub_config, split)
        where = f"{VIGGO.hub_path} {split}"
        out[split] = [viggo_example(_text_field(r, "target", f"{where} row {i}", fix),
                                    _text_field(r, "meaning_representation", f"{where} row {i}", fix),
                                    str(r.get("gem_id") or f"viggo-{split}-{i}"), f"{where} row {i}")
                      for i, r in enumerate(rows)]
    return out


# --- scoring ------------------------------------------------------------------------

def score_viggo(predictions: Sequence[str], examples: Sequence[GenExample], adversarial: bool = False) -> Scored:
    """Exact match of the meaning representation (slot order ignored), and slot P/R/F1."""
    golds = [x.target for x in examples]
    hits: list[float | None] = [float(viggo_exact_match(p, g)) for p, g in zip(predictions, golds, strict=True)]
    slots = viggo_slot_scores(predictions, golds)
    return Scored({"accuracy": _rate(hits), "slot_precision": slots["precision"], "slot_recall": slots["recall"],
                   "slot_f1": slots["f1"], "n": len(examples)}, hits)


def register_tasks() -> None:
    register_generation_task(VIGGO, load_viggo, score_viggo, ("accuracy", "slot_precision", "slot_recall", "slot_f1"),
                             {"accuracy": "exact match (slot order ignored)", "slot_precision": "slot P",
                              "slot_recall": "slot R", "slot_f1": "slot F1"})
