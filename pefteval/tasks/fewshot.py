"""Prompt-based few-shot classification data (the paper's Appendix D, Table 7, Figure 2).

A decoder LM classifies by predicting a label word. Each task has a pattern with a
text slot and a label slot, and one label word per class. The input for a query is
one demonstration per class (a training example rendered with its label word)
followed by the query rendered with the label slot left empty, so the prompt ends
right before the label word:

    X(s) = P(s_1, l_1) + ... + P(s_C, l_C) + P(s, "")

This is LM-BFF (Gao, Fisch & Chen, ACL 2021) with a left-to-right LM: the label word
is scored with the model's own next-token distribution, no classification head is
added. Templates and label words are data in ``FewShotSpec``, not code in a trainer.

Patterns. LM-BFF writes cloze templates for a masked LM; a causal LM can only score
a word at the end of the prompt, so every pattern here puts the label slot last, in
the "field: text field: label" form that Appendix D gives for SST-2
("Review: {s} Sentiment: {l}"). Label words are LM-BFF's where LM-BFF has the task
(SST-2: terrible/great; TREC: Expression/Entity/Description/Human/Location/Number for
ABBR/ENTY/DESC/HUM/LOC/NUM). LM-BFF's TREC template "[MASK]: {question}" puts the
label before the question, which a left-to-right LM cannot score, so TREC gets an
"Answer type:" field after the question instead. AG News, EmoC and Amazon are not in
LM-BFF; their label words are the class names (AG News "Sci/Tech" -> "Tech"; EmoC in
lower case, because "Angry" is two tokens for SmolLM2 while "angry" is one; Amazon
negative/positive, LM-BFF's words for MPQA). Every label word must be a single token
when it follows the pattern (see ``check_label_words``).

Sources. SST-2, TREC and AG News read their release files from a data directory;
without one they come from the hub. AG News offline has only its test file: a fixed
part of it (``pool_fraction``, shuffled by ``split_seed``) is the training pool and the
disjoint rest is the test set. EmoC and Amazon come from the hub only (see their
folders' MISSING.md: EmoC's terms, Amazon's file sizes); Amazon's 3.6M/400k splits are
cut to seeded 20,000 / 10,000-row subsets.
"""

from __future__ import annotations

import csv
import io
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pefteval.errors import DataError, UserError
from pefteval.tasks.base import (
    TASKS,
    Example,
    Task,
    TaskSplits,
    hold_out_validation,
    load_hub_split,
    read_data_text,
    register,
    score_accuracy,
)
from pefteval.tasks.glue import SPEC_BY_NAME, read_tsv

LABEL_SLOT = "{label}"


@dataclass(frozen=True)
class FewShotSpec:
    """A few-shot task: its pattern, label words and where its data comes from.

    ``pattern`` holds ``{text}`` (and ``{text_b}`` for pair inputs) and ends with
    ``" {label}"``: the label word follows a single space, so for LLaMA-family and
    byte-level BPE tokenizers the word is read with its leading space ("▁great",
    "Ġgreat"), which is one token where the plain word may be several.
    ``label_words`` has one word per class, in class-id order.
    """

    name: str
    display: str
    pattern: str
    label_words: tuple[str, ...]
    label_names: tuple[str, ...]
    hub_path: str
    hub_config: str | None
    hub_splits: tuple[str, str]  # (training pool, test)
    fields: tuple[str, str | None]  # hub column names of text and text_b
    label_field: str = "label"
    separator: str = "\n"  # between the rendered demonstrations and the query
    hub_limits: tuple[int | None, int | None] = (None, None)  # seeded subset sizes of (pool, test)
    help: str = ""

    def __post_init__(self) -> None:
        if not self.pattern.endswith(" " + LABEL_SLOT) or self.pattern.count(LABEL_SLOT) != 1:
            raise ValueError(f"{self.name}: pattern must end with ' {LABEL_SLOT}' and hold it once: {self.pattern!r}")
        if "{text}" not in self.pattern or ("{text_b}" in self.pattern) != (self.fields[1] is not None):
            raise ValueError(f"{self.name}: pattern slots do not match the fields {self.fields}: {self.pattern!r}")
        if len(self.label_words) != len(self.label_names) or len(set(self.label_words)) != len(self.label_words):
            raise ValueError(f"{self.name}: need one distinct label word per class")

    @property
    def num_labels(self) -> int:
        return len(self.label_words)


SPECS: dict[str, FewShotSpec] = {s.name: s for s in [
    FewShotSpec("sst2", "SST-2", "Review: {text} Sentiment: {label}", ("terrible", "great"),
                ("negative", "positive"), "nyu-mll/glue", "sst2", ("train", "validation"), ("sentence", None),
                help="binary movie-review sentiment; test = GLUE dev (872)"),
    FewShotSpec("trec", "TREC", "Question: {text} Answer type: {label}",
                ("Expression", "Entity", "Description", "Human", "Location", "Number"),
                ("ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM"), "CogComp/trec", None, ("train", "test"),
                ("text", None), label_field="coarse_label",
                help="6 coarse question types (Li & Roth); test = TREC_10 (500)"),
    FewShotSpec("agnews", "AG News", "Article: {text} Topic: {label}", ("World", "Sports", "Business", "Tech"),
                ("World", "Sports", "Business", "Sci/Tech"), "fancyzhx/ag_news", None, ("train", "test"),
                ("text", None), help="4 news topics; offline, pool and test are disjoint parts of test.csv"),
    FewShotSpec("emoc", "EmoC", "Dialogue: {text} Emotion: {label}", ("others", "happy", "sad", "angry"),
                ("others", "happy", "sad", "angry"), "SemEvalWorkshop/emo", None, ("train", "test"),
                ("text", None), help="EmoContext: emotion of a 3-turn dialogue (hub only)"),
    FewShotSpec("amazon", "Amazon", "Title: {text} Review: {text_b} Sentiment: {label}", ("negative", "positive"),
                ("negative", "positive"), "fancyzhx/amazon_polarity", None, ("train", "test"), ("title", "content"),
                hub_limits=(20_000, 10_000), help="Amazon review polarity (hub only; seeded 20k pool / 10k test)"),
]}

AGNEWS_POOL_FRACTION = 0.2


def get_spec(name: str) -> FewShotSpec:
    if name not in SPECS:
        raise KeyError(f"unknown few-shot task '{name}'; known: {', '.join(SPECS)}")
    return SPECS[name]


# --- rendering ------------------------------------------------------------------------------------


def clean(text: str | None) -> str:
    """Whitespace runs (newlines, tabs, SST-2's trailing spaces) become one space."""
    return " ".join((text or "").split())


def render(spec: FewShotSpec, example: Example, label: int | None = None) -> str:
    """One block of the prompt: the example in the pattern, with its label word, or with the
    label slot left empty (the text then ends right before the space that precedes the word)."""
    slots = {"text": clean(example.text_a), "text_b": clean(example.text_b)}
    if label is None:
        template = spec.pattern[: -len(" " + LABEL_SLOT)]
    else:
        template = spec.pattern
        slots["label"] = spec.label_words[label]
    # str.format reads braces in the template only, so texts holding "{" are safe
    return re.sub(" {2,}", " ", template.format(**slots))


def build_prompt(spec: FewShotSpec, query: Example, demonstrations: Sequence[Example],
                 label: int | None = None) -> str:
    """The demonstrations, each with its own label word, then the query with an empty label slot
    (or with ``label``'s word, to show a whole training sequence), joined by ``spec.separator``.
    The order of ``demonstrations`` is kept (``draw_demonstrations`` gives class-id order)."""
    blocks = [render(spec, d, d.label) for d in demonstrations]
    blocks.append(render(spec, query, label))
    return spec.separator.join(blocks)


def check_label_words(tokenizer: Any, spec: FewShotSpec) -> list[int]:
    """Token ids of the label words as they follow the pattern; raises UserError unless each
    is exactly one token there and the ids are distinct.

    The check tokenizes a rendered prompt with and without " <word>" appended and requires
    the longer one to be the shorter plus one token. That is what scoring needs: the word's
    first token is read at the last prompt position, so a word split into several tokens
    would be scored by its first piece only. LLaMA's SentencePiece and byte-level BPE
    tokenizers fold the leading space into the word's token ("▁great", "Ġgreat")."""
    probe = build_prompt(spec, Example("x", "x" if spec.fields[1] else None, 0), [])
    prefix = tokenizer(probe, add_special_tokens=False)["input_ids"]
    ids, bad = [], []
    for word in spec.label_words:
        full = tokenizer(f"{probe} {word}", add_special_tokens=False)["input_ids"]
        if len(full) != len(prefix) + 1 or full[: len(prefix)] != prefix:
            bad.append(f"{word!r} -> {tokenizer.convert_ids_to_tokens(full[len(prefix):])}")
        else:
            ids.append(full[-1])
    if bad:
        raise UserError(f"{spec.name}: label word(s) not a single token after the pattern with this tokenizer: "
                        f"{'; '.join(bad)}. Pick one-token label words for this model (FewShotSpec.label_words).")
    if len(set(ids)) != len(ids):
        raise UserError(f"{spec.name}: label words {spec.label_words} share a token id ({ids}) with this tokenizer")
    return ids


# --- sampling -------------------------------------------------------------------------------------


FEWSHOT_MAX_VALIDATION_PER_CLASS = 16


def fewshot_samples(pool: list[Any], num_classes: int, k: int, seed: int) -> tuple[list[Any], list[Any], list[str]]:
    """The seed's k-shot training sample and its validation sample. Each class is shuffled by the
    seed alone; training takes its first k, validation its last min(k, 16) (as few labelled
    examples as the training set has, up to 16, as LM-BFF sizes its dev set), so for one seed a
    smaller k's training sample is part of every larger one. A class with fewer than k + its
    validation share gives training what is left, with a note."""
    groups = group_by_class(pool, num_classes)
    train, validation, notes = [], [], []
    for label, members in enumerate(groups):
        order = list(members)
        random.Random(f"{seed}:{label}").shuffle(order)
        n_val = min(k, FEWSHOT_MAX_VALIDATION_PER_CLASS)
        if len(order) < 2:
            raise DataError(f"class {label} has {len(order)} example(s) in the training pool; "
                            "few-shot needs at least 2")
        n_val = min(n_val, len(order) // 2)
        n_train = min(k, len(order) - n_val)
        if n_train < k:
            notes.append(f"class {label}: only {n_train} training examples for k={k} (pool {len(order)}, "
                         f"{n_val} kept for validation)")
        train += order[:n_train]
        validation += order[len(order) - n_val:]
    return train, validation, notes


def group_by_class(pool: Sequence[Example], num_classes: int) -> list[list[Example]]:
    groups: list[list[Example]] = [[] for _ in range(num_classes)]
    for example in pool:
        if not 0 <= example.label < num_classes:
            raise DataError(f"label {example.label} outside 0..{num_classes - 1} in the demonstration pool")
        groups[example.label].append(example)
    return groups


def draw_demonstrations(groups: Sequence[Sequence[Example]], query: Example, rng: random.Random) -> list[Example]:
    """One demonstration per class, in class-id order, never the query itself (nor a pool
    example equal to it: same texts and label)."""
    demos = []
    for c, members in enumerate(groups):
        candidates = [x for x in members if x != query] if c == query.label else members
        if not candidates:
            raise DataError(f"no demonstration for class {c}: the pool holds no example of it other than the query. "
                            "Demonstrations need k >= 2 when drawn for training examples.")
        demos.append(candidates[rng.randrange(len(candidates))])
    return demos


def query_rng(seed: int, query: Example) -> random.Random:
    """A generator for one query's demonstrations, fixed by the seed and the query's content
    (so it does not depend on which other queries are encoded, or their order)."""
    return random.Random(f"{seed}\x00{query.text_a}\x00{query.text_b}")


# --- loading --------------------------------------------------------------------------------------


def _missing(path: Path, spec: FewShotSpec) -> DataError:
    return DataError(f"{spec.display} file not found: {path}. Put the release files under the data directory "
                     "(see the dataset's SOURCE.md), or run without --data-dir to read from the hub.")


def read_sst2(data_dir: Path) -> dict[str, list[Example]]:
    glue = SPEC_BY_NAME["sst2"]  # same columns and label ids (0 negative, 1 positive)
    return {"train_pool": read_tsv(data_dir / "glue/SST-2/train.tsv", glue),
            "test": read_tsv(data_dir / "glue/SST-2/dev.tsv", glue)}


def read_trec(path: Path, spec: FewShotSpec) -> list[Example]:
    """``COARSE:fine question text`` per line; the class is the coarse label. The file is read as
    UTF-8, else as latin-1: the original TREC release is ASCII plus one byte 0xF0 (train line 66),
    which is not UTF-8; latin-1 maps every byte to a character."""
    examples = []
    text = read_data_text(path, _missing(path, spec), fallback_encoding="latin-1")
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        label, _, text = line.partition(" ")
        coarse, colon, fine = label.partition(":")
        if not colon or not fine or not text.strip() or coarse not in spec.label_names:
            raise DataError(f"{path}:{lineno}: expected 'COARSE:fine question' with COARSE one of "
                            f"{', '.join(spec.label_names)}; found {line[:60]!r}. Fix or remove that line.")
        examples.append(Example(text.strip(), None, spec.label_names.index(coarse)))
    return examples


_ENTITY = re.compile(r"#(\d{1,5});")


def clean_agnews(text: str) -> str:
    """AG News marks line breaks with a backslash and keeps HTML entities as "#39;"; both the
    CSV and the hub copy do, so both are cleaned the same way."""
    return _ENTITY.sub(lambda m: chr(int(m.group(1))), text.replace("\\", " "))


def read_agnews_csv(path: Path, spec: FewShotSpec) -> list[Example]:
    """``"class","title","description"`` without a header; class 1..4. Text = title + description."""
    examples = []
    # newline="" hands the csv module each line with its own ending, as open(newline="") does
    with io.StringIO(read_data_text(path, _missing(path, spec)), newline="") as f:
        reader = csv.reader(f)
        for row in reader:
            lineno = reader.line_num
            if len(row) != 3:
                raise DataError(f"{path}:{lineno}: expected 3 comma-separated quoted fields (class, title, "
                                f"description), found {len(row)}. Fix or remove that line.")
            if not re.fullmatch(r"[1-4]", row[0].strip()):
                raise DataError(f"{path}:{lineno}: class {row[0]!r} is not 1..4 (World, Sports, Business, Sci/Tech)")
            examples.append(Example(clean_agnews(f"{row[1]} {row[2]}"), None, int(row[0]) - 1))
    if not examples:
        raise DataError(f"{path}: no rows; expected the ag_news_csv test.csv")
    return examples


def split_pool(examples: Sequence[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """(pool, rest): a seeded ``fraction`` of the examples and the disjoint remainder, each in file order."""
    if not 0 < fraction < 1:
        raise ValueError(f"pool fraction must be in (0, 1), got {fraction}")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_pool = round(len(order) * fraction)
    in_pool = set(order[:n_pool])
    return ([x for i, x in enumerate(examples) if i in in_pool],
            [x for i, x in enumerate(examples) if i not in in_pool])


def _label_id(raw: Any, n: int) -> int | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, str) and re.fullmatch(r"\d+", raw.strip()):
        raw = int(raw)
    return raw if isinstance(raw, int) and 0 <= raw < n else None


def rows_to_examples(rows: Sequence[dict[str, Any]], spec: FewShotSpec, where: str) -> list[Example]:
    """Hub rows (dicts) to examples; label ids are the hub's ClassLabel ids, which are
    ``spec.label_names`` in order."""
    a, b = spec.fields
    label_keys = (spec.label_field, "label-coarse") if spec.name == "trec" else (spec.label_field,)
    examples = []
    for i, row in enumerate(rows):
        raw = next((row[key] for key in label_keys if key in row), None)
        label = _label_id(raw, spec.num_labels)
        text_a, text_b = row.get(a), row.get(b) if b else None
        if label is None or not isinstance(text_a, str) or (b and not isinstance(text_b, str)):
            raise DataError(f"{where}: row {i} is malformed (fields {a}{', ' + b if b else ''} must be strings, "
                            f"{spec.label_field} an id 0..{spec.num_labels - 1}; got {spec.label_field}={raw!r})")
        if spec.name == "agnews":
            text_a = clean_agnews(text_a)
        examples.append(Example(text_a, text_b, label))
    return examples


def _check_hub_names(dataset: Any, spec: FewShotSpec, where: str) -> None:
    """When the hub dataset declares class names, they must be the spec's, in the same order."""
    feature = getattr(dataset, "features", None)
    feature = feature.get(spec.label_field) if isinstance(feature, dict) else None
    names = getattr(feature, "names", None)
    if names is not None and tuple(n.lower() for n in names) != tuple(n.lower() for n in spec.label_names):
        raise DataError(f"{where}: class names {names} differ from the expected {spec.label_names}; "
                        "the hub dataset has changed, so its label ids cannot be trusted")


def _hub_rows(spec: FewShotSpec, split: str, limit: int | None, seed: int) -> list[dict[str, Any]]:
    dataset = load_hub_split(spec.hub_path, spec.hub_config, split,
                             fix="Check the network and the dataset id (FewShotSpec.hub_path).")
    _check_hub_names(dataset, spec, f"{spec.hub_path} split {split}")
    if limit is not None and len(dataset) > limit:
        keep = sorted(random.Random(seed).sample(range(len(dataset)), limit))
        dataset = dataset.select(keep) if hasattr(dataset, "select") else [dataset[i] for i in keep]
    return list(dataset)


def _hub_only(spec: FewShotSpec, data_dir: Path) -> DataError:
    why, fix = {
        "emoc": ("EmoContext's terms limit its use to SemEval-2019 Task 3 work, so no copy is kept in the data "
                 "directory", ", where its terms allow the use"),
        "amazon": ("the Amazon Reviews Polarity release (1.6 GB train, 177 MB test) is not in the data directory",
                   "; a seeded 20,000 / 10,000-row subset of train / test is used"),
    }[spec.name]
    return DataError(f"{spec.display} has no offline files: {why} (see {data_dir / spec.name / 'MISSING.md'}). "
                     f"Run without --data-dir to load it from the hub ({spec.hub_path}){fix}.")


def load_fewshot(name: str, data_dir: str | Path | None = None, split_seed: int = 0,
                 pool_fraction: float = AGNEWS_POOL_FRACTION) -> dict[str, Any]:
    """``{"train_pool": [...], "test": [...], "notes": [...]}`` for a few-shot task.

    ``train_pool`` is what ``fewshot_samples`` draws the k-shot training set from; ``test`` is
    evaluated whole. With ``data_dir`` the release files are read (SST-2: glue/SST-2
    train.tsv / dev.tsv; TREC: trec/train_5500.label / TREC_10.label; AG News:
    ag_news/test.csv divided by ``pool_fraction`` and ``split_seed``); without it the hub."""
    spec = get_spec(name)
    notes: list[str] = []
    if data_dir is not None:
        root = Path(data_dir)
        if spec.name == "sst2":
            data = read_sst2(root)
            pool, test = data["train_pool"], data["test"]
        elif spec.name == "trec":
            pool = read_trec(root / "trec/train_5500.label", spec)
            test = read_trec(root / "trec/TREC_10.label", spec)
        elif spec.name == "agnews":
            pool, test = split_pool(read_agnews_csv(root / "ag_news/test.csv", spec), pool_fraction, split_seed)
            notes.append(f"{spec.display}: no train split offline (ag_news/SOURCE.md); the training pool is a "
                         f"seeded {pool_fraction:.0%} of test.csv ({len(pool)} examples, split_seed {split_seed}), "
                         f"evaluated on the disjoint rest ({len(test)})")
        else:
            raise _hub_only(spec, root)
    else:
        pool_split, test_split = spec.hub_splits
        pool_limit, test_limit = spec.hub_limits
        pool = rows_to_examples(_hub_rows(spec, pool_split, pool_limit, split_seed), spec, spec.hub_path)
        test = rows_to_examples(_hub_rows(spec, test_split, test_limit, split_seed), spec, spec.hub_path)
        for split, limit in zip(spec.hub_splits, spec.hub_limits):
            if limit is not None:
                notes.append(f"{spec.display}: hub split '{split}' cut to a seeded subset of at most {limit} rows "
                             f"(split_seed {split_seed})")
    return {"train_pool": pool, "test": test, "notes": notes}



# --- registration ---------------------------------------------------------------------------------

FEWSHOT_TASKS = ("sst2", "trec", "agnews", "emoc", "amazon")


def make_classification_splits(name: str, data_dir: Path | None, cfg: Any) -> TaskSplits:
    """Train (the pool minus a held-out validation part), validation and test, fixed by split_seed."""
    raw = load_fewshot(name, data_dir, cfg.split_seed)
    pool = list(raw["train_pool"])
    random.Random(cfg.split_seed).shuffle(pool)
    validation, train = hold_out_validation(pool, cfg)
    test = raw["test"]
    notes = list(raw["notes"])
    if cfg.max_eval_examples is not None and cfg.max_eval_examples < len(test):
        test = random.Random(cfg.split_seed).sample(test, cfg.max_eval_examples)
        notes.append(f"{get_spec(name).display}: test capped at {len(test)} of {len(raw['test'])} examples "
                     "(--max-eval-examples)")
    return TaskSplits(train=train, validation=validation, test=test, notes=notes)


def k_shot_splits(spec: FewShotSpec, data_dir: Path | None, cfg: Any, seed: int) -> TaskSplits:
    """The seed's k-shot sample (``cfg.k_shot`` per class) and its validation sample from the
    task's training pool; the test set whole, or capped by ``max_eval_examples``."""
    raw = load_fewshot(spec.name, data_dir, cfg.split_seed)
    train, validation, sample_notes = fewshot_samples(raw["train_pool"], spec.num_labels, int(cfg.k_shot), seed)
    notes = [f"{spec.display}: {n}" for n in sample_notes] + list(raw["notes"])
    test = raw["test"]
    cap = cfg.max_eval_examples
    if cap is not None and cap < len(test):
        test = random.Random(cfg.split_seed).sample(test, cap)
        notes.append(f"{spec.display}: test capped at {len(test)} of {len(raw['test'])} examples "
                     "(--max-eval-examples)")
    return TaskSplits(train=train, validation=validation, test=test, notes=notes)


def with_k_shot(task: Task, spec: FewShotSpec) -> Task:
    """``task`` with its few-shot pattern: with ``data.k_shot`` set, its splits are the k-shot sample."""
    full = task.splits

    def splits(data_dir: Path | None, cfg: Any, seed: int = 0) -> TaskSplits:
        return full(data_dir, cfg, seed) if cfg.k_shot is None else k_shot_splits(spec, data_dir, cfg, seed)

    return replace(task, splits=splits, fewshot=spec)


def register_tasks() -> None:
    """TREC, AG News, EmoC and Amazon as classification tasks, and the few-shot pattern of each
    (SST-2 is already the GLUE task). With an encoder they train a classification head on their
    pool like any GLUE task; with ``data.k_shot`` and a decoder LM they run prompt-based few-shot."""
    for name in FEWSHOT_TASKS:
        spec = SPECS[name]
        task = TASKS.get(name) or Task(
            name=name, display=spec.display, help=spec.help or f"{spec.display} classification",
            kind="classification", label_names=tuple(spec.label_names), score=score_accuracy,
            selection_metric="accuracy", report_columns=("accuracy",),
            splits=lambda data_dir, cfg, seed=0, _name=name: make_classification_splits(_name, data_dir, cfg))
        register(with_k_shot(task, spec))
