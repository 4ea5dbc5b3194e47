"""Instruction-style generation tasks of Table 1: GSM8K, SQL generation and ViGGO.

Each example is a plain user prompt (a chat template is applied later, by the trainer) and
the target text the model learns to produce; ``meta`` carries what the metrics need
(``pefteval.gen_metrics``). Prompt templates are data on :class:`GenTaskSpec`.

Offline files, under a data directory:
- ``gsm8k/train.jsonl``, ``gsm8k/test.jsonl`` (fields ``question``, ``answer``); the target is
  the full answer text (reasoning with ``<<expr=value>>`` annotations, then ``#### N``).
- ``spider/``: Spider (``dev.json`` as test; ``train_spider.json`` or, failing that,
  ``train_spider_spidersyn.json`` as train; ``tables.json`` for schemas;
  ``database/<db_id>/<db_id>.sqlite``). The paper's SQL data is sql-create-context (question,
  CREATE TABLE context, SQL); Spider is put in that form: the context is built from
  ``tables.json`` (:func:`spider_schema_context`).
- ``viggo/{train,valid,test}.csv`` (columns ``mr``, ``ref``); the task is reversed as in the
  paper: the prompt holds the utterance, the target is the meaning representation.
From the hub: ``openai/gsm8k`` (config ``main``), ``b-mc2/sql-create-context`` (a single train
split; a seeded hold-out becomes the test split; no databases) and ``GEM/viggo``.
"""

from __future__ import annotations

import csv
import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pefteval.errors import DataError
from pefteval.gen_metrics import (
    VIGGO_ACTS,
    VIGGO_SLOTS,
    GoldQueryError,
    clean_sql_output,
    extract_gsm8k_answer,
    parse_mr,
    quote_identifier,
    sql_exact_match,
    sql_execution_match,
    viggo_exact_match,
    viggo_slot_scores,
)
from pefteval.tasks.base import Prompting, Scored, Task, TaskSplits, hold_out_validation, read_json_file, register


@dataclass(frozen=True)
class GenExample:
    """One prompt/target pair. ``meta`` (not part of equality or hash) holds what the metric
    needs: the gold number (GSM8K), the database id, path and schema (SQL), the source fields."""

    id: str
    prompt: str
    target: str
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class GenTaskSpec:
    """What a generation task is: its prompt text and where its data comes from."""

    name: str
    display: str
    help: str
    instruction: str
    prompt_template: str  # str.format template; fields: instruction and the task's input fields
    hub_path: str
    hub_config: str | None
    metric: str  # the Table 1 accuracy: gsm8k answer accuracy, SQL execution match, ViGGO exact match
    splits: tuple[str, ...] = ("train", "test")

    def render(self, **fields: str) -> str:
        """The user prompt for one example."""
        return self.prompt_template.format(instruction=self.instruction, **fields)


GSM8K = GenTaskSpec(
    name="gsm8k", display="GSM8K",
    help="grade-school math word problems; accuracy of the final number",
    instruction=("Solve the following math word problem. Reason step by step, then give the final numeric "
                 "answer on the last line in the form '#### <number>'."),
    prompt_template="{instruction}\n\nProblem: {question}",
    hub_path="openai/gsm8k", hub_config="main", metric="gsm8k_accuracy",
)

SQL = GenTaskSpec(
    name="sql", display="SQL",
    help="text to SQL with the schema as CREATE TABLE context (sql-create-context form); execution accuracy",
    instruction=("Write an SQLite query that answers the question. Use only the tables and columns defined in "
                 "the schema. Reply with the query only."),
    prompt_template="{instruction}\n\nSchema:\n{context}\n\nQuestion: {question}",
    hub_path="b-mc2/sql-create-context", hub_config=None, metric="sql_execution_match",
)

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
GSM8K_FILES = {"train": "gsm8k/train.jsonl", "test": "gsm8k/test.jsonl"}
SPIDER_DIR = "spider"
SPIDER_TRAIN_FILES = ("train_spider.json", "train_spider_spidersyn.json")  # official first, Spider-Syn copy second
SPIDER_TEST_FILE = "dev.json"
SPIDER_TABLES_FILE = "tables.json"
VIGGO_FILES = {"train": "viggo/train.csv", "validation": "viggo/valid.csv", "test": "viggo/test.csv"}
HUB_SQL_TEST_SIZE = 1000  # sql-create-context has one split: this many examples are held out as test
HUB_SQL_SPLIT_SEED = 0

# tables.json column types as SQL types, in the vocabulary of sql-create-context (VARCHAR, INTEGER)
SPIDER_TYPE_MAP = {"text": "VARCHAR", "number": "INTEGER", "time": "DATETIME", "boolean": "BOOLEAN",
                   "others": "VARCHAR"}


def _missing(path: Path, what: str) -> DataError:
    return DataError(f"{what} not found: {path}. Pass --data-dir pointing at a folder with the release files "
                     "(see pefteval/tasks/generation.py for the layout), or omit --data-dir to read from the hub.")


def _hub_rows(path: str, config: str | None, split: str) -> list[dict[str, Any]]:
    import datasets

    try:
        return list(datasets.load_dataset(path, config, split=split))
    except Exception as err:  # noqa: BLE001 - network and hub errors come in many types
        raise DataError(f"could not load {path}{'/' + config if config else ''} split {split} from the hub "
                        f"({type(err).__name__}: {err}). Offline, pass --data-dir with the release files.") from None


def _text_field(row: Any, key: str, where: str, fix: str) -> str:
    value = row.get(key) if isinstance(row, dict) else None
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: missing or empty '{key}'. {fix}")
    return value


def squash_sql_whitespace(sql: str) -> str:
    """One space for each run of whitespace outside quoted strings (Spider's SQL has ``age  >  56``)."""
    out, quote = [], ""
    for piece in re.split(r"(\s+|'|\")", sql.strip()):
        if piece in ("'", '"'):
            quote = "" if quote == piece else (quote or piece)
            out.append(piece)
        elif piece and piece.isspace() and not quote:
            out.append(" ")
        else:
            out.append(piece)
    return "".join(out)


# --- GSM8K --------------------------------------------------------------------------------

def gsm8k_example(question: str, answer: str, example_id: str, where: str) -> GenExample:
    if "####" not in answer:
        raise DataError(f"{where}: the answer has no '#### <number>' line; GSM8K answers end with one")
    gold = extract_gsm8k_answer(answer[answer.rfind("####"):])
    if gold is None:
        raise DataError(f"{where}: no number after '####' in the answer")
    return GenExample(example_id, GSM8K.render(question=question.strip()), answer.strip(),
                      {"gold": gold, "question": question.strip()})


def read_gsm8k_jsonl(path: Path, split: str) -> list[GenExample]:
    """Examples of a GSM8K JSON Lines file; a malformed line names its number."""
    if not path.is_file():
        raise _missing(path, f"GSM8K {split} file")
    fix = "Each line must be a JSON object with string fields 'question' and 'answer'."
    out = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}: line {number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{where}: not valid JSON ({err.msg}). {fix}") from None
            question, answer = _text_field(row, "question", where, fix), _text_field(row, "answer", where, fix)
            out.append(gsm8k_example(question, answer, f"gsm8k-{split}-{len(out)}", where))
    if not out:
        raise DataError(f"{path}: no examples found")
    return out


def load_gsm8k(data_dir: Path | None) -> dict[str, list[GenExample]]:
    """{"train", "test"}: 7,473 and 1,319 problems in the release."""
    if data_dir is not None:
        return {split: read_gsm8k_jsonl(Path(data_dir) / rel, split) for split, rel in GSM8K_FILES.items()}
    out = {}
    fix = "The hub rows of openai/gsm8k have 'question' and 'answer'."
    for split in ("train", "test"):
        rows = _hub_rows(GSM8K.hub_path, GSM8K.hub_config, split)
        where = f"{GSM8K.hub_path} {split}"
        out[split] = [gsm8k_example(_text_field(r, "question", f"{where} row {i}", fix),
                                    _text_field(r, "answer", f"{where} row {i}", fix), f"gsm8k-{split}-{i}",
                                    f"{where} row {i}") for i, r in enumerate(rows)]
    return out


# --- SQL ----------------------------------------------------------------------------------

def spider_schema_context(schema: dict[str, Any]) -> str:
    """CREATE TABLE statements for one ``tables.json`` entry, in the compact one-line-per-table
    form of sql-create-context: original table and column names (quoted where needed), column
    types mapped by :data:`SPIDER_TYPE_MAP`, PRIMARY KEY and FOREIGN KEY clauses. SQLite's
    internal tables (``sqlite_sequence``, listed for a few databases) are left out."""
    tables = schema["table_names_original"]
    columns = schema["column_names_original"]
    types = schema["column_types"]
    pk_ids: set[int] = set()
    for key in schema.get("primary_keys", []):
        pk_ids.update(key if isinstance(key, list) else [key])
    parts: list[list[str]] = [[] for _ in tables]
    keys: list[list[str]] = [[] for _ in tables]
    for col_id, ((table_id, name), col_type) in enumerate(zip(columns, types)):
        if table_id < 0:
            continue
        parts[table_id].append(f"{quote_identifier(name)} {SPIDER_TYPE_MAP.get(col_type, 'VARCHAR')}")
        if col_id in pk_ids:
            keys[table_id].append(quote_identifier(name))
    foreign: list[list[str]] = [[] for _ in tables]
    for src, dst in schema.get("foreign_keys", []):
        src_table, src_name = columns[src]
        dst_table, dst_name = columns[dst]
        foreign[src_table].append(f"FOREIGN KEY ({quote_identifier(src_name)}) REFERENCES "
                                  f"{quote_identifier(tables[dst_table])}({quote_identifier(dst_name)})")
    statements = []
    for i, table in enumerate(tables):
        if table.lower().startswith("sqlite_"):  # SQLite's own bookkeeping (sqlite_sequence), not data
            continue
        body = parts[i] + ([f"PRIMARY KEY ({', '.join(keys[i])})"] if keys[i] else []) + foreign[i]
        statements.append(f"CREATE TABLE {quote_identifier(table)} ({', '.join(body)})")
    return "; ".join(statements)


def _read_json_array(path: Path, what: str) -> list[Any]:
    data = read_json_file(path, _missing(path, what))
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of records, as in the Spider release")
    return data


def sql_example(question: str, context: str, query: str, example_id: str, db_id: str | None,
                db_path: Path | None) -> GenExample:
    question = " ".join(question.split())
    return GenExample(example_id, SQL.render(question=question, context=context), squash_sql_whitespace(query),
                      {"db_id": db_id, "db_path": str(db_path) if db_path else None, "schema": context,
                       "question": question})


def read_spider_file(path: Path, split: str, schemas: dict[str, dict[str, Any]], database_dir: Path,
                     contexts: dict[str, str]) -> list[GenExample]:
    """Spider records as SQL examples; the question is ``question`` (``SpiderQuestion`` in the
    Spider-Syn copy). ``meta["db_path"]`` is None where the database file is absent."""
    fix = ("Each record needs 'db_id', 'query' and 'question' (or 'SpiderQuestion'), and its db_id must be "
           f"described in {SPIDER_TABLES_FILE}.")
    out = []
    for i, record in enumerate(_read_json_array(path, f"Spider {split} file")):
        where = f"{path}: record {i}"
        if not isinstance(record, dict):
            raise DataError(f"{where}: not a JSON object. {fix}")
        db_id = _text_field(record, "db_id", where, fix)
        query = _text_field(record, "query", where, fix)
        key = "question" if "question" in record else "SpiderQuestion"
        question = _text_field(record, key, where, fix)
        if db_id not in schemas:
            raise DataError(f"{where}: db_id '{db_id}' is not in {SPIDER_TABLES_FILE}. {fix}")
        if db_id not in contexts:
            contexts[db_id] = spider_schema_context(schemas[db_id])
        db_path = database_dir / db_id / f"{db_id}.sqlite"
        out.append(sql_example(question, contexts[db_id], query, f"spider-{split}-{i}", db_id,
                               db_path if db_path.is_file() else None))
    if not out:
        raise DataError(f"{path}: no records found")
    return out


def sql_from_hub_rows(rows: list[dict[str, Any]], where: str,
                      id_prefix: str = "sql-create-context") -> list[GenExample]:
    fix = "The hub rows of b-mc2/sql-create-context have 'question', 'context' and 'answer'."
    out = []
    for i, row in enumerate(rows):
        at = f"{where} row {i}"
        out.append(sql_example(_text_field(row, "question", at, fix), _text_field(row, "context", at, fix).strip(),
                               _text_field(row, "answer", at, fix), f"{id_prefix}-{i}", None, None))
    return out


def load_sql(data_dir: Path | None, hub_test_size: int = HUB_SQL_TEST_SIZE,
             split_seed: int = HUB_SQL_SPLIT_SEED) -> dict[str, list[GenExample]]:
    """{"train", "test"}. Offline: Spider train (7,000) and dev (1,034) in the sql-create-context
    form. From the hub: sql-create-context (78,577 rows, one split), ``hub_test_size`` examples
    held out as test by a shuffle seeded with ``split_seed``."""
    if data_dir is None:
        rows = _hub_rows(SQL.hub_path, SQL.hub_config, "train")
        examples = sql_from_hub_rows(rows, f"{SQL.hub_path} train")
        order = list(range(len(examples)))
        random.Random(split_seed).shuffle(order)
        n_test = min(hub_test_size, len(examples) // 2)
        test_ids = set(order[:n_test])
        return {"train": [x for i, x in enumerate(examples) if i not in test_ids],
                "test": [x for i, x in enumerate(examples) if i in test_ids]}
    root = Path(data_dir) / SPIDER_DIR
    tables = _read_json_array(root / SPIDER_TABLES_FILE, "Spider schema file")
    schemas = {}
    for i, entry in enumerate(tables):
        needed = ("db_id", "table_names_original", "column_names_original", "column_types")
        if not isinstance(entry, dict) or any(k not in entry for k in needed):
            raise DataError(f"{root / SPIDER_TABLES_FILE}: record {i}: a schema needs {', '.join(needed)}")
        schemas[entry["db_id"]] = entry
    train_path = next((root / name for name in SPIDER_TRAIN_FILES if (root / name).is_file()),
                      root / SPIDER_TRAIN_FILES[0])
    contexts: dict[str, str] = {}
    database_dir = root / "database"
    return {"train": read_spider_file(train_path, "train", schemas, database_dir, contexts),
            "test": read_spider_file(root / SPIDER_TEST_FILE, "test", schemas, database_dir, contexts)}


# --- ViGGO --------------------------------------------------------------------------------

def viggo_example(text: str, mr: str, example_id: str, where: str) -> GenExample:
    act, slots = parse_mr(mr)
    if not act or not slots:
        raise DataError(f"{where}: meaning representation {mr!r} is not of the form act(slot[value], ...)")
    text = " ".join(text.split())
    return GenExample(example_id, VIGGO.render(text=text), mr.strip(), {"text": text, "act": act})


def read_viggo_csv(path: Path, split: str) -> list[GenExample]:
    """Rows of a ViGGO CSV file (header ``mr,ref``); a malformed row names its line."""
    if not path.is_file():
        raise _missing(path, f"ViGGO {split} file")
    fix = "ViGGO files are CSV with the header 'mr,ref' and both fields filled in every row."
    out = []
    with path.open(encoding="utf-8", newline="") as handle:
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


LOADERS: dict[str, Callable[[Path | None], dict[str, list[GenExample]]]] = {
    "gsm8k": load_gsm8k, "sql": load_sql, "viggo": load_viggo,
}


# --- splits for a trial -------------------------------------------------------------------------

def make_generation_splits(raw: dict[str, list[GenExample]], cfg: Any, name: str) -> TaskSplits:
    """Train, validation and test of one task for a trial. Validation (model selection) is the
    task's own validation split where it has one (ViGGO), else held out from train; it is never
    taken from test. Every subset is fixed by ``split_seed``."""
    notes: list[str] = []
    pool = list(raw["train"])
    random.Random(cfg.split_seed).shuffle(pool)
    if raw.get("validation"):
        validation = list(raw["validation"])
        random.Random(cfg.split_seed).shuffle(validation)
        if cfg.max_validation_examples is not None:
            validation = validation[: cfg.max_validation_examples]
        train = pool[: cfg.max_train_examples] if cfg.max_train_examples is not None else pool
    else:
        validation, train = hold_out_validation(pool, cfg)
    test = list(raw["test"])
    if cfg.max_eval_examples is not None and cfg.max_eval_examples < len(test):
        random.Random(cfg.split_seed).shuffle(test)
        test = test[: cfg.max_eval_examples]
        validation = validation[: cfg.max_eval_examples]
        notes.append(f"{name}: test capped at {len(test)} of {len(raw['test'])} examples (--max-eval-examples)")
    return TaskSplits(train=train, validation=validation, test=test, notes=notes)


# --- scoring: the task's Table 1 score is ``accuracy``; the others are reported beside it --------

def _rate(hits: list[float | None]) -> float:
    judged = [h for h in hits if h is not None]
    return sum(int(h) for h in judged) / len(judged) if judged else float("nan")


def score_gsm8k(predictions: Sequence[str], examples: Sequence[GenExample], adversarial: bool = False) -> Scored:
    """Answer accuracy: the final number of the generation equals the gold one."""
    hits: list[float | None] = []
    for i, (pred, x) in enumerate(zip(predictions, examples, strict=True)):
        gold = extract_gsm8k_answer(x.meta["gold"])
        if gold is None:
            raise ValueError(f"gold {i} has no number: {x.meta['gold']!r}")
        hits.append(float(extract_gsm8k_answer(pred) == gold))
    return Scored({"accuracy": _rate(hits), "n": len(examples)}, hits)


def score_sql(predictions: Sequence[str], examples: Sequence[GenExample], adversarial: bool = False) -> Scored:
    """Execution accuracy (the generated query returns the gold query's result); a broken gold
    query (three in Spider train) cannot judge anything and is counted in ``gold_errors``."""
    queries = [clean_sql_output(p) for p in predictions]
    hits: list[float | None] = []
    for q, x in zip(queries, examples, strict=True):
        try:
            hits.append(float(sql_execution_match(q, x.target, x.meta)))
        except GoldQueryError:
            hits.append(None)
    n = len(examples)
    exact = sum(sql_exact_match(q, x.target) for q, x in zip(queries, examples)) / n if n else float("nan")
    return Scored({"accuracy": _rate(hits), "exact_match": exact, "n": n,
                   "gold_errors": sum(h is None for h in hits)}, hits)


def score_viggo(predictions: Sequence[str], examples: Sequence[GenExample], adversarial: bool = False) -> Scored:
    """Exact match of the meaning representation (slot order ignored), and slot P/R/F1."""
    golds = [x.target for x in examples]
    hits: list[float | None] = [float(viggo_exact_match(p, g)) for p, g in zip(predictions, golds, strict=True)]
    slots = viggo_slot_scores(predictions, golds)
    return Scored({"accuracy": _rate(hits), "slot_precision": slots["precision"], "slot_recall": slots["recall"],
                   "slot_f1": slots["f1"], "n": len(examples)}, hits)


SCORERS = {"gsm8k": score_gsm8k, "sql": score_sql, "viggo": score_viggo}
REPORT_COLUMNS = {"gsm8k": ("accuracy",), "sql": ("accuracy", "exact_match"),
                  "viggo": ("accuracy", "slot_precision", "slot_recall", "slot_f1")}
COLUMN_NAMES = {"gsm8k": {"accuracy": "answer accuracy"},
                "sql": {"accuracy": "execution accuracy", "exact_match": "exact match"},
                "viggo": {"accuracy": "exact match (slot order ignored)", "slot_precision": "slot P",
                          "slot_recall": "slot R", "slot_f1": "slot F1"}}
PROMPTING = Prompting(render=lambda x: x.prompt, target=lambda x: x.target)


def register_tasks() -> None:
    for spec in (VIGGO, SQL, GSM8K):
        loader = LOADERS[spec.name]
        register(Task(
            name=spec.name, display=spec.display, help=spec.help, kind="generation",
            splits=lambda data_dir, cfg, seed=0, _load=loader, _name=spec.name: make_generation_splits(
                _load(data_dir), cfg, _name),
            score=SCORERS[spec.name], selection_metric="accuracy", metric_name=spec.metric, prompting=PROMPTING,
            report_columns=REPORT_COLUMNS[spec.name], column_names=COLUMN_NAMES[spec.name],
        ))
