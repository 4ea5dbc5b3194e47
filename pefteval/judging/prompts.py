"""FastChat's single-answer grading (``fastchat/llm_judge/common.py``: ``run_judge_single``): which
judge prompt a question's turn gets, the user prompt it fills in, and how a rating is read back.

Turn 1 is judged with ``single-v1`` (``{question}``, ``{answer}``), turn 2 with
``single-v1-multi-turn`` (``{question_1}``, ``{answer_1}``, ``{question_2}``, ``{answer_2}``); math,
reasoning and coding with ``single-math-v1`` / ``single-math-v1-multi-turn`` and the GPT-4
reference answer (``{ref_answer_1}``, and ``{ref_answer_2}`` on turn 2). The judge reads two
messages: the prompt's ``system_prompt``, then the filled-in template.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pefteval.errors import DataError
from pefteval.judging.identity import cache_key
from pefteval.tasks.mt_bench import NEED_REF_CATS, JudgePrompt, MTBenchQuestion, judge_prompt_name

# common.py: one_score_pattern and its backup; the first match of the first that matches is the rating
RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")
RATING_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")
UNRATED = -1  # FastChat's score for a judgment without a rating
SINGLE_PROMPTS = ("single-v1", "single-math-v1", "single-v1-multi-turn", "single-math-v1-multi-turn")


def parse_rating(judgment: str) -> float | None:
    """The rating in a judgment as FastChat reads it: the first ``[[x]]``, else the first ``[x]``
    (x: digits with an optional decimal part), as a float; None when there is neither. The text is
    only ever matched and converted with ``float``, never evaluated."""
    match = RATING.search(judgment) or RATING_BACKUP.search(judgment)
    return float(match.group(1)) if match else None


@dataclass(frozen=True)
class JudgeRequest:
    """One judgment to make: the two messages the judge reads and what the score will be filed under.

    ``model`` is the answering model's id (FastChat's ``model`` key), ``cache_key`` the hash that
    finds an earlier judgment of the same answer by the same judge."""

    model: str
    question_id: int
    category: str
    turn: int
    prompt_name: str
    system: str
    user: str
    cache_key: str


def check_prompts(prompts: Mapping[str, JudgePrompt], where: str = "judge_prompts.jsonl") -> None:
    """The four single-answer prompts are there, typed ``single``, asking for ``[[rating]]``."""
    for name in SINGLE_PROMPTS:
        prompt = prompts.get(name)
        if prompt is None:
            raise DataError(f"{where}: the judge prompt {name!r} is missing (FastChat's judge_prompts.jsonl has "
                            f"{', '.join(SINGLE_PROMPTS)})")
        if prompt.type != "single" or prompt.output_format != "[[rating]]":
            raise DataError(f"{where}: the judge prompt {name!r} must be of type 'single' with output_format "
                            f"'[[rating]]' (it has {prompt.type!r}, {prompt.output_format!r})")


def user_prompt(prompt: JudgePrompt, question: MTBenchQuestion, answer: Sequence[str], turn: int,
                reference: Sequence[str] | None = None) -> str:
    """The judge's user message: ``prompt_template`` filled in as ``run_judge_single`` fills it
    (``str.format``; the answer's own braces are data, not placeholders)."""
    kwargs: dict[str, Any] = {}
    if reference is not None:
        kwargs["ref_answer_1"] = reference[0]
        if turn == 2:
            kwargs["ref_answer_2"] = reference[1]
    if turn == 2:
        return prompt.prompt_template.format(question_1=question.turns[0], question_2=question.turns[1],
                                             answer_1=answer[0], answer_2=answer[1], **kwargs)
    return prompt.prompt_template.format(question=question.turns[0], answer=answer[0], **kwargs)


def needs_reference(category: str) -> bool:
    return category in NEED_REF_CATS


def answer_requests(model: str, answers: Mapping[int, Sequence[str]], questions: Sequence[MTBenchQuestion],
                    prompts: Mapping[str, JudgePrompt], references: Mapping[int, Sequence[str]],
                    identity_of: Callable[[str], dict[str, Any]]) -> tuple[list[JudgeRequest], list[str]]:
    """The judgments of one model's answers (question id -> answer turns), in question order, turn 1
    then turn 2; and the turns that cannot be judged because the answer lacks them ("81 turn 2").
    ``identity_of(prompt name)`` is the judge's identity for that prompt (for the cache key)."""
    requests, missing = [], []
    for question in questions:
        answer = answers.get(question.question_id)
        for turn in (1, 2):
            if answer is None or len(answer) < turn or len(question.turns) < turn:
                missing.append(f"{question.question_id} turn {turn}")
                continue
            name = judge_prompt_name(question.category, turn)
            reference = None
            if needs_reference(question.category):
                reference = references.get(question.question_id)
                if reference is None or len(reference) < turn:
                    raise DataError(f"question {question.question_id} ({question.category}) is judged against the "
                                    f"GPT-4 reference answer, and reference_answer/gpt-4.jsonl has no turn {turn} "
                                    "for it: use FastChat's reference_answer/gpt-4.jsonl")
            prompt = prompts[name]
            user = user_prompt(prompt, question, answer, turn, reference)
            requests.append(JudgeRequest(model, question.question_id, question.category, turn, name,
                                         prompt.system_prompt, user,
                                         cache_key(identity_of(name), prompt.system_prompt, user)))
    return requests, missing
