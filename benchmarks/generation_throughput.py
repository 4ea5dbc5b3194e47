"""Decoder generation-task throughput: evaluation and training, each against a baseline.

Evaluation. ``smollm2-135m`` generates answers to ViGGO prompts (chat template, greedy,
``max_new_tokens`` cap) with ``pefteval.kinds.generative.generate_answers`` in left-padded batches with a
KV cache, and with the same call one example at a time; examples/s and the ratio, plus how
many outputs are identical.

Training. The same ViGGO prompt -> answer features (labels -100 on the prompt) train LoRA
(r 8, alpha 16 on q/k/v/o) for one epoch twice from the same weights: with
``pefteval.train.train_model`` (its defaults: bf16 autocast, length-grouped batches) and with
a plain ``transformers.Trainer`` (its defaults: fp32, random batches; the same batch size,
learning rate, linear schedule, no warmup, weight decay 0, max grad norm 1, padding per
batch). Only the training loops are timed (pefteval's ``train_seconds``, the Trainer's
``train_runtime``); examples/s and the ratio. ``--matched`` also runs the Trainer with bf16
and length grouping, which shows the loops side by side.

Run (from the repository root)::

    .venv/bin/python benchmarks/generation_throughput.py --quick   # 16 eval, 32 train examples
    .venv/bin/python benchmarks/generation_throughput.py           # 48 eval, 96 train examples

The last line is ``ratios: generation batched/one-at-a-time X.XX, training pefteval/Trainer Y.YY``.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from pefteval.config import LoraMethod, TrainingConfig
from pefteval.kinds.generative import chat_prompt, encode_prompt_target, generate_answers
from pefteval.methods import apply_method
from pefteval.models import load_lm_or_span
from pefteval.tasks.generation import PROMPTING
from pefteval.tasks.viggo import load_viggo
from pefteval.train import train_model

REPO_ROOT = Path(__file__).resolve().parents[1]
LORA = LoraMethod(type="lora", r=8, alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
HP = TrainingConfig(epochs=1, batch_size=8, lr=1e-3, warmup_ratio=0.0, weight_decay=0.0, max_grad_norm=1.0,
                    precision="bf16", group_by_length=True, eval_batch_size=16)


def data_dir(arg: str | None) -> Path:
    path = Path(arg or os.environ.get("PEFTEVAL_DATA_DIR") or REPO_ROOT.parent / "shared" / "data")
    if not (path / "viggo" / "train.csv").is_file():
        sys.exit(f"ViGGO not found under {path}; pass --data-dir DIR (the directory holding viggo/)")
    return path


def evaluation(model, tokenizer, examples, batch_size: int, max_new_tokens: int) -> float:
    prompts = [chat_prompt(tokenizer, x.prompt) for x in examples]
    generate_answers(model, tokenizer, prompts[:2], 2, 4, "bf16")  # warm-up
    start = time.perf_counter()
    batched = generate_answers(model, tokenizer, prompts, batch_size, max_new_tokens, "bf16")
    t_batch = time.perf_counter() - start
    start = time.perf_counter()
    single = [generate_answers(model, tokenizer, [p], 1, max_new_tokens, "bf16")[0] for p in prompts]
    t_single = time.perf_counter() - start
    n = len(prompts)
    print(f"\nEvaluation: {n} ViGGO prompts, greedy, max_new_tokens {max_new_tokens}, "
          f"{torch.get_num_threads()} threads")
    print(f"  one example at a time      {t_single:8.2f} s {n / t_single:8.2f} ex/s")
    print(f"  left-padded batches of {batch_size:<3} {t_batch:8.2f} s {n / t_batch:8.2f} ex/s")
    print(f"  identical outputs {sum(a == b for a, b in zip(batched, single))}/{n}; "
          f"ratio {t_single / t_batch:.2f}")
    return t_single / t_batch


def trainer_run(base, train, tokenizer, bf16: bool, grouped: bool) -> float:
    from peft import get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from pefteval.methods.peft_methods import build_peft_config, peft_task_type

    plain = copy.deepcopy(base)
    # the GGUF file was dequantised to full-precision tensors on load; the Trainer only sees the
    # "gguf" quantizer tag and refuses to train, so drop it (the weights are ordinary tensors)
    plain.hf_quantizer, plain.is_quantized = None, False
    model = get_peft_model(plain, build_peft_config(LORA, 1, peft_task_type("lm")))
    rows = [dict(f) for f in train.features]
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, per_device_train_batch_size=HP.batch_size, learning_rate=HP.lr,
                                 num_train_epochs=HP.epochs, lr_scheduler_type="linear", warmup_steps=0,
                                 weight_decay=0.0, max_grad_norm=1.0, logging_strategy="no", save_strategy="no",
                                 report_to=[], bf16=bf16, use_cpu=True, seed=0, dataloader_num_workers=0,
                                 **({"train_sampling_strategy": "group_by_length"} if grouped else {}))
        trainer = Trainer(model=model, args=args, train_dataset=rows,
                          data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100))
        out = trainer.train()
    return out.metrics["train_runtime"]


def training(base, tokenizer, examples, matched: bool) -> float:
    train, _ = encode_prompt_target(examples, tokenizer, 512, PROMPTING)
    model = apply_method(copy.deepcopy(base), LORA, 1, head="lm", paper_lora_targets=True).model
    result = train_model(model, train, lambda _m: 0.0, HP, 0, tokenizer.pad_token_id)
    t_ours = result.train_seconds
    tokenizer.padding_side = "right"
    t_trainer = trainer_run(base, train, tokenizer, bf16=False, grouped=False)
    n = len(train)
    print(f"\nTraining: LoRA r 8 on {n} ViGGO examples, 1 epoch, batch {HP.batch_size}")
    print(f"  pefteval train_model (bf16, grouped)  {t_ours:8.2f} s {n / t_ours:8.2f} ex/s")
    print(f"  Trainer defaults (fp32, random)       {t_trainer:8.2f} s {n / t_trainer:8.2f} ex/s")
    if matched:
        t_matched = trainer_run(base, train, tokenizer, bf16=True, grouped=True)
        print(f"  Trainer bf16 + grouped                {t_matched:8.2f} s {n / t_matched:8.2f} ex/s  "
              f"(like-for-like ratio {t_matched / t_ours:.2f})")
    tokenizer.padding_side = "left"
    print(f"  ratio pefteval/Trainer {t_trainer / t_ours:.2f}")
    return t_trainer / t_ours


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--matched", action="store_true", help="also run the Trainer with bf16 and length grouping")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()
    viggo = load_viggo(data_dir(args.data_dir))
    n_eval, n_train = (16, 32) if args.quick else (48, 96)
    base, tokenizer, _ = load_lm_or_span("smollm2-135m")
    gen = evaluation(base, tokenizer, viggo["test"][:n_eval], args.batch_size, args.max_new_tokens)
    train = training(base, tokenizer, viggo["train"][:n_train], args.matched)
    print(f"\nratios: generation batched/one-at-a-time {gen:.2f}, training pefteval/Trainer {train:.2f}")


if __name__ == "__main__":
    main()
