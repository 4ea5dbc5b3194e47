"""Instruction tuning on Alpaca (Taori et al., 2023), evaluated on MT-Bench: the paper's Table 2.

Training data: the 52K instruction / optional input / output records of ``alpaca/alpaca_data.json``
(the canonical file of tatsu-lab/stanford_alpaca), or ``tatsu-lab/alpaca`` from the hub. A
validation part is held out from them (``data.validation_size``, capped by
``max_validation_examples``): it selects the epoch and the grid point by ROUGE-L (F-measure, Porter
stemming, Google's ``rouge-score`` as lm-evaluation-harness uses it) of the greedy response against
the reference response. ROUGE-L rather than validation loss, because it scores what MT-Bench then
judges, a generated answer under the same decoding, where a loss can improve while the greedy
output degenerates into repetition; judging every epoch would cost too much.

The test split is the 80 two-turn MT-Bench questions (``pefteval.tasks.mt_bench``): the trial
answers them turn by turn (``pefteval.kinds.instruct``) and writes the answers in FastChat's
``model_answer`` format; ``pefteval judge`` scores them. The prompt is the model's chat template
when its tokenizer has one, else the Alpaca template (the kind decides, the same in training and
evaluation).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pefteval.errors import DataError
from pefteval.tasks.base import (
    Prompting,
    Scored,
    Task,
    TaskSplits,
    hold_out_validation,
    load_hub_split,
    read_json_file,
    register,
)
from pefteval.tasks.mt_bench import CATEGORIES, MTBenchQuestion, read_questions

HUB_PATH = "tatsu-lab/alpaca"
ALPACA_FILE = "alpaca/alpaca_data.json"
# stanford_alpaca's train.py PROMPT_DICT, with a newline after "### Response:" (as alpaca-lora's
# template has it) so that the response starts on its own line for every tokenizer
HEADER_NO_INPUT = ("Below is an instruction that describes a task. "
                   "Write a response that appropriately completes the request.\n\n")
HEADER_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further "
                "context. Write a response that appropriately completes the request.\n\n")


@dataclass(frozen=True)
class InstructExample:
    """One Alpaca record: an instruction, its optional input, the reference response."""

    id: str
    instruction: str
    input: str
    output: str

    @property
    def target(self) -> str:  # what predictions.json shows as the reference
        return self.output


def user_text(example: InstructExample) -> str:
    """The user turn as a chat template reads it: the instruction, then its input (when it has one)."""
    return f"{example.instruction}\n\n{example.input}" if example.input else example.instruction


def alpaca_prompt(turns: Sequence[str], answers: Sequence[str], first_input: str = "") -> str:
    """The Alpaca template for a model without a chat template: the header, then for each turn
    ``### Instruction:`` (and ``### Input:`` for the first turn's input) and ``### Response:``,
    the earlier turns followed by their answers. One turn is exactly stanford_alpaca's prompt; later
    turns continue the same pattern (as FastChat's "alpaca" conversation template does)."""
    if len(answers) != len(turns) - 1:
        raise ValueError(f"{len(turns)} turns need {len(turns) - 1} earlier answers, got {len(answers)}")
    text = HEADER_INPUT if first_input else HEADER_NO_INPUT
    for i, turn in enumerate(turns):
        text += f"### Instruction:\n{turn}\n\n"
        if i == 0 and first_input:
            text += f"### Input:\n{first_input}\n\n"
        text += "### Response:\n"
        if i < len(answers):
            text += f"{answers[i]}\n\n"
    return text


def _load_alpaca(data_dir: Path | None) -> list[InstructExample]:
    if data_dir is not None:
        path = data_dir / ALPACA_FILE
        missing = DataError(f"Alpaca file not found: {path}. Put tatsu-lab/stanford_alpaca's alpaca_data.json at "
                            f"<data-dir>/{ALPACA_FILE}, or omit --data-dir to read {HUB_PATH} from the hub")
        rows, where = read_json_file(path, missing), str(path)
        if not isinstance(rows, list):
            raise DataError(f"{path}: expected a JSON array of {{instruction, input, output}} records")
    else:
        rows, where = list(load_hub_split(HUB_PATH, None, "train")), f"hub:{HUB_PATH}"
    examples = []
    for i, row in enumerate(rows):
        at = f"{where} record {i}"
        if not isinstance(row, dict):
            raise DataError(f"{at}: expected an object with instruction, input and output")
        values = {}
        for key in ("instruction", "input", "output"):
            value = row.get(key, "" if key == "input" else None)
            if not isinstance(value, str):
                raise DataError(f"{at}: '{key}' must be a string")
            values[key] = value
        if not values["instruction"].strip():
            raise DataError(f"{at}: empty 'instruction'")
        examples.append(InstructExample(f"alpaca-{i}", values["instruction"], values["input"], values["output"]))
    if not examples:
        raise DataError(f"{where}: no records")
    return examples


def capped_questions(questions: list[MTBenchQuestion], n: int | None) -> list[MTBenchQuestion]:
    """All questions, or ``n`` of them spread evenly over the categories (the first of each, in file
    order), so that every category keeps a score."""
    if n is None or n >= len(questions):
        return questions
    categories = list(dict.fromkeys(q.category for q in questions))
    per = max(1, n // len(categories))
    kept = [q for c in categories for q in [x for x in questions if x.category == c][:per]]
    return sorted(kept, key=questions.index)[:max(n, len(categories))]


def alpaca_splits(data_dir: Path | None, cfg: Any, seed: int = 0) -> TaskSplits:
    """Train and validation from Alpaca (fixed by ``split_seed``; records with an empty response are
    left out: nothing to learn or score), test: MT-Bench's questions."""
    pool = [x for x in _load_alpaca(data_dir) if x.output.strip()]
    notes = []
    random.Random(cfg.split_seed).shuffle(pool)
    validation, train = hold_out_validation(pool, cfg)
    questions = read_questions(data_dir)
    test = capped_questions(questions, cfg.max_eval_examples)
    if len(test) < len(questions):
        notes.append(f"alpaca: MT-Bench capped at {len(test)} of {len(questions)} questions (max_eval_examples); "
                     "its scores are not comparable with published ones")
    return TaskSplits(train=train, validation=validation, test=test, notes=notes)


_SCORER: Any = None


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure with Porter stemming (``rouge-score``, as lm-evaluation-harness computes it)."""
    global _SCORER
    if _SCORER is None:
        from rouge_score import rouge_scorer  # imports nltk: only when a split is scored

        _SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return float(_SCORER.score(reference, prediction)["rougeL"].fmeasure)


def score_alpaca(predictions: Sequence[Any], examples: Sequence[Any], adversarial: bool = False) -> Scored:
    """Validation: mean ROUGE-L of the responses. MT-Bench: what can be said before judging (answered
    turns, empty answers, answer length); its scores come from ``pefteval judge``."""
    if len(predictions) != len(examples):
        raise ValueError(f"{len(predictions)} predictions for {len(examples)} examples")
    if examples and isinstance(examples[0], MTBenchQuestion):
        turns = [t for answer in predictions for t in answer]
        empty = sum(1 for t in turns if not t.strip())
        metrics: dict[str, Any] = {"n": len(examples), "answered_turns": len(turns), "empty_turns": empty,
                                   "mean_answer_words": sum(len(t.split()) for t in turns) / max(1, len(turns))}
        for category in CATEGORIES:
            n = sum(1 for q in examples if q.category == category)
            if n:
                metrics[f"questions_{category}"] = n
        return Scored(metrics, [None] * len(examples))
    scores = [rouge_l(p, x.output) for p, x in zip(predictions, examples)]
    return Scored({"rougeL": sum(scores) / len(scores) if scores else float("nan"), "n": len(examples)}, scores)


PROMPTING = Prompting(render=user_text, target=lambda x: x.output)


def register_tasks() -> None:
    register(Task(
        name="alpaca", display="Alpaca → MT-Bench",
        help="instruction tuning on Alpaca 52K (tatsu-lab/alpaca), answers to the 80 two-turn MT-Bench questions "
             "judged by an LLM (pefteval judge): the paper's Table 2",
        kind="instruct", splits=alpaca_splits, score=score_alpaca, selection_metric="rougeL",
        metric_name="ROUGE-L", prompting=PROMPTING, report_columns=("rougeL",),
        column_names={"rougeL": "validation ROUGE-L"},
    ))
