"""MT-Bench answering throughput: batched against one question at a time.

``smollm2-135m`` answers MT-Bench questions as an instruction-tuning trial does
(``pefteval.kinds.instruct.InstructionFollowing.answer_mt_bench``: two turns in one conversation, the
chat template, FastChat's per-category temperatures with seeded sampling, ``--max-new-tokens`` a
turn): once with the questions that share a temperature batched (left padding, KV cache,
``--batch-size``), once with a batch size of 1, one question at a time. Both runs answer the same
questions in the same process; printed: answer turns per second, generated tokens per second, and
the ratio of answer turns per second.

Run (from the repository root)::

    .venv/bin/python benchmarks/mt_bench_answers.py --questions 16 --max-new-tokens 64

The last line is ``ratio: batched/one-at-a-time answers/s X.XX``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

from pefteval.config import DataConfig, TrainingConfig
from pefteval.kinds.instruct import InstructionFollowing
from pefteval.models import load_lm_or_span, resolve_model
from pefteval.tasks import get_task
from pefteval.tasks.alpaca import capped_questions
from pefteval.tasks.mt_bench import read_questions

REPO_ROOT = Path(__file__).resolve().parents[1]


def answer(model, tokenizer, questions, batch_size: int, max_new_tokens: int) -> tuple[float, int, float]:
    """(seconds, generated tokens, answer turns per second) of answering ``questions`` with this batch size."""
    hp = TrainingConfig(eval_batch_size=batch_size, precision="bf16")
    kind = InstructionFollowing(get_task("alpaca"), hp, seed=0, data=DataConfig(mt_bench_max_new_tokens=max_new_tokens))
    kind.tokenizer = tokenizer
    started = time.perf_counter()
    answers = kind.answer_mt_bench(model, questions)
    seconds = time.perf_counter() - started
    turns = sum(len(a) for a in answers)
    return seconds, kind.answer_tokens, turns / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="the folder holding mt_bench/ (default ../shared/data)")
    parser.add_argument("--questions", type=int, default=16, help="questions, spread over the 8 categories")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    data = Path(args.data_dir or os.environ.get("PEFTEVAL_DATA_DIR") or REPO_ROOT.parent / "shared" / "data")
    if not (data / "mt_bench" / "question.jsonl").is_file():
        sys.exit(f"MT-Bench not found under {data}; pass --data-dir DIR (the directory holding mt_bench/)")
    questions = capped_questions(read_questions(data), args.questions)
    model, tokenizer, _ = load_lm_or_span(resolve_model("smollm2-135m"))
    model.eval()
    print(f"smollm2-135m, {len(questions)} questions x 2 turns, max_new_tokens {args.max_new_tokens}, "
          f"bf16 autocast, {torch.get_num_threads()} threads")
    answer(model, tokenizer, questions[:1], 1, 4)  # warm-up
    results = {}
    for name, batch in (("batched", args.batch_size), ("one-at-a-time", 1)):
        seconds, tokens, rate = answer(model, tokenizer, questions, batch, args.max_new_tokens)
        results[name] = rate
        print(f"{name:>14} (batch {batch:>2}): {seconds:7.1f} s, {rate:.3f} answers/s, {tokens / seconds:.1f} tokens/s "
              f"({tokens} tokens)")
    print(f"ratio: batched/one-at-a-time answers/s {results['batched'] / results['one-at-a-time']:.2f}")


if __name__ == "__main__":
    main()
