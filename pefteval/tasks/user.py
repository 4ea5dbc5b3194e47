"""Tasks of one's own, defined in YAML files, as lm-evaluation-harness's ``--include_path``.

``pefteval run CONFIG --include-path DIR`` (or ``include_path:`` in the experiment YAML) reads
every ``*.yaml`` / ``*.yml`` file of DIR that holds a ``task:`` or ``kind:`` key as a task
definition (other YAML files, such as an experiment config kept beside them, are not task
definitions and are passed over). A definition is validated field by field like an experiment
config (an unknown key, a wrong type: the file, the line and the YAML path), then built into a
:class:`~pefteval.tasks.base.Task` registered in ``TASKS`` like the built-in ones:

- ``kind: classification``: one text field (``text_field``) or a pair (``text_fields: [a, b]``),
  a label field and ``label_names``; trained with a classification head, or, with an optional
  ``fewshot: {pattern, label_words}``, prompt-based few-shot on a decoder when ``data.k_shot`` is set
  (the k-shot sample of ``pefteval.tasks.fewshot``).
- ``kind: generation``: a ``prompt`` template with ``{field}`` placeholders, a ``target_field`` and a
  ``metric``: ``exact_match``, ``final_number`` (GSM8K's answer extraction), ``squad_f1`` (SQuAD's
  normalised F1, EM beside it) or ``rouge_l``.

Data comes from local files (``data_files: {train, validation, test}``; CSV, TSV, JSON, JSON Lines
or Parquet by suffix; relative paths from the definition's folder) or a hub dataset (``dataset``,
``dataset_config``, ``splits``), read through ``pefteval.tasks.base``'s readers so that a trial's
data fingerprint holds them (and the definition file itself: editing a definition is a data change
on resume). A label is a label name, or else an integer index into ``label_names``. Without a
validation split, validation is held out from train as for the built-in tasks
(``generation.make_generation_splits``, which calls ``base.hold_out_validation``).

Trial processes read ``trial.json``, whose ``include_path`` names the folder a user task came from,
and call :func:`register_include_paths` before the trial runs. docs/tasks.md has the key reference.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import re
import string
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from pydantic import BeforeValidator, Field, ValidationError

from pefteval.config import _Strict, format_validation_error, read_utf8, resolve_include_paths
from pefteval.errors import ConfigError, DataError, UserError
from pefteval.metrics import rouge_l
from pefteval.tasks.base import (
    TASKS,
    Example,
    Scored,
    Task,
    TaskSplits,
    load_hub_split,
    read_data_bytes,
    read_data_text,
    record_data_file,
    register,
    score_accuracy,
)
from pefteval.tasks.fewshot import FewShotSpec, fewshot_samples
from pefteval.tasks.generation import PROMPTING, GenExample, make_generation_splits
from pefteval.tasks.gsm8k import extract_gsm8k_answer
from pefteval.tasks.squad.metrics import squad_scores

# --- the definition's schema ----------------------------------------------------------------------


class _Definition(_Strict):
    """Unknown keys and inf/nan refused, as in experiment configs."""


def _names_as_text(value: Any) -> Any:
    """Label names given as integers (a star rating: ``[1, 2, 3, 4, 5]``) are those names as text."""
    if isinstance(value, list):
        return [str(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
    return value


LabelNames = Annotated[list[str], BeforeValidator(_names_as_text)]


class DataFiles(_Definition):
    """Local files, one per split; relative paths are read from the definition's folder."""

    train: str
    validation: Optional[str] = None
    test: str


class HubSplits(_Definition):
    """Split names of a hub dataset."""

    train: str = "train"
    validation: Optional[str] = None
    test: str = "test"


class FewShotPattern(_Definition):
    """Prompt-based few-shot (with ``data.k_shot``): ``pattern`` holds each text field as ``{field}`` and
    ends with ``" {label}"``; one label word per label name (default: the label names)."""

    pattern: str
    label_words: Optional[LabelNames] = None
    separator: str = "\n"


class _TaskDefinition(_Definition):
    task: str
    display: Optional[str] = None
    help: Optional[str] = None
    data_files: Optional[DataFiles] = None
    dataset: Optional[str] = None
    dataset_config: Optional[str] = None
    splits: Optional[HubSplits] = None


class ClassificationDefinition(_TaskDefinition):
    kind: Literal["classification"]
    text_field: Optional[str] = None
    text_fields: Optional[list[str]] = None
    label_field: str
    label_names: LabelNames = Field(min_length=2)
    fewshot: Optional[FewShotPattern] = None

    @property
    def fields(self) -> tuple[str, str | None]:
        names = self.text_fields if self.text_fields is not None else [self.text_field]
        return (names[0], names[1] if len(names) > 1 else None)  # type: ignore[return-value]


class GenerationDefinition(_TaskDefinition):
    kind: Literal["generation"]
    prompt: str
    target_field: str
    metric: Literal["exact_match", "final_number", "squad_f1", "rouge_l"]
    id_field: Optional[str] = None


TaskDefinition = Union[ClassificationDefinition, GenerationDefinition]
DEFINITIONS: dict[str, type[_TaskDefinition]] = {"classification": ClassificationDefinition,
                                                 "generation": GenerationDefinition}
FORMATS = {".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "jsonl", ".parquet": "parquet"}
TASK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


# --- reading a definition file --------------------------------------------------------------------


@dataclass(frozen=True)
class DefinitionFile:
    """A definition file's parsed YAML nodes, to name the line of a YAML path in its errors."""

    path: Path
    root: yaml.Node | None

    def line(self, loc: tuple[Any, ...]) -> int | None:
        """The line of ``loc`` (the key itself where the last part is a mapping key), or of the
        deepest part of it that exists (a missing field: the mapping that lacks it)."""
        node = self.root
        if node is None:
            return None
        line = node.start_mark.line + 1
        for part in loc:
            if isinstance(node, yaml.MappingNode) and isinstance(part, str):
                match = next(((k, v) for k, v in node.value if k.value == part), None)
                if match is None:
                    break
                line, node = match[0].start_mark.line + 1, match[1]
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
                node = node.value[part]
                line = node.start_mark.line + 1
            else:
                break
        return line

    def error(self, loc: tuple[Any, ...], message: str) -> ConfigError:
        """One error in the layout of ``config.format_validation_error``: file, line, YAML path."""
        path = ""
        for part in loc:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        line = self.line(loc)
        where = f"line {line}, {path or '(top level)'}" if line is not None else path or "(top level)"
        return ConfigError(f"{self.path}: invalid task definition\n  {where}: {message}")


def read_definition(path: Path) -> tuple[TaskDefinition, DefinitionFile] | None:
    """The task definition in ``path``, validated; None for a YAML file that is not one (no ``task``
    and no ``kind`` key: an experiment config beside the definitions, say)."""
    text = read_utf8(path)
    try:
        data = yaml.safe_load(text)
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict) or not ({"task", "kind"} & set(data)):
        return None
    source = DefinitionFile(path, root)
    kind = data.get("kind")
    if kind not in DEFINITIONS:
        message = "required field missing; add it" if "kind" not in data else f"unknown kind {kind!r}"
        raise source.error(("kind",), f"{message} (kind: classification or kind: generation)")
    model = DEFINITIONS[kind]
    try:
        definition = model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, str(path), model, "task definition", source.line)) from None
    _check(definition, source)  # type: ignore[arg-type]
    return definition, source  # type: ignore[return-value]


def data_path(source: DefinitionFile, value: str) -> Path:
    """A ``data_files`` entry: absolute, or relative to the definition's folder."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else source.path.parent / path


def _placeholders(template: str, source: DefinitionFile, loc: tuple[str, ...]) -> list[str]:
    """The ``{field}`` names of a template (at ``loc`` in the definition), in order; positional ``{}``,
    ``{0}``, attribute or index access, conversions and format specs are refused (``{{`` and ``}}``
    are literal braces)."""
    try:
        pieces = list(string.Formatter().parse(template))
    except ValueError as err:
        raise source.error(loc, f"not a valid template ({err}); write {{field}} for a field, {{{{ and }}}} for "
                                "braces") from None
    names = []
    for _literal, name, spec, conversion in pieces:
        if name is None:
            continue
        if not re.fullmatch(r"[A-Za-z_][\w-]*", name) or spec or conversion:
            raise source.error(loc, f"placeholder {{{name}{'!' + conversion if conversion else ''}"
                                    f"{':' + spec if spec else ''}}} is not a field name; write {{field}} "
                                    "with the name of a column of the data")
        names.append(name)
    return names


def _check(definition: TaskDefinition, source: DefinitionFile) -> None:
    """What the schema alone cannot say: the name, one data source, files that exist, the fields."""
    if not TASK_NAME.fullmatch(definition.task):
        raise source.error(("task",), f"task name {definition.task!r}: use letters, digits, '_', '.' and '-' "
                                      "(starting with a letter or digit), e.g. task: my_reviews")
    if (definition.data_files is None) == (definition.dataset is None):
        raise source.error(("dataset",) if definition.data_files else (),
                           "give the data either as data_files: {train: ..., test: ...} (local files) or as "
                           "dataset: owner/name (a hub dataset), not " + ("both" if definition.data_files else
                                                                          "neither"))
    if definition.dataset is None:
        for key in ("splits", "dataset_config"):
            if getattr(definition, key) is not None:
                raise source.error((key,), f"{key} names a part of a hub dataset; it needs dataset: owner/name "
                                           "(for local files, name them in data_files)")
    if definition.data_files is not None:
        for split, value in definition.data_files.model_dump(exclude_none=True).items():
            path = data_path(source, value)
            if path.suffix.lower() not in FORMATS:
                raise source.error(("data_files", split), f"{value}: unknown data format {path.suffix!r}; name a "
                                                          f"{', '.join(FORMATS)} file")
            if not path.is_file():
                where = "" if Path(value).expanduser().is_absolute() else f" (relative paths are read from " \
                                                                          f"{source.path.parent})"
                raise source.error(("data_files", split), f"data file not found: {path}{where}; fix the path or "
                                                          "put the file there")
    if isinstance(definition, ClassificationDefinition):
        _check_classification(definition, source)
    else:
        _check_generation(definition, source)


def _check_classification(definition: ClassificationDefinition, source: DefinitionFile) -> None:
    if (definition.text_field is None) == (definition.text_fields is None):
        raise source.error(("text_field",), "give the input as text_field: COLUMN (one text) or text_fields: "
                                            "[A, B] (a pair), not " + ("both" if definition.text_field else "neither"))
    fields = definition.text_fields if definition.text_fields is not None else [definition.text_field]
    if definition.text_fields is not None and (not 1 <= len(fields) <= 2 or len(set(fields)) != len(fields)):
        raise source.error(("text_fields",), f"{fields}: one or two distinct columns (a text, or a pair)")
    if definition.label_field in fields:
        raise source.error(("label_field",), f"{definition.label_field!r} is also a text field; the label needs "
                                             "a column of its own")
    names = definition.label_names
    if len(set(names)) != len(names) or any(not n.strip() for n in names):
        raise source.error(("label_names",), f"{names}: label names must be distinct and non-empty")
    if definition.fewshot is not None:
        _check_pattern(definition, source)


def _check_pattern(definition: ClassificationDefinition, source: DefinitionFile) -> None:
    fewshot = definition.fewshot
    assert fewshot is not None
    a, b = definition.fields
    names = _placeholders(fewshot.pattern, source, ("fewshot", "pattern"))
    wanted = [a] if b is None else [a, b]
    if "label" in wanted:
        raise source.error(("fewshot", "pattern"), "{label} is the label slot of a pattern; a text field named "
                                                   "'label' cannot be a placeholder: rename that column")
    unknown = [n for n in names if n not in (*wanted, "label")]
    if unknown or sorted(n for n in names if n != "label") != sorted(wanted) or names.count("label") != 1 \
            or not fewshot.pattern.endswith(" {label}"):
        raise source.error(("fewshot", "pattern"),
                           f"{fewshot.pattern!r}: a pattern holds each text field once ("
                           f"{', '.join('{' + w + '}' for w in wanted)}) and ends with ' {{label}}' (the label "
                           "word follows one space), e.g. \"Review: {" + a + "} Sentiment: {label}\"")
    words = fewshot.label_words if fewshot.label_words is not None else definition.label_names
    if len(words) != len(definition.label_names) or len(set(words)) != len(words):
        raise source.error(("fewshot", "label_words"), f"{words}: one distinct label word per label name "
                                                       f"({', '.join(definition.label_names)})")


def _check_generation(definition: GenerationDefinition, source: DefinitionFile) -> None:
    names = _placeholders(definition.prompt, source, ("prompt",))
    if not names:
        raise source.error(("prompt",), "the prompt has no {field} placeholder, so every example would read the "
                                        "same; put the input column(s) in it, e.g. \"Question: {question}\"")
    if definition.target_field in names:
        raise source.error(("prompt",), f"the prompt shows the target field {{{definition.target_field}}}, the "
                                        "answer the model must produce; leave it out of the prompt")


# --- reading the data -----------------------------------------------------------------------------


def _text(value: Any) -> str | None:
    """A cell as text: strings as they are, numbers as they read (2.0 as "2"), so that every format
    gives the same examples; None for an empty cell (null) or a value that is not a scalar."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return str(int(value)) if value.is_integer() else repr(value)
    return None


Row = tuple[str, dict[str, Any]]  # (where it is, for errors: "FILE: row N (line L)"; its cells)


def _missing_file(path: Path, definition_path: Path) -> DataError:
    return DataError(f"data file not found: {path} (named in {definition_path}); fix data_files there or put the "
                     "file back")


def read_table(path: Path, missing: DataError | None = None) -> list[Row]:
    """The rows of a CSV, TSV, JSON (an array of objects), JSON Lines or Parquet file, by its suffix,
    each with where it is; read through ``tasks.base`` so the data fingerprint holds the file."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"{path}: unknown data format {path.suffix!r}; name a {', '.join(FORMATS)} file")
    if fmt == "parquet":
        data = read_data_bytes(path, missing)
        try:
            table = pq.read_table(pa.BufferReader(data))
        except Exception as err:  # noqa: BLE001 - pyarrow raises several types for a corrupt file
            raise DataError(f"{path}: not a readable Parquet file ({err})") from None
        rows = [(f"{path}: row {i}", row) for i, row in enumerate(table.to_pylist(), start=1)]
    elif fmt in ("csv", "tsv"):
        rows = _delimited(path, read_data_text(path, missing), "," if fmt == "csv" else "\t")
    elif fmt == "jsonl":
        rows = _json_lines(path, read_data_text(path, missing))
    else:
        try:
            data = json.loads(read_data_text(path, missing))
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})") from None
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON array of objects (one per example), found a "
                            f"{type(data).__name__}; for one object per line name the file .jsonl")
        rows = [(f"{path}: row {i}", row) for i, row in enumerate(data, start=1)]
    for where, row in rows:
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected an object of fields, found {type(row).__name__} {row!r:.60}")
    if not rows:
        raise DataError(f"{path}: no rows; a data file needs at least one example")
    return rows


def _delimited(path: Path, text: str, delimiter: str) -> list[Row]:
    """CSV or TSV with a header row, quoted as Excel, pandas and Python's csv module write it."""
    # newline="" hands the csv module each line with its own ending, as open(newline="") does
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = next(reader, None)
    if not header:
        raise DataError(f"{path}: no header row; the first line must name the columns")
    rows: list[Row] = []
    start = reader.line_num + 1
    for values in reader:
        if values:  # a blank line holds no example
            where = f"{path}: row {len(rows) + 1} (line {start})"
            if len(values) != len(header):
                sep = "comma" if delimiter == "," else "tab"
                raise DataError(f"{where}: {len(values)} {sep}-separated values, the header has {len(header)}; "
                                "quote a value that holds the separator, or fix that line")
            rows.append((where, dict(zip(header, values))))
        start = reader.line_num + 1
    return rows


def _json_lines(path: Path, text: str) -> list[Row]:
    rows: list[Row] = []
    # newline=None splits lines as open() does: str.splitlines would also split at U+2028 inside a string
    for number, line in enumerate(io.StringIO(text, newline=None), start=1):
        if not line.strip():
            continue
        where = f"{path}: row {len(rows) + 1} (line {number})"
        try:
            rows.append((where, json.loads(line)))
        except json.JSONDecodeError as err:
            raise DataError(f"{where}: not valid JSON ({err.msg}); each line must be one JSON object") from None
    return rows


def _hub_table(definition: TaskDefinition, split: str) -> list[Row]:
    name = f"{definition.dataset}/{definition.dataset_config}" if definition.dataset_config else definition.dataset
    dataset = load_hub_split(definition.dataset, definition.dataset_config, split,  # type: ignore[arg-type]
                             fix=f"Check the network and the dataset id and split names of task {definition.task}.")
    return [(f"{name} split {split}: row {i}", dict(row)) for i, row in enumerate(dataset, start=1)]


def _cell(where: str, row: dict[str, Any], field: str, role: str) -> str:
    """A non-empty text cell; a DataError naming the row and the field otherwise."""
    if field not in row:
        raise DataError(f"{where}: no field {field!r} ({role}); found {', '.join(map(str, row)) or 'none'}. "
                        "Fix the data or the definition's field names")
    value = _text(row[field])
    if value is None:
        raise DataError(f"{where}: field {field!r} ({role}) is {'empty' if row[field] is None else 'not text'} "
                        f"({row[field]!r:.60}); give it a value")
    if not value.strip():
        raise DataError(f"{where}: field {field!r} ({role}) is empty; give it a text or remove the row")
    return value


def label_id(value: Any, names: Sequence[str]) -> int | None:
    """A label cell's class id: a label name (surrounding spaces ignored), or else an integer index
    into ``names`` (``"1"``, ``1``, ``1.0``, ``"1.0"``: a whole number reads the same in every format);
    None for anything else. Names win: with label names ``["1", "2", "3"]`` the value ``"1"`` is the
    first label."""
    text = _text(value)
    if text is None:
        return None
    text = text.strip()
    if re.fullmatch(r"\d+\.0+", text):
        text = text.split(".")[0]
    if text in names:
        return list(names).index(text)
    if re.fullmatch(r"\d+", text) and int(text) < len(names):
        return int(text)
    return None


# --- the task -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UserTaskSource:
    """Where a registered user task came from: its definition file and the include path holding it."""

    file: Path
    directory: Path


# the tasks registered from include paths in this process: name -> where each came from
USER_TASKS: dict[str, UserTaskSource] = {}


def _split_rows(definition: TaskDefinition, source: DefinitionFile) -> dict[str, list[Row]]:
    """{"train", "test"[, "validation"]}: each split's rows, from the local files or the hub."""
    record_data_file(source.path)  # the definition decides what the rows mean: part of the data read
    if definition.data_files is not None:
        files = definition.data_files.model_dump(exclude_none=True)
        return {split: read_table(data_path(source, value), _missing_file(data_path(source, value), source.path))
                for split, value in files.items()}
    splits = (definition.splits or HubSplits()).model_dump(exclude_none=True)
    return {split: _hub_table(definition, name) for split, name in splits.items()}


def _examples(definition: ClassificationDefinition, rows: list[Row]) -> list[Example]:
    a, b = definition.fields
    names = definition.label_names
    out = []
    for where, row in rows:
        text_a = _cell(where, row, a, "text field")
        text_b = _cell(where, row, b, "text field") if b is not None else None
        if definition.label_field not in row:
            raise DataError(f"{where}: no field {definition.label_field!r} (label_field); found "
                            f"{', '.join(map(str, row))}. Fix the data or the definition's field names")
        label = label_id(row[definition.label_field], names)
        if label is None:
            raise DataError(f"{where}: field {definition.label_field!r} (label_field) holds "
                            f"{row[definition.label_field]!r:.60}, not a label: give one of the label_names "
                            f"({', '.join(names)}) or its index 0..{len(names) - 1}")
        out.append(Example(text_a, text_b, label))
    return out


def _gen_examples(definition: GenerationDefinition, rows: list[Row], split: str) -> list[GenExample]:
    names = list(dict.fromkeys(name for _, name, _, _ in string.Formatter().parse(definition.prompt) if name))
    out = []
    for i, (where, row) in enumerate(rows):
        values = {name: _cell(where, row, name, "a prompt field") for name in names}
        target = _cell(where, row, definition.target_field, "target_field")
        meta: dict[str, Any] = {}
        if definition.metric == "final_number":
            gold = extract_gsm8k_answer(target)
            if gold is None:
                raise DataError(f"{where}: field {definition.target_field!r} (target_field) holds no number "
                                f"({target!r:.60}); metric final_number compares the final number of each answer")
            meta["gold"] = gold
        example_id = _cell(where, row, definition.id_field, "id_field") if definition.id_field else f"{split}-{i}"
        out.append(GenExample(example_id, definition.prompt.format(**values), target.strip(), meta))
    return out


def _cap_test(test: list[Any], cfg: Any, display: str, notes: list[str]) -> list[Any]:
    cap = cfg.max_eval_examples
    if cap is not None and cap < len(test):
        notes.append(f"{display}: test capped at {cap} of {len(test)} examples (--max-eval-examples)")
        return random.Random(cfg.split_seed).sample(test, cap)
    return test


def _classification_task(definition: ClassificationDefinition, source: DefinitionFile) -> Task:
    display = definition.display or definition.task
    spec = None
    if definition.fewshot is not None:
        spec = FewShotSpec(
            definition.task, display, _spec_pattern(definition), tuple(definition.fewshot.label_words or
                                                                      definition.label_names),
            tuple(definition.label_names), definition.dataset or "", definition.dataset_config, ("train", "test"),
            definition.fields, label_field=definition.label_field, separator=definition.fewshot.separator)

    def splits(data_dir: Path | None, cfg: Any, seed: int = 0) -> TaskSplits:
        raw = {split: _examples(definition, rows) for split, rows in _split_rows(definition, source).items()}
        if cfg.k_shot is None or spec is None:
            return make_generation_splits(raw, cfg, display)
        # prompt-based few-shot: the seed's k-shot sample (and its validation sample) from train
        train, validation, sample_notes = fewshot_samples(raw["train"], spec.num_labels, int(cfg.k_shot), seed)
        notes = [f"{display}: {n}" for n in sample_notes]
        return TaskSplits(train=train, validation=validation, test=_cap_test(raw["test"], cfg, display, notes),
                          notes=notes)

    return Task(name=definition.task, display=display,
                help=definition.help or f"{' / '.join(f for f in definition.fields if f)} -> "
                                        f"{', '.join(definition.label_names)} ({source.path.name})",
                kind="classification", splits=splits, score=score_accuracy, selection_metric="accuracy",
                label_names=tuple(definition.label_names), fewshot=spec, report_columns=("accuracy",))


def _spec_pattern(definition: ClassificationDefinition) -> str:
    """The definition's pattern in ``FewShotSpec``'s slots: its text fields as {text} and {text_b}."""
    a, b = definition.fields
    slots = {a: "{text}", "label": "{label}", **({b: "{text_b}"} if b else {})}
    out = ""
    assert definition.fewshot is not None
    for literal, name, _spec, _conversion in string.Formatter().parse(definition.fewshot.pattern):
        out += literal.replace("{", "{{").replace("}", "}}") + (slots[name] if name is not None else "")
    return out


def _exact(prediction: str, target: str) -> float:
    """Exact match of the texts, whitespace runs read as one space."""
    return float(" ".join(prediction.split()) == " ".join(target.split()))


# metric -> (the name of its validation curve, the report's name of the main score)
GEN_METRICS: dict[str, tuple[str, str]] = {
    "exact_match": ("exact_match", "exact match"),
    "final_number": ("number_accuracy", "final-number accuracy"),
    "squad_f1": ("f1", "SQuAD F1"),
    "rouge_l": ("rouge_l", "ROUGE-L F1"),
}


def generation_scorer(metric: str) -> Callable[[Sequence[str], Sequence[GenExample], bool], Scored]:
    """A split's score under ``metric``: ``accuracy`` is the main score (the one that selects, as the
    built-in generation tasks name it); ``squad_f1`` also reports SQuAD's ``exact_match``."""
    def score(predictions: Sequence[str], examples: Sequence[GenExample], adversarial: bool = False) -> Scored:
        if len(predictions) != len(examples):
            raise ValueError(f"{len(predictions)} predictions for {len(examples)} examples")
        extra: dict[str, float] = {}
        if metric == "exact_match":
            hits = [_exact(p, x.target) for p, x in zip(predictions, examples)]
        elif metric == "final_number":
            hits = [float(extract_gsm8k_answer(p) == x.meta["gold"]) for p, x in zip(predictions, examples)]
        elif metric == "rouge_l":
            hits = [rouge_l(p, x.target) for p, x in zip(predictions, examples)]
        else:
            pairs = [squad_scores(p, [x.target]) for p, x in zip(predictions, examples)]
            hits = [f1 for _em, f1 in pairs]
            extra["exact_match"] = sum(em for em, _f1 in pairs) / len(pairs) if pairs else float("nan")
        mean = sum(hits) / len(hits) if hits else float("nan")
        return Scored({"accuracy": mean, **extra, "n": len(examples)}, list(hits))

    return score


def _generation_task(definition: GenerationDefinition, source: DefinitionFile) -> Task:
    display = definition.display or definition.task
    curve, name = GEN_METRICS[definition.metric]

    def splits(data_dir: Path | None, cfg: Any, seed: int = 0) -> TaskSplits:
        raw = {split: _gen_examples(definition, rows, split)
               for split, rows in _split_rows(definition, source).items()}
        return make_generation_splits(raw, cfg, display)

    columns = ("accuracy", "exact_match") if definition.metric == "squad_f1" else ("accuracy",)
    return Task(name=definition.task, display=display,
                help=definition.help or f"{definition.target_field} from a prompt, {name} ({source.path.name})",
                kind="generation", splits=splits, score=generation_scorer(definition.metric),
                selection_metric="accuracy", metric_name=curve, prompting=PROMPTING, report_columns=columns,
                column_names={"accuracy": name, "exact_match": "SQuAD EM"})


def build_task(definition: TaskDefinition, source: DefinitionFile) -> Task:
    if isinstance(definition, ClassificationDefinition):
        return _classification_task(definition, source)
    return _generation_task(definition, source)


# --- include paths --------------------------------------------------------------------------------


def config_include_paths(config: str | os.PathLike) -> list[Path]:
    """The ``include_path`` of an experiment YAML, relative paths taken from its folder; empty when the
    file cannot be read or holds none (loading the config then names what is wrong with it)."""
    path = Path(config)
    try:
        data = yaml.safe_load(read_utf8(path)) if path.is_file() else None
    except (UserError, yaml.YAMLError):
        return []
    if not isinstance(data, dict) or "include_path" not in data:
        return []
    value = resolve_include_paths(data["include_path"], path.parent)
    return [Path(p) for p in value if isinstance(p, str)] if isinstance(value, list) else []


def register_include_paths(paths: Iterable[str | os.PathLike], config: str | os.PathLike | None = None) -> list[str]:
    """Register the tasks defined in the YAML files of each folder of ``paths`` (and of the experiment
    YAML ``config``'s ``include_path``, when given); returns their names. Every definition is validated
    before any is registered. Registering a folder again is a no-op (its files replace their own tasks);
    a task name of a built-in task, or one defined by two files, is a ConfigError naming both."""
    folders = [Path(p).expanduser().resolve() for p in paths]
    if config is not None:
        folders += config_include_paths(config)
    found: dict[str, tuple[TaskDefinition, DefinitionFile, Path]] = {}
    for folder in dict.fromkeys(folders):
        if not folder.is_dir():
            what = "is a file" if folder.exists() else "does not exist"
            raise ConfigError(f"include path {folder} {what}: give a folder holding task definitions "
                              "(YAML files with task: and kind:), e.g. --include-path my_tasks/")
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".yaml", ".yml") and p.is_file())
        definitions = [d for d in map(read_definition, files) if d is not None]
        if not definitions:
            raise ConfigError(f"include path {folder}: no task definitions in it (YAML files with task: and "
                              f"kind:; found {len(files)} other YAML file(s)). See docs/tasks.md")
        for definition, source in definitions:
            _check_unique(definition.task, source, found)
            found[definition.task] = (definition, source, folder)
    for name, (definition, source, folder) in found.items():
        register(build_task(definition, source))
        USER_TASKS[name] = UserTaskSource(source.path, folder)
    return list(found)


def _check_unique(name: str, source: DefinitionFile,
                  found: dict[str, tuple[TaskDefinition, DefinitionFile, Path]]) -> None:
    if name in found:
        other = found[name][1]
        raise source.error(("task",), f"task {name!r} is also defined in {other.path} (line "
                                      f"{other.line(('task',))}); a task is defined once: rename one of them")
    if name in TASKS and name not in USER_TASKS:
        raise source.error(("task",), f"{name!r} is a built-in task; give yours another name (e.g. task: my_{name})")
    if name in USER_TASKS and USER_TASKS[name].file != source.path:
        raise source.error(("task",), f"task {name!r} is already defined in {USER_TASKS[name].file}; a task is "
                                      "defined once: rename one of them, or leave one folder out of the include path")


def include_path_of(task: str) -> list[str]:
    """What a trial of ``task`` carries in trial.json for its process to register: the folder its
    definition came from (nothing for a built-in task)."""
    source = USER_TASKS.get(task)
    return [str(source.directory)] if source is not None else []


def check_known_tasks(records: Iterable[dict[str, Any]], out: Path) -> None:
    """A report of ``out`` needs every trial's task registered (its kind, metrics and columns); a task
    of one's own that is not is a UserError naming --include-path and the folder its trials read."""
    records = list(records)
    unknown = sorted({r["config"]["task"] for r in records} - set(TASKS))
    if not unknown:
        return
    folders: list[str] = []
    for rec in records:
        if rec["config"]["task"] in unknown and rec.get("run_dir"):
            try:
                written = json.loads((out / rec["run_dir"] / "trial.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            folders += [p for p in written.get("include_path") or [] if p not in folders]
    hint = f" (its trials read their definitions from {', '.join(folders)})" if folders else ""
    raise UserError(f"{out} holds trials of task(s) {', '.join(unknown)}, which no built-in task or task definition "
                    f"given here provides; pass --include-path DIR with the folder of their definitions{hint}")
