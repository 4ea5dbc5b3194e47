"""Training throughput: pefteval's own loop against a plain ``transformers.Trainer``.

What is measured. The packaged MiniLM encoder (``minilm-l6``) is fine-tuned on the same
SST-2 training subset twice per method, once with ``pefteval.train.train_model`` and
once with ``transformers.Trainer`` (wrapped by ``peft.get_peft_model`` for LoRA), for
full fine-tuning (lr 5e-5) and LoRA (r=8, alpha=16, dropout 0.1, lr 2e-3). Both sides
start from the same seeded weights and share every hyperparameter: batch size 32,
linear warmup over 6 % of the steps (the same whole number of steps on both sides)
then linear decay, weight decay 0, max grad norm 1.0, the same epochs and the same
max sequence length, fused AdamW (the Trainer's default on torch >= 2.8), and the same
tokenised, unpadded examples padded per batch. What differs is what each side does by
default: pefteval trains under bf16 autocast with length-grouped batches (its
``TrainingConfig`` defaults); the Trainer keeps its own defaults (fp32, random batches).
The whole speed-up comes from those two settings, not from the loop itself: with
``--matched`` the Trainer is also run with ``bf16=True`` and
``train_sampling_strategy="group_by_length"``, which shows the loops side by side.

Only training is timed: pefteval's ``TrainResult.train_seconds`` (the epoch loops,
without its per-epoch validation pass) and the Trainer's ``train_runtime`` (its epoch
loops, timed after the dataloader and optimiser are set up; nothing is evaluated, logged
or saved during it). Model loading and evaluation are not timed. examples/s = training
examples x epochs / training seconds. After each training the SST-2 dev set (872
sentences) is scored with pefteval's ``predict`` for both models (bf16 for pefteval's,
fp32 for the Trainer's, each as it was trained), to show whether accuracy holds.

On a CUDA machine both sides train on the GPU (``--device``, default auto); the first line names the
device used.

Run (from the repository root)::

    .venv/bin/python benchmarks/train_throughput.py --quick   # ~600 examples, 1 epoch
    .venv/bin/python benchmarks/train_throughput.py           # 2000 examples, 1 epoch

The data directory defaults to $PEFTEVAL_DATA_DIR, else ../shared/data next to the
repository. The last line is ``examples/s ratio pefteval/Trainer: fft X.XX, lora Y.YY``.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pefteval.config import DataConfig, FFTMethod, LoraMethod, TrainingConfig, _MethodBase
from pefteval.device import describe_device, resolve_device
from pefteval.kinds.classification import encode, predict
from pefteval.methods import apply_method
from pefteval.metrics import accuracy
from pefteval.models import load_for_classification, load_tokenizer, resolve_model
from pefteval.tasks import get_task
from pefteval.train import Encoded, steps_per_epoch, train_model

MODEL = "minilm-l6"
REPO_ROOT = Path(__file__).resolve().parents[1]
METHODS: dict[str, tuple[_MethodBase, float]] = {
    "fft": (FFTMethod(type="fft"), 5e-5),
    # the quickstart's learning rate for LoRA (chosen on validation); at 5e-4 LoRA stays at chance here
    "lora": (LoraMethod(type="lora", r=8, alpha=16, dropout=0.1), 2e-3),
}
# SST-2 dev has 872 sentences, so one sentence is 0.11 points and the binomial standard
# error of an accuracy near 85 % is ~1.2 points; fine-tuning the same model on a few
# thousand examples with another seed (or another precision) moves dev accuracy by 1-2
# points. A gap within 2 points is therefore seed noise, not a loss from bf16 training.
ACCURACY_TOLERANCE = 2.0
VALIDATION_EXAMPLES = 200  # pefteval's per-epoch validation pass (untimed; picks the best epoch)


@dataclass
class Data:
    train: Encoded
    validation: Encoded
    dev: Encoded
    pad_id: int


@dataclass
class Outcome:
    seconds: float
    dev_accuracy: float


def quiet() -> None:
    import datasets
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.utils.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    warnings.filterwarnings("ignore")


def default_data_dir() -> str | None:
    if os.environ.get("PEFTEVAL_DATA_DIR"):
        return os.environ["PEFTEVAL_DATA_DIR"]
    shared = REPO_ROOT.parent / "shared" / "data"
    return str(shared) if shared.is_dir() else None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=default_data_dir(),
                        help="folder holding glue/SST-2/{train,dev}.tsv "
                        "(default: $PEFTEVAL_DATA_DIR, else ../shared/data)")
    parser.add_argument("--quick", action="store_true", help="600 training examples (finishes in well under 3 minutes)")
    parser.add_argument("--train-examples", type=int, default=None, help="SST-2 training examples (default 2000)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--methods", default="fft,lora", help="comma-separated subset of: fft, lora")
    parser.add_argument("--device", default="auto", help="auto (CUDA when there is one, else CPU), cpu, cuda, cuda:N")
    parser.add_argument("--matched", action="store_true",
                        help="also run the Trainer with bf16 and length-grouped batches (like for like)")
    args = parser.parse_args(argv)
    if args.data_dir is None:
        parser.error("no data directory: pass --data-dir (a folder holding glue/SST-2/train.tsv and dev.tsv), "
                     "set PEFTEVAL_DATA_DIR, or put the data at ../shared/data next to the repository")
    if not (Path(args.data_dir) / "glue" / "SST-2" / "train.tsv").is_file():
        parser.error(f"{args.data_dir} has no glue/SST-2/train.tsv")
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown or not args.methods:
        parser.error(f"--methods: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(METHODS)}")
    if args.train_examples is None:
        args.train_examples = 600 if args.quick else 2000
    return args


def load_data(data_dir: str, n_train: int, max_length: int, tokenizer: Any) -> Data:
    cfg = DataConfig(max_train_examples=n_train, max_validation_examples=VALIDATION_EXAMPLES)
    splits = get_task("sst2").splits(Path(data_dir), cfg)
    # SST-2's test split here is the whole GLUE dev set (the train split exists locally)
    encoded = [encode(part, tokenizer, max_length) for part in (splits.train, splits.validation, splits.test)]
    return Data(*encoded, pad_id=tokenizer.pad_token_id)


def hyperparameters(lr: float, epochs: int, max_seq_length: int, device: str) -> TrainingConfig:
    # precision bf16 and group_by_length as pefteval's defaults
    return TrainingConfig(epochs=epochs, lr=lr, batch_size=32, warmup_ratio=0.06, weight_decay=0.0,
                          max_grad_norm=1.0, max_seq_length=max_seq_length, device=device)


def fresh_model(seed: int, device: torch.device) -> tuple[Any, bool]:
    torch.manual_seed(seed)  # the new classification head (and then the adapters) draw from this
    model, _, is_decoder = load_for_classification(MODEL, 2)
    return model.to(device), is_decoder


def dev_accuracy(model: Any, data: Data, precision: str) -> float:
    return accuracy(predict(model, data.dev, data.pad_id, 128, precision), data.dev.labels)


def run_pefteval(method: _MethodBase, hp: TrainingConfig, data: Data, seed: int) -> Outcome:
    model, _ = fresh_model(seed, resolve_device(hp.device))
    total_steps = steps_per_epoch(len(data.train), hp.batch_size) * hp.epochs
    applied = apply_method(model, method, total_steps)

    def validate(m: Any) -> float:
        return accuracy(predict(m, data.validation, data.pad_id, hp.eval_batch_size, hp.precision),
                        data.validation.labels)

    result = train_model(applied.model, data.train, validate, hp, seed, data.pad_id, on_step=applied.on_step)
    return Outcome(result.train_seconds, dev_accuracy(applied.model, data, hp.precision))


def trainer_dataset(train: Encoded) -> Any:
    import datasets

    rows = [{**f, "labels": y} for f, y in zip(train.features, train.labels, strict=True)]
    return datasets.Dataset.from_list(rows)


def run_trainer(method_name: str, hp: TrainingConfig, data: Data, seed: int, tokenizer: Any,
                matched: bool = False) -> Outcome:
    from transformers import DataCollatorWithPadding, PrinterCallback, Trainer, TrainingArguments

    device = resolve_device(hp.device)
    model, _ = fresh_model(seed, device)
    if method_name == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, lora_dropout=0.1))
    total_steps = steps_per_epoch(len(data.train), hp.batch_size) * hp.epochs
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, learning_rate=hp.lr, per_device_train_batch_size=hp.batch_size,
            num_train_epochs=hp.epochs,
            # transformers 5 has no warmup_ratio: a float < 1 is a ratio rounded up, an int a step
            # count; pass pefteval's count (rounded down) so both schedules are the same
            warmup_steps=int(hp.warmup_ratio * total_steps),
            weight_decay=hp.weight_decay, max_grad_norm=hp.max_grad_norm, seed=seed,
            report_to="none", save_strategy="no", eval_strategy="no", logging_strategy="no",
            disable_tqdm=True, use_cpu=device.type == "cpu",
            **({"bf16": True, "train_sampling_strategy": "group_by_length"} if matched else {}),
        )
        trainer = Trainer(model=model, args=args, train_dataset=trainer_dataset(data.train),
                          data_collator=DataCollatorWithPadding(tokenizer))
        trainer.remove_callback(PrinterCallback)  # it prints the final metrics dict
        seconds = trainer.train().metrics["train_runtime"]  # the epoch loops only
    return Outcome(seconds, dev_accuracy(model, data, "bf16" if matched else "fp32"))


def per_second(n_examples: int, epochs: int, outcome: Outcome) -> float:
    return n_examples * epochs / outcome.seconds


def majority_share(labels: list[int]) -> float:
    return max(labels.count(y) for y in set(labels)) / len(labels)


def report(name: str, n: int, hp: TrainingConfig, ours: Outcome, theirs: Outcome, chance: float) -> float:
    ours_rate, theirs_rate = per_second(n, hp.epochs, ours), per_second(n, hp.epochs, theirs)
    ratio = ours_rate / theirs_rate
    gap = 100 * (ours.dev_accuracy - theirs.dev_accuracy)
    verdict = "yes" if abs(gap) <= ACCURACY_TOLERANCE else "NO"
    print(f"\n{name.upper()}: {n} SST-2 examples x {hp.epochs} epoch(s), batch {hp.batch_size}, lr {hp.lr:g}, "
          f"max length {hp.max_seq_length}")
    print(f"  {'':34}{'examples/s':>11}{'train s':>9}{'dev acc':>9}")
    print(f"  {'pefteval (bf16, length-grouped)':34}{ours_rate:11.1f}{ours.seconds:9.2f}{100 * ours.dev_accuracy:9.2f}")
    print(f"  {'Trainer  (fp32, default sampler)':34}{theirs_rate:11.1f}{theirs.seconds:9.2f}"
          f"{100 * theirs.dev_accuracy:9.2f}")
    print(f"  ratio pefteval/Trainer: {ratio:.2f}")
    print(f"  dev accuracy within {ACCURACY_TOLERANCE:g} points (seed noise at this size): {verdict} "
          f"(pefteval - Trainer = {gap:+.2f} points)")
    if max(ours.dev_accuracy, theirs.dev_accuracy) < chance + ACCURACY_TOLERANCE / 100:
        print(f"  note: both are within {ACCURACY_TOLERANCE:g} points of always predicting the majority class "
              f"({100 * chance:.2f}): neither learned the task at this size, so accuracy compares nothing here")
    sys.stdout.flush()
    return ratio


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    quiet()
    tokenizer = load_tokenizer(resolve_model(MODEL))
    data = load_data(args.data_dir, args.train_examples, args.max_seq_length, tokenizer)
    device = resolve_device(args.device)
    print(f"model {MODEL}, SST-2: {len(data.train)} training examples, {len(data.dev)} dev sentences, "
          f"seed {args.seed}, device {describe_device(device)}")
    ratios = {}
    for name in args.methods:
        method, lr = METHODS[name]
        hp = hyperparameters(lr, args.epochs, args.max_seq_length, str(device))
        ours = run_pefteval(method, hp, data, args.seed)
        gc.collect()
        theirs = run_trainer(name, hp, data, args.seed, tokenizer)
        gc.collect()
        ratios[name] = report(name, len(data.train), hp, ours, theirs, majority_share(data.dev.labels))
        if args.matched:
            same = run_trainer(name, hp, data, args.seed, tokenizer, matched=True)
            gc.collect()
            rate = per_second(len(data.train), hp.epochs, same)
            label = "Trainer  (bf16, length-grouped)"
            print(f"  {label:34}{rate:11.1f}{same.seconds:9.2f}{100 * same.dev_accuracy:9.2f}")
            print(f"  like-for-like ratio pefteval/Trainer(bf16, grouped): "
                  f"{per_second(len(data.train), hp.epochs, ours) / rate:.2f}")
    print()
    print("examples/s ratio pefteval/Trainer: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))


if __name__ == "__main__":
    main()
