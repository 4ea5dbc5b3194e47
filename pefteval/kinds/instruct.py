"""Instruction following: a decoder learns Alpaca's responses and answers MT-Bench's two-turn
questions as FastChat's ``gen_model_answer.py`` does.

The prompt is the tokenizer's chat template when it has one, else the Alpaca template
(``tasks.alpaca.alpaca_prompt``): the same builder in training, validation and MT-Bench. The loss
is on the response tokens only (labels -100 on the prompt). Validation responses are greedy
(``training.max_new_tokens``). MT-Bench is answered turn by turn in one conversation (turn 2's prompt
holds turn 1's answer), each question at its category's temperature (0 = greedy; sampled answers
seeded from the trial's seed), up to ``data.mt_bench_max_new_tokens`` per turn, batched across the
questions that share a temperature with left padding and a KV cache. The answers are written in
FastChat's ``model_answer`` format (``mt_bench_answers.jsonl``, the model id being the run
directory's name), which FastChat's judging scripts and ``pefteval judge`` read.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from pefteval.kinds.generative import MIN_TARGET_TOKENS, GenerativeAnswer, generate_answers
from pefteval.probe import Probe, make_probe
from pefteval.tasks.alpaca import InstructExample, alpaca_prompt
from pefteval.tasks.mt_bench import FASTCHAT_MAX_NEW_TOKENS, MTBenchQuestion, answer_row, write_answers
from pefteval.train import Encoded

ANSWERS_FILE = "mt_bench_answers.jsonl"


def conversation_prompt(tokenizer: Any, turns: Sequence[str], answers: Sequence[str], first_input: str = "") -> str:
    """The prompt for the last of ``turns``, the earlier turns followed by their ``answers``: the
    chat template with the generation prompt when the tokenizer has one, else the Alpaca template.
    ``first_input`` is an Alpaca record's input (after the instruction in a chat template)."""
    if not getattr(tokenizer, "chat_template", None):
        return alpaca_prompt(turns, answers, first_input)
    messages = []
    for i, turn in enumerate(turns):
        content = f"{turn}\n\n{first_input}" if i == 0 and first_input else turn
        messages.append({"role": "user", "content": content})
        if i < len(answers):
            messages.append({"role": "assistant", "content": answers[i]})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def encode_instructions(examples: Sequence[InstructExample], tokenizer: Any, max_length: int) -> tuple[Encoded, int]:
    """Training features: the prompt, then the response and end-of-sequence, labels on the response
    only. A record whose prompt leaves fewer than ``MIN_TARGET_TOKENS`` of ``max_length`` is left out
    (counted); a long response is cut at the end."""
    features, skipped = [], 0
    for x in examples:
        prompt_ids = tokenizer(conversation_prompt(tokenizer, [x.instruction], [], x.input),
                               add_special_tokens=False)["input_ids"]
        if len(prompt_ids) > max_length - MIN_TARGET_TOKENS:
            skipped += 1
            continue
        target_ids = tokenizer(x.output, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = (prompt_ids + target_ids)[:max_length]
        labels = ([-100] * len(prompt_ids) + target_ids)[:max_length]
        features.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    return Encoded(features, []), skipped


class InstructionFollowing(GenerativeAnswer):
    name = "instruct"
    head = "lm"

    def __init__(self, task: Any, training: Any, seed: int, data: Any = None):
        super().__init__(task, training, seed, data)
        self.answers: dict[int, list[str]] = {}
        self.answer_seconds = 0.0
        self.answer_tokens = 0

    @property
    def mt_bench_max_new_tokens(self) -> int:
        return getattr(self.data, "mt_bench_max_new_tokens", None) or FASTCHAT_MAX_NEW_TOKENS

    def encode_pairs(self, examples: Sequence[Any], max_len: int) -> tuple[Encoded, int]:
        return encode_instructions(examples, self.tokenizer, max_len)

    def predict(self, model: nn.Module, examples: Sequence[Any]) -> list[Any]:
        if examples and isinstance(examples[0], MTBenchQuestion):
            return self.answer_mt_bench(model, examples)
        prompts = [conversation_prompt(self.tokenizer, [x.instruction], [], x.input) for x in examples]
        return generate_answers(model, self.tokenizer, prompts, self.hp.eval_batch_size, self.hp.max_new_tokens,
                                self.hp.precision)

    def answer_mt_bench(self, model: nn.Module, questions: Sequence[MTBenchQuestion]) -> list[list[str]]:
        """Each question's answers, turn by turn: turn k's prompt holds the answers to turns 1..k-1.
        The questions that share a temperature (a category's) are generated together."""
        started = time.perf_counter()
        answers: dict[int, list[str]] = {q.question_id: [] for q in questions}
        for turn in range(max(len(q.turns) for q in questions)):
            pending = [q for q in questions if len(q.turns) > turn]
            for temperature in sorted({q.temperature for q in pending}):
                group = [q for q in pending if q.temperature == temperature]
                prompts = [conversation_prompt(self.tokenizer, q.turns[:turn + 1], answers[q.question_id])
                           for q in group]
                counts: list[int] = []
                texts = generate_answers(model, self.tokenizer, prompts, self.hp.eval_batch_size,
                                         self.mt_bench_max_new_tokens, self.hp.precision, temperature=temperature,
                                         seed=self.seed * 10 + turn, counts=counts)
                self.answer_tokens += sum(counts)
                for q, text in zip(group, texts):
                    answers[q.question_id].append(text)
        self.answer_seconds += time.perf_counter() - started
        self.answers.update(answers)
        return [answers[q.question_id] for q in questions]

    def probe(self, examples: Sequence[Any], n: int) -> Probe | None:
        data, _ = encode_instructions(examples[:n], self.tokenizer, self.hp.max_seq_length)
        return make_probe(data.features, self.pad_id, None, n)

    def save(self, run_dir: Path) -> None:
        """The MT-Bench answers in FastChat's ``model_answer`` format; the model id is the run directory's name."""
        self.model_id = run_dir.name
        if self.answers:
            write_answers(run_dir / ANSWERS_FILE,
                          [answer_row(qid, self.model_id, turns) for qid, turns in self.answers.items()])

    def record_fields(self) -> dict[str, Any]:
        fields = super().record_fields()
        if self.answers:
            turns = sum(len(t) for t in self.answers.values())
            fields["mt_bench"] = {
                "model_id": getattr(self, "model_id", None), "answers": ANSWERS_FILE,
                "questions": len(self.answers), "turns": turns, "max_new_tokens": self.mt_bench_max_new_tokens,
                "batch_size": self.hp.eval_batch_size, "answer_seconds": round(self.answer_seconds, 3),
                "generated_tokens": self.answer_tokens,
                "answers_per_second": turns / self.answer_seconds if self.answer_seconds else None,
                "tokens_per_second": self.answer_tokens / self.answer_seconds if self.answer_seconds else None,
            }
        return fields
