"""QA evaluation throughput: pefteval's batched paths against the straightforward baselines.

Extractive (encoder). The packaged MiniLM with a span head (``minilm-l6``; a seeded fresh
head, or a trained one with ``--run RUN_DIR``) answers the same SQuAD dev questions with
``pefteval.kinds.extractive_qa.predict_extractive``: the windows of all questions batched together, sorted
by length, in bf16 autocast as in a trial, and once in fp32. The baseline answers one
question at a time in fp32 (its windows in one forward pass), with the same preprocessing
and span selection: what ``transformers.pipeline("question-answering")`` did per call. That
pipeline was removed in transformers 5 (pinned here), so it cannot be called itself.
Agreement is the share of questions whose answer equals the baseline's (normalised as in
SQuAD scoring).

Generative (decoder). ``smollm2-135m`` answers SQuAD dev questions from the QA prompt with
``pefteval.kinds.generative.generate_answers`` (greedy, left-padded batches, KV cache, ``max_new_tokens``
cap) and with the same call one question at a time (batch size 1, no padding). Agreement
is the share of identical answers (left padding can flip a near-tie under bf16).

Timings are wall-clock seconds of the prediction calls only (models loaded and warmed up
first); questions/s = questions / seconds. Both sides of each ratio run in this process,
one after the other, on the same inputs.

Run (from the repository root)::

    .venv/bin/python benchmarks/qa_throughput.py --quick    # 64 extractive, 16 generative questions
    .venv/bin/python benchmarks/qa_throughput.py            # 300 extractive, 48 generative questions

The last line is ``questions/s ratio: extractive batched/one-at-a-time X.XX, generative batched/one-at-a-time Y.YY``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

from pefteval.kinds.extractive_qa import predict_extractive
from pefteval.kinds.generative import chat_prompt, generate_answers
from pefteval.models import load_lm_or_span
from pefteval.tasks.squad import DEV_FILE, PROMPTING, read_squad_json, render_prompt
from pefteval.tasks.squad.metrics import normalize_answer

REPO_ROOT = Path(__file__).resolve().parents[1]
MAX_LEN, STRIDE, MAX_ANSWER = 384, 128, 30


def data_dir(arg: str | None) -> Path:
    path = Path(arg or os.environ.get("PEFTEVAL_DATA_DIR") or REPO_ROOT.parent / "shared" / "data")
    if not (path / DEV_FILE).is_file():
        sys.exit(f"SQuAD dev not found at {path / DEV_FILE}; pass --data-dir DIR (the directory holding squad/)")
    return path


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def agreement(a: list[str], b: list[str]) -> float:
    return sum(normalize_answer(x) == normalize_answer(y) for x, y in zip(a, b)) / len(a)


def extractive(questions, run_dir: str | None, batch_size: int) -> float:
    if run_dir:
        from pefteval.kinds import load_run_predictor

        predictor = load_run_predictor(run_dir)
        model, tokenizer = predictor.model, predictor.kind.tokenizer
    else:
        torch.manual_seed(0)
        model, tokenizer, _ = load_lm_or_span("minilm-l6")
    model.eval()

    def ours(precision: str) -> list[str]:
        return predict_extractive(model, questions, tokenizer, MAX_LEN, STRIDE, batch_size, precision,
                                  max_answer_length=MAX_ANSWER)

    def one_at_a_time() -> list[str]:
        # what pipeline("question-answering") did per call: one question's windows, fp32
        return [predict_extractive(model, [x], tokenizer, MAX_LEN, STRIDE, 1, "fp32", max_answer_length=MAX_ANSWER)[0]
                for x in questions]

    predict_extractive(model, questions[:8], tokenizer, MAX_LEN, STRIDE, batch_size, "bf16")  # warm-up
    base, t_base = timed(one_at_a_time)
    ours_fp32, t_fp32 = timed(lambda: ours("fp32"))
    ours_bf16, t_bf16 = timed(lambda: ours("bf16"))
    n = len(questions)
    print(f"\nExtractive QA, {n} SQuAD dev questions (window {MAX_LEN}, stride {STRIDE}, "
          f"{torch.get_num_threads()} threads)")
    print(f"  {'path':<44} {'seconds':>8} {'q/s':>8}")
    print(f"  {'one question at a time, fp32 (baseline)':<44} {t_base:8.2f} {n / t_base:8.1f}")
    print(f"  {f'batched windows, fp32, batch {batch_size}':<44} {t_fp32:8.2f} {n / t_fp32:8.1f}")
    print(f"  {f'batched windows, bf16, batch {batch_size}':<44} {t_bf16:8.2f} {n / t_bf16:8.1f}")
    print(f"  answers equal to the baseline's: fp32 {100 * agreement(ours_fp32, base):.1f} %, "
          f"bf16 {100 * agreement(ours_bf16, base):.1f} %")
    print(f"  ratio fp32/baseline {t_base / t_fp32:.2f}, bf16/baseline {t_base / t_bf16:.2f}")
    return t_base / t_bf16


def generative(questions, batch_size: int, max_new_tokens: int) -> float:
    model, tokenizer, _ = load_lm_or_span("smollm2-135m")
    prompts = [chat_prompt(tokenizer, render_prompt(x), PROMPTING.plain_suffix) for x in questions]

    def answers(batch: list[str], size: int) -> list[str]:
        # SQuAD's answer is the generation's first line, as a trial reads it
        return [PROMPTING.parse(t) for t in generate_answers(model, tokenizer, batch, size, max_new_tokens, "bf16")]

    generate_answers(model, tokenizer, prompts[:2], 2, 4, "bf16")
    batched, t_batch = timed(lambda: answers(prompts, batch_size))
    single, t_single = timed(lambda: [answers([p], 1)[0] for p in prompts])
    n = len(prompts)
    print(f"\nGenerative QA with smollm2-135m (untrained), {n} SQuAD dev questions, greedy, "
          f"max_new_tokens {max_new_tokens}")
    print(f"  {'path':<44} {'seconds':>8} {'q/s':>8}")
    print(f"  {'one question at a time':<44} {t_single:8.2f} {n / t_single:8.2f}")
    print(f"  {f'left-padded batches of {batch_size}':<44} {t_batch:8.2f} {n / t_batch:8.2f}")
    same = sum(a == b for a, b in zip(batched, single))
    print(f"  identical answers: {same}/{n}; ratio batched/one-at-a-time {t_single / t_batch:.2f}")
    print(f"  e.g. Q: {questions[0].question!r} -> {batched[0]!r} (gold {questions[0].answers[0]!r})")
    return t_single / t_batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir")
    parser.add_argument("--quick", action="store_true", help="fewer questions")
    parser.add_argument("--run", help="a finished extractive trial's run directory (default: a fresh span head)")
    parser.add_argument("--batch-size", type=int, default=64, help="extractive batch size (windows)")
    parser.add_argument("--gen-batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()
    dev = read_squad_json(data_dir(args.data_dir) / DEV_FILE)
    n_ext, n_gen = (64, 16) if args.quick else (300, 48)
    ext = extractive(dev[:n_ext], args.run, args.batch_size)
    gen = generative(dev[:n_gen], args.gen_batch_size, args.max_new_tokens)
    print(f"\nquestions/s ratio: extractive batched bf16/one-at-a-time {ext:.2f}, "
          f"generative batched/one-at-a-time {gen:.2f}")


if __name__ == "__main__":
    main()
