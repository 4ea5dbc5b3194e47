"""What a task is: data plus a fixed set of hooks, as lm-evaluation-harness's tasks are.

A task declares its splits (clean, adversarial, and sets made against the trained model),
how an example reads as a prompt, how predictions are scored, which metric selects the
epoch (higher is better), and which columns the report shows. It never touches a model: the
model-facing half of a trial is its kind (``pefteval.kinds``). Task families read their local
data files and hub splits through the helpers here (``read_data_text``, ``read_data_bytes``,
``load_hub_split``), which give one clear DataError for a bad file and let ``track_data_reads``
record what a trial's data came from. This module imports nothing of pefteval but ``errors`` and
``metrics``, so every task family can build on it without a cycle.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pefteval.errors import DataError
from pefteval.metrics import accuracy


@dataclass(frozen=True)
class Example:
    """One classification input (a sentence, or a pair) with its class id."""

    text_a: str
    text_b: str | None
    label: int


@dataclass(frozen=True)
class QAExample:
    """One SQuAD-style question: gold answers as texts with character offsets into context."""

    id: str
    question: str
    context: str
    answers: tuple[str, ...]
    answer_starts: tuple[int, ...]
    title: str = ""


@dataclass
class TaskSplits:
    train: list[Any]
    validation: list[Any]
    test: list[Any]
    adversarial: dict[str, list[Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    train_source: str = "train"  # "train", or "dev" when a dev split was divided
    # sets that depend on the trained model (AddAny): name -> the source examples to attack
    model_attacks: dict[str, list[Any]] = field(default_factory=dict)
    attack_pool: list[Any] = field(default_factory=list)  # passages the attacks draw common words from
    attack_source_key: str = ""  # identifies the attacks' source data in their cache key

    def eval_splits(self) -> dict[str, list[Any]]:
        return {"validation": self.validation, "test": self.test, **self.adversarial}


@dataclass
class Scored:
    """One split's score: the aggregate metrics and each example's own score (None where an
    example cannot be judged, e.g. a broken gold SQL query)."""

    metrics: dict[str, Any]
    per_example: list[float | None]


@dataclass(frozen=True)
class Prompting:
    """How a decoder reads an example and answers: ``render`` gives the user text (wrapped in the
    tokenizer's chat template when it has one, else followed by ``plain_suffix``), ``target`` the
    text the model learns (after ``answer_prefix`` when there is no chat template), ``shorten``
    cuts a training prompt that does not fit (else such an example is left out), and ``parse``
    turns a generation into the prediction."""

    render: Callable[..., str]
    target: Callable[[Any], str]
    plain_suffix: str = "\n"
    answer_prefix: str = ""
    shorten: Callable[[Any, Any, int], str] | None = None
    parse: Callable[[str], str] = str.strip
    # the paper's LoRA targets for decoders (attention, MLP, embeddings, LM head) unless the
    # method names its own; False keeps peft's defaults
    paper_lora_targets: bool = True


@dataclass(frozen=True)
class Task:
    """A task: its data, its prompts and its scorer.

    ``kind`` is the shape of its data: ``classification`` (class labels), ``qa`` (SQuAD-style
    questions; extractive with an encoder, generative with a decoder), ``generation``
    (prompt -> target text) or ``instruct`` (instruction tuning, evaluated on multi-turn
    conversations judged after the sweep). ``splits(data_dir, data_config, seed)`` draws the trial's splits
    (the seed matters only for a k-shot sample). ``score(predictions, examples, adversarial)``
    scores one split. ``selection_metric`` is the key of the metric that selects the epoch;
    ``metric_name`` names it in the validation curve."""

    name: str
    display: str
    help: str
    kind: Literal["classification", "qa", "generation", "instruct"]
    splits: Callable[[Path | None, Any, int], TaskSplits]
    score: Callable[[Sequence[Any], Sequence[Any], bool], Scored]
    selection_metric: str
    metric_name: str = ""
    label_names: tuple[str, ...] = ()
    adversarial: tuple[str, ...] = ()
    prompting: Prompting | None = None
    fewshot: Any = None  # a FewShotSpec: the label-word pattern used when data.k_shot is set
    # a set generated against the trained model after training (one of ``splits.model_attacks``):
    # (name, splits, predictor, data config) -> its examples, evaluated like the others
    late_split: Callable[[str, TaskSplits, Any, Any], list[Any]] | None = None
    report_columns: tuple[str, ...] = ()  # metric keys the report shows for this task, main first
    column_names: dict[str, str] = field(default_factory=dict)  # how the report names those metrics
    short_names: dict[str, str] = field(default_factory=dict)  # compact column headers of its adversarial sets

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def curve_metric(self) -> str:
        return self.metric_name or self.selection_metric


TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
    TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise KeyError(f"unknown task '{name}'; known: {', '.join(TASKS)}")
    return TASKS[name]


# --- shared by the task families --------------------------------------------------------------

def score_accuracy(predictions: Sequence[int], examples: Sequence[Any], adversarial: bool = False) -> Scored:
    """Accuracy of predicted class ids against ``example.label``."""
    if len(predictions) != len(examples):
        raise ValueError(f"{len(predictions)} predictions for {len(examples)} labels")
    labels = [x.label for x in examples]
    hits = [float(p == y) for p, y in zip(predictions, labels)]
    return Scored({"accuracy": accuracy(predictions, labels), "n": len(examples)}, hits)


def shuffled(items: Sequence[Any], seed: int) -> list[Any]:
    out = list(items)
    random.Random(seed).shuffle(out)
    return out


def hold_out_validation(pool: list[Any], cfg: Any) -> tuple[list[Any], list[Any]]:
    """(validation, train) from an already shuffled training pool: ``validation_size`` (a
    fraction below 1, else a count) capped at ``max_validation_examples`` and leaving at least
    one example each side; train is the rest, capped at ``max_train_examples``."""
    n_val = int(cfg.validation_size * len(pool)) if cfg.validation_size < 1 else int(cfg.validation_size)
    if cfg.max_validation_examples is not None:
        n_val = min(n_val, cfg.max_validation_examples)
    n_val = max(1, min(n_val, len(pool) - 1))
    validation, train = pool[:n_val], pool[n_val:]
    if cfg.max_train_examples is not None:
        train = train[: cfg.max_train_examples]
    return validation, train


# --- reading local data files -----------------------------------------------------------------
#
# Every task reads its local input files through these helpers, so that a bad file (absent, a
# folder, unreadable, not UTF-8) gives one DataError naming it and the fix, a UTF-8 byte-order mark
# (Excel and Notepad write one) is accepted everywhere, and ``track_data_reads`` sees every file a
# trial's data came from.

_UTF8_BOM = b"\xef\xbb\xbf"
# the read trackers now active, innermost last: a context variable rather than a global list, so a
# tracker opened in one thread or asyncio task does not collect another's reads
_TRACKERS: ContextVar[tuple[dict[str, str], ...]] = ContextVar("pefteval_data_reads", default=())


@contextmanager
def track_data_reads() -> Iterator[dict[str, str]]:
    """A dict of the data a block read, for a fingerprint that shows on resume whether it changed.

    While the block runs, each local data file read through this module (and each SQLite database
    a split points at) adds ``{str(path.resolve()): "sha256:<hex>"}``, the hash of the bytes read,
    and each hub split ``{"hub:<path>[/<config>]:<split>": <the dataset's _fingerprint>}``. An entry
    is added once, at the first read. Trackers nest: a read inside an inner block is also recorded
    by every outer one. Reads in other threads are not seen (each thread has its own context)."""
    reads: dict[str, str] = {}
    token = _TRACKERS.set((*_TRACKERS.get(), reads))
    try:
        yield reads
    finally:
        _TRACKERS.reset(token)


def _record(key: str, value: Callable[[], str]) -> None:
    """Add ``key`` to the active trackers; ``value`` is only computed when one still lacks it."""
    missing = [reads for reads in _TRACKERS.get() if key not in reads]
    if missing:
        computed = value()
        for reads in missing:
            reads[key] = computed


def file_sha256(path: str | os.PathLike) -> str:
    """``"sha256:<hex>"`` of a file's bytes, read in 1 MiB blocks so a large file is never held whole."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def record_data_file(path: Path) -> None:
    """Record a data file that is used without being read here (a SQLite database queried when
    scoring) in the active trackers; a no-op when none is active, so nothing is hashed in vain."""
    _record(str(path.resolve()), lambda: file_sha256(path))


def read_data_bytes(path: Path, missing: DataError | None = None) -> bytes:
    """The bytes of a local data file, recorded by the active trackers. ``missing`` is raised when
    it is absent (default: a plain "not found"); a folder in its place, or a file the OS will not
    read, gives a DataError saying so."""
    try:
        data = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):  # NotADirectoryError: a parent is a file
        raise missing or DataError(f"data file not found: {path}") from None
    except IsADirectoryError:
        raise DataError(f"{path} is a directory, not a file: put the data file itself at this path "
                        "(a download or unzip may have made a folder of that name)") from None
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err.strerror or err}); check its permissions "
                        "(it must be readable by this user)") from None
    _record(str(path.resolve()), lambda: f"sha256:{hashlib.sha256(data).hexdigest()}")
    return data


def read_data_text(path: Path, missing: DataError | None = None, fallback_encoding: str | None = None) -> str:
    """A local data file as text: UTF-8, a leading byte-order mark dropped (what ``utf-8-sig``
    does). A file that is not UTF-8 is a DataError naming the line and column of its first bad
    byte, unless ``fallback_encoding`` is given: then it is decoded with that instead (TREC's
    original release holds one Latin-1 byte, which must keep loading). Line endings are kept as
    they are; ``missing`` as in :func:`read_data_bytes`."""
    data = read_data_bytes(path, missing).removeprefix(_UTF8_BOM)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        if fallback_encoding is not None:
            return data.decode(fallback_encoding)
        line = data.count(b"\n", 0, err.start) + 1
        line_start = data.rfind(b"\n", 0, err.start) + 1
        column = len(data[line_start:err.start].decode("utf-8")) + 1  # the text before the bad byte is valid
        raise DataError(f"{path} line {line}: not UTF-8 (byte 0x{data[err.start]:02x} at column {column}); "
                        "re-save the file as UTF-8") from None


def read_json_file(path: Path, missing: DataError) -> Any:
    """A release's JSON file, parsed; ``missing`` is raised when it is absent, and invalid JSON names
    its line and column."""
    try:
        return json.loads(read_data_text(path, missing))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})") from None


def load_hub_split(path: str, config: str | None, split: str,
                   fix: str = "Offline, pass --data-dir with the release files.") -> Any:
    """One split of a hub dataset (a ``datasets.Dataset``), recorded by the active trackers under
    ``hub:<path>[/<config>]:<split>`` with its ``_fingerprint`` ("unknown" for an object without
    one, such as a streamed dataset). A failure is a DataError naming the split, followed by ``fix``."""
    import datasets  # only when reading from the hub: datasets is slow to import

    name = f"{path}/{config}" if config else path
    try:
        dataset = datasets.load_dataset(path, config, split=split)
    except Exception as err:  # noqa: BLE001 - network and hub errors come in many types
        raise DataError(f"could not load {name} split {split} from the hub ({type(err).__name__}: {err}). "
                        f"{fix}") from None
    _record(f"hub:{name}:{split}", lambda: str(getattr(dataset, "_fingerprint", None) or "unknown"))
    return dataset


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """--data-dir, else $PEFTEVAL_DATA_DIR, else None (read from the hub)."""
    chosen = data_dir if data_dir is not None else os.environ.get("PEFTEVAL_DATA_DIR") or None
    if chosen is None:
        return None
    path = Path(chosen).expanduser()
    if not path.is_dir():
        origin = "--data-dir" if data_dir is not None else "PEFTEVAL_DATA_DIR"
        raise DataError(f"data directory not found: {path} (from {origin}). Point it at a folder laid out as "
                        "<dataset>/<file> (e.g. glue/SST-2/train.tsv), or omit it to read from the hub.")
    return path
