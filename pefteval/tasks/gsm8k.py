"""GSM8K (Table 1): grade-school math word problems, scored by the accuracy of the final number
(:func:`extract_gsm8k_answer`). Beside it, the scores under the conventions published tables use:
lm-evaluation-harness's ``strict-match`` and ``flexible-extract`` (:func:`lm_eval_gsm8k_verdicts`)
and the original release's ``extract_answer`` (:func:`gsm8k_extract_answer`).

Offline files, under a data directory: ``gsm8k/train.jsonl``, ``gsm8k/test.jsonl`` (fields
``question``, ``answer``); the target is the full answer text (reasoning with ``<<expr=value>>``
annotations, then ``#### N``). From the hub: ``openai/gsm8k`` (config ``main``).
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
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

# --- answer extraction ---------------------------------------------------------------

# a number: optional sign and $, digits with optional thousands commas, optional decimals
_NUMBER = re.compile(r"(?<![\w.])([-\u2212]?)\s?\$?\s?((?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)")


def _canonical_number(sign: str, digits: str) -> str | None:
    try:
        value = Decimal(digits.replace(",", ""))
    except InvalidOperation:
        return None
    if sign:
        value = -value
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def extract_gsm8k_answer(text: str | None) -> str | None:
    """The final numeric answer of a GSM8K solution, as a canonical string, or None.

    The first number after the last ``####`` (the dataset's answer marker); when there is no
    marker, or no number after it, the last number anywhere in the text. Commas, ``$`` and a
    trailing period are dropped and the value is canonicalised: ``"$1,234.50"`` -> ``"1234.5"``,
    ``"5.00"`` -> ``"5"``, ``"-3"`` stays ``"-3"``.
    """
    if not text:
        return None
    marker = text.rfind("####")
    if marker >= 0:
        match = _NUMBER.search(text, marker + 4)
        if match:
            return _canonical_number(*match.groups())
    matches = list(_NUMBER.finditer(text))
    return _canonical_number(*matches[-1].groups()) if matches else None


def gsm8k_accuracy(predictions: Sequence[str], golds: Sequence[str]) -> float:
    """Share of predictions whose final number equals the gold one. A gold may be the bare number
    or the dataset's full answer text (the number after ``####`` is taken from it)."""
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions for {len(golds)} golds")
    if not golds:
        return float("nan")
    correct = 0
    for i, (pred, gold) in enumerate(zip(predictions, golds)):
        gold_number = extract_gsm8k_answer(gold)
        if gold_number is None:
            raise ValueError(f"gold {i} has no number: {gold!r}")
        correct += int(extract_gsm8k_answer(pred) == gold_number)
    return correct / len(golds)


# --- the conventions of published tables ----------------------------------------------------------
# pefteval's extraction above is lenient by design ("5.0", "$5", the last "####", the last number
# without one). These reimplement the stricter rules that published GSM8K figures follow.

# lm-evaluation-harness, lm_eval/tasks/gsm8k/gsm8k.yaml (task "gsm8k", metadata version 3.0)
LM_EVAL_STOP_SEQUENCES = ("Question:", "</s>", "<|im_end|>")  # generation_kwargs.until
LM_EVAL_STRICT_PATTERN = re.compile(r"#### (\-?[0-9\.\,]+)")  # filter "strict-match": regex, take_first
LM_EVAL_FLEXIBLE_PATTERN = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")  # "flexible-extract": group_select -1
LM_EVAL_IGNORED = (",", r"\$", r"(?s).*#### ", r"\.$")  # exact_match regexes_to_ignore, applied in this order
LM_EVAL_FALLBACK = "[invalid]"  # lm_eval/filters/extraction.py RegexFilter: the output when nothing matches
# openai/grade-school-math, grade_school_math/dataset.py
GSM8K_ANS_RE = re.compile(r"#### (\-?[0-9\.\,]+)")  # ANS_RE
GSM8K_INVALID_ANS = "[invalid]"  # INVALID_ANS


def lm_eval_truncate(generation: str) -> str:
    """The generation cut at the first of gsm8k.yaml's stop sequences, as lm-eval's HF backend
    returns it (lm_eval/models/utils.py ``postprocess_generated_text``: ``split(term)[0]`` per term)."""
    for term in LM_EVAL_STOP_SEQUENCES:
        generation = generation.split(term)[0]
    return generation


def lm_eval_regex_filter(response: str, pattern: re.Pattern[str], group_select: int = 0) -> str:
    """lm_eval/filters/extraction.py ``RegexFilter`` on one response: ``findall``; the match at
    ``group_select`` (0 the first, -1 the last); for a pattern with several groups, its first
    non-empty group; stripped. ``"[invalid]"`` when nothing matches."""
    matches = pattern.findall(response)
    if not matches:
        return LM_EVAL_FALLBACK
    match = matches[group_select]
    if isinstance(match, tuple):
        match = next((m for m in match if m), LM_EVAL_FALLBACK)
    return match.strip()


def _lm_eval_ignore(text: str) -> str:
    """The exact_match settings of gsm8k.yaml: ``regexes_to_ignore`` removed one after the other
    (``re.sub`` over the whole text), then ``ignore_case`` (lower-cased); ``ignore_punctuation`` is off."""
    for pattern in LM_EVAL_IGNORED:
        text = re.sub(pattern, "", text)
    return text.lower()


def lm_eval_exact_match(prediction: str, reference: str) -> bool:
    """lm_eval/api/metrics.py ``exact_match_hf_evaluate`` for one pair, with gsm8k.yaml's settings
    applied to both sides."""
    return _lm_eval_ignore(prediction) == _lm_eval_ignore(reference)


def lm_eval_gsm8k_verdicts(generation: str, gold_answer: str) -> tuple[bool, bool]:
    """(strict-match, flexible-extract) verdicts of lm-eval's ``gsm8k`` task for one generation.

    The generation is cut at the stop sequences, each filter (regex, then ``take_first`` of the
    single response) extracts its answer, and ``exact_match`` compares it with the reference, the
    full gold answer text (``doc_to_target: "{{answer}}"``), whose ``regexes_to_ignore`` leave the
    number after the last ``#### `` without commas."""
    response = lm_eval_truncate(generation or "")
    strict = lm_eval_regex_filter(response, LM_EVAL_STRICT_PATTERN, 0)
    flexible = lm_eval_regex_filter(response, LM_EVAL_FLEXIBLE_PATTERN, -1)
    return lm_eval_exact_match(strict, gold_answer), lm_eval_exact_match(flexible, gold_answer)


def gsm8k_extract_answer(completion: str | None) -> str:
    """grade_school_math/dataset.py ``extract_answer``: the first ``#### <number>`` (``search``),
    stripped, commas removed; ``"[invalid]"`` without one. No other normalisation: ``5.0`` is not
    ``5``."""
    match = GSM8K_ANS_RE.search(completion or "")
    return match.group(1).strip().replace(",", "") if match else GSM8K_INVALID_ANS


def gsm8k_is_correct(completion: str | None, gold_answer: str) -> bool:
    """grade_school_math/dataset.py ``is_correct``: the extracted answers are the same string; a
    gold answer with no ``#### <number>`` is a ValueError (an assertion there)."""
    gold = gsm8k_extract_answer(gold_answer)
    if gold == GSM8K_INVALID_ANS:
        raise ValueError(f"gold answer has no '#### <number>': {gold_answer!r}")
    return gsm8k_extract_answer(completion) == gold


GSM8K = GenTaskSpec(
    name="gsm8k", display="GSM8K",
    help="grade-school math word problems; accuracy of the final number",
    instruction=("Solve the following math word problem. Reason step by step, then give the final numeric "
                 "answer on the last line in the form '#### <number>'."),
    prompt_template="{instruction}\n\nProblem: {question}",
    hub_path="openai/gsm8k", hub_config="main", metric="gsm8k_accuracy",
)

# offline layout
GSM8K_FILES = {"train": "gsm8k/train.jsonl", "test": "gsm8k/test.jsonl"}


# --- loading ------------------------------------------------------------------------

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
    fix = "Each line must be a JSON object with string fields 'question' and 'answer'."
    out = []
    # newline=None splits lines as open() does (universal newlines); str.splitlines would also split
    # at characters such as U+2028 that a JSON string may hold
    with io.StringIO(read_data_text(path, _missing(path, f"GSM8K {split} file")), newline=None) as handle:
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


# --- scoring ------------------------------------------------------------------------

# the published conventions, each the mean of its per-example verdicts, reported beside ``accuracy``
CONVENTION_METRICS = ("lm_eval_strict_match", "lm_eval_flexible_extract", "gsm8k_extract_answer")
COLUMN_NAMES = {"accuracy": "answer accuracy", "lm_eval_strict_match": "lm-eval strict-match",
                "lm_eval_flexible_extract": "lm-eval flexible-extract",
                "gsm8k_extract_answer": "GSM8K extract_answer"}


def score_gsm8k(predictions: Sequence[str], examples: Sequence[GenExample], adversarial: bool = False) -> Scored:
    """Answer accuracy: the final number of the generation equals the gold one. Beside it, the
    shares right under lm-eval's strict-match and flexible-extract filters and the original
    ``extract_answer``, all judged against the example's full gold answer (its target); a gold answer
    without ``#### <number>`` (``"#### $5"``) leaves an example unjudged by the last one."""
    hits: list[float | None] = []
    verdicts: dict[str, list[float | None]] = {key: [] for key in CONVENTION_METRICS}
    for i, (pred, x) in enumerate(zip(predictions, examples, strict=True)):
        gold = extract_gsm8k_answer(x.meta["gold"])
        if gold is None:
            raise ValueError(f"gold {i} has no number: {x.meta['gold']!r}")
        hits.append(float(extract_gsm8k_answer(pred) == gold))
        strict, flexible = lm_eval_gsm8k_verdicts(pred, x.target)
        verdicts["lm_eval_strict_match"].append(float(strict))
        verdicts["lm_eval_flexible_extract"].append(float(flexible))
        original = gsm8k_extract_answer(x.target)  # is_correct asserts it is valid: an unjudged example here
        verdicts["gsm8k_extract_answer"].append(
            None if original == GSM8K_INVALID_ANS else float(gsm8k_extract_answer(pred) == original))
    return Scored({"accuracy": _rate(hits), **{k: _rate(v) for k, v in verdicts.items()}, "n": len(examples)},
                  hits)


def register_tasks() -> None:
    register_generation_task(GSM8K, load_gsm8k, score_gsm8k, ("accuracy", *CONVENTION_METRICS), COLUMN_NAMES)
