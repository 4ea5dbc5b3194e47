"""What matters on a CUDA machine, through pefteval's own training code, in a few minutes.

1. Throughput. FFT and LoRA (r 16 on q/k/v/o) of LLaMA-architecture decoders at two realistic
   sizes, built from their configs with random weights (throughput does not depend on the
   weights' values): SmolLM2-135M's config and a ~1.2B config (Llama-3.2-1B's). Synthetic token
   batches (full-length sequences of random tokens, every position a target) train for a fixed
   number of steps under bf16 autocast with ``pefteval.train.train_model``, and then the same
   model, data and steps through a plain ``transformers.Trainer`` (bf16) as the side-by-side
   baseline. Each prints examples/s, tokens/s, model FLOP/s, MFU against the device's dense bf16
   peak and the peak device memory. Model FLOPs per token: 6·N + 12·L·d·S for FFT, and
   4·N + 12·L·d·S for LoRA (a frozen weight gets no gradient of its own), with N the parameters
   outside the embeddings, L layers, d the hidden size and S the sequence length.
2. Agreement. A tiny LLaMA trains the same 8 steps on the CPU and on CUDA in fp32 with
   ``train_model``; the losses must agree within 1e-3 (relative).
3. With two or more GPUs (and in ``--cpu-smoke``, on gloo), the tiny LLaMA trained by two
   processes through ``accelerate launch`` against one process with the same global batch: DDP,
   DeepSpeed ZeRO-3 (``configs/accelerate/zero3.yaml``, when deepspeed is installed) and FSDP2
   (``configs/accelerate/fsdp.yaml``, CUDA only).

Peaks used for MFU (dense bf16, without sparsity): H100/H200 SXM 989 TFLOP/s, H100 PCIe 756,
A100 312, L40S 362, A10G 125, RTX 4090 165; another device prints MFU as "?" unless
``--peak-tflops`` is given.

Run from the repository root (``--quick`` for fewer steps; ``--cpu-smoke`` runs the whole script
on the CPU with tiny sizes, to check it before a GPU is at hand)::

    python benchmarks/gpu_check.py            # < 8 minutes on one H100/H200
    python benchmarks/gpu_check.py --cpu-smoke

Needs torch, transformers, peft, accelerate and pydantic (pefteval's config), nothing else. The
last line is ``headline: ...`` with the 1B model's FFT and LoRA tokens/s, MFU and ratio to the
Trainer.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pefteval.config import FFTMethod, LoraMethod, TrainingConfig  # noqa: E402
from pefteval.methods import apply_method  # noqa: E402
from pefteval.train import Encoded, train_model  # noqa: E402

PEAKS = {"H100 PCIe": 756, "H100": 989, "H200": 989, "A100": 312, "L40S": 362, "A10G": 125, "4090": 165}
SIZES = {
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True),
    "llama-1.2b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                       num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512, tie_word_embeddings=False),
}


@dataclass
class Figures:
    seconds: float
    examples: int
    tokens: int
    flops: float
    peak_mb: float

    def line(self, label: str, peak_tflops: float | None) -> str:
        rate = self.flops / self.seconds
        mfu = f"{100 * rate / (peak_tflops * 1e12):.1f} %" if peak_tflops else "?"
        return (f"  {label:<22}{self.examples / self.seconds:9.1f} ex/s {self.tokens / self.seconds:11.0f} tok/s "
                f"{rate / 1e12:8.1f} TFLOP/s  MFU {mfu:>7}  peak {self.peak_mb:8.0f} MB")


def build(size: str, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(**SIZES[size], max_position_embeddings=4096, attn_implementation="sdpa")
    return LlamaForCausalLM(config).to(dtype)


def synthetic(n: int, length: int, vocab: int, seed: int = 0) -> Encoded:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (n, length), generator=gen).tolist()
    return Encoded([{"input_ids": row, "attention_mask": [1] * length, "labels": row} for row in ids], [])


def flops_per_token(model: torch.nn.Module, method: str, length: int) -> float:
    config = model.config
    inner = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n and "lm_head" not in n)
    per_param = 6 if method == "fft" else 4
    return per_param * inner + 12 * config.num_hidden_layers * config.hidden_size * length


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    if given:
        return given
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAKS.items() if k in name), None)


def run_pefteval(model: torch.nn.Module, method: str, data: Encoded, batch: int, device: torch.device) -> Figures:
    hp = TrainingConfig(epochs=1, batch_size=batch, lr=1e-4, warmup_ratio=0.0, precision="bf16",
                        group_by_length=False, device=str(device), max_seq_length=len(data.features[0]["input_ids"]))
    spec = FFTMethod(type="fft") if method == "fft" else LoraMethod(type="lora", r=16, alpha=32, dropout=0.0,
                                                                    target_modules=["q_proj", "k_proj", "v_proj",
                                                                                    "o_proj"])
    applied = apply_method(model.to(device), spec, len(data) // batch, "lm")
    warm = Encoded(data.features[:batch], [])
    train_model(applied.model, warm, lambda m: 0.0, hp, 0, 0)  # kernels, allocator, autotuning
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    result = train_model(applied.model, data, lambda m: 0.0, hp, 0, 0)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0
    length = len(data.features[0]["input_ids"])
    return Figures(result.train_seconds, len(data), len(data) * length,
                   flops_per_token(model, method, length) * len(data) * length, peak)


def run_trainer(model: torch.nn.Module, method: str, data: Encoded, batch: int, device: torch.device) -> Figures:
    from transformers import PrinterCallback, Trainer, TrainingArguments, default_data_collator

    if method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                                                 target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    rows = [{k: torch.tensor(v) for k, v in f.items()} for f in data.features]
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, per_device_train_batch_size=batch, num_train_epochs=1,
                                 learning_rate=1e-4, bf16=device.type == "cuda", report_to="none",
                                 save_strategy="no", eval_strategy="no", logging_strategy="no", disable_tqdm=True,
                                 use_cpu=device.type == "cpu", dataloader_drop_last=True)
        trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=default_data_collator)
        trainer.remove_callback(PrinterCallback)  # it prints the final metrics dict
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        seconds = trainer.train().metrics["train_runtime"]
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0
    length = len(data.features[0]["input_ids"])
    return Figures(seconds, len(data), len(data) * length,
                   flops_per_token(model, method, length) * len(data) * length, peak)


def throughput(size: str, length: int, batch: int, steps: int, device: torch.device,
               peak: float | None) -> dict[str, tuple[Figures, Figures]]:
    base = build(size)
    params = sum(p.numel() for p in base.parameters())
    print(f"\n{size}: {params / 1e6:.0f}M parameters, sequence {length}, batch {batch}, {steps} steps, bf16 autocast",
          flush=True)
    out = {}
    for method in ("fft", "lora"):
        data = synthetic(batch * steps, length, base.config.vocab_size)
        ours = run_pefteval(copy.deepcopy(base), method, data, batch, device)
        gc.collect()
        torch.cuda.empty_cache() if device.type == "cuda" else None
        theirs = run_trainer(copy.deepcopy(base).to(device), method, data, batch, device)
        gc.collect()
        torch.cuda.empty_cache() if device.type == "cuda" else None
        print(ours.line(f"{method} pefteval", peak))
        print(theirs.line(f"{method} Trainer", peak))
        print(f"  {method} ratio pefteval/Trainer (tokens/s): {theirs.seconds / ours.seconds:.2f}", flush=True)
        out[method] = (ours, theirs)
    return out


def agreement(device: torch.device) -> float:
    """Relative difference of the tiny LLaMA's losses between the CPU and ``device`` (fp32)."""
    data = synthetic(64, 32, SIZES["tiny"]["vocab_size"], seed=1)
    curves = {}
    for where in (torch.device("cpu"), device):
        model = build("tiny").to(where)
        hp = TrainingConfig(epochs=2, batch_size=8, lr=1e-3, precision="fp32", group_by_length=False,
                            device=str(where), max_seq_length=32)
        curves[where.type] = [c["train_loss"] for c in train_model(model, data, lambda m: 0.0, hp, 0, 0).curve]
    cpu, other = curves["cpu"], curves[device.type]
    worst = max(abs(a - b) / abs(a) for a, b in zip(cpu, other))
    print(f"\nagreement, tiny LLaMA fp32: cpu losses {[round(x, 5) for x in cpu]}, {device.type} "
          f"{[round(x, 5) for x in other]}: worst relative difference {worst:.2e} "
          f"({'ok' if worst < 1e-3 else 'OVER 1e-3'})", flush=True)
    return worst


def ddp_curve(world: int, config: Path | None = None) -> list[float]:
    """The tiny LLaMA's losses trained on ``world`` processes (``accelerate launch`` of this script's
    ``--ddp-worker``, DDP or an accelerate config file's sharding; one process: here) with the same
    global batch."""
    if world == 1:
        return tiny_curve(None)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "curve.json"
        from pefteval.distributed import free_port

        how = ["--config_file", str(config)] if config else ["--multi_gpu", "--num_machines", "1",
                                                              "--mixed_precision", "no", "--dynamo_backend", "no"]
        command = [sys.executable, "-m", "accelerate.commands.launch", *how, "--num_processes", str(world),
                   "--main_process_port", str(free_port()), str(Path(__file__).resolve()), "--ddp-worker", str(out)]
        proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"accelerate launch failed: {proc.stderr[-2000:]}")
        return json.loads(out.read_text())


def tiny_curve(dist: Any) -> list[float]:
    device = torch.device("cuda", dist.rank if dist else 0) if torch.cuda.is_available() else torch.device("cpu")
    model = build("tiny").to(device)
    hp = TrainingConfig(epochs=2, batch_size=8, lr=1e-3, precision="fp32", group_by_length=False,
                        device=str(device), max_seq_length=32)
    data = synthetic(64, 32, SIZES["tiny"]["vocab_size"], seed=2)
    return [c["train_loss"] for c in train_model(model, data, lambda m: 0.0, hp, 0, 0, dist=dist).curve]


def ddp_worker(out: Path) -> None:
    from pefteval.distributed import Dist

    dist = Dist.from_env("cuda" if torch.cuda.is_available() else "cpu")
    curve = tiny_curve(dist)
    if dist.is_main:
        out.write_text(json.dumps(curve))


def ddp_check(config: Path | None = None, one: list[float] | None = None) -> str:
    """Two processes (DDP, or the sharding of an accelerate config in configs/accelerate/) against one."""
    one = one if one is not None else ddp_curve(1)
    two = ddp_curve(2, config)
    worst = max(abs(a - b) / abs(a) for a, b in zip(one, two))
    return (f"tiny LLaMA losses, 1 process {[round(x, 5) for x in one]}, 2 processes {[round(x, 5) for x in two]}: "
            f"worst relative difference {worst:.2e} ({'ok' if worst < 1e-4 else 'OVER 1e-4'})")


def sharded_checks(cuda: bool) -> list[tuple[str, str]]:
    """DDP, DeepSpeed ZeRO-3 (when installed) and FSDP2 (CUDA only) on two processes."""
    import importlib.util

    one = ddp_curve(1)
    checks = [("DDP", ddp_check(None, one))]
    zero3 = REPO / "configs" / "accelerate" / "zero3.yaml"
    checks.append(("DeepSpeed ZeRO-3", ddp_check(zero3, one) if importlib.util.find_spec("deepspeed")
                   else "skipped (deepspeed is not installed: pip install 'pefteval[deepspeed]')"))
    fsdp = REPO / "configs" / "accelerate" / "fsdp.yaml"
    checks.append(("FSDP2", ddp_check(fsdp, one) if cuda else "skipped (accelerate runs FSDP on CUDA only)"))
    return checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU: checks the script runs")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of this device")
    parser.add_argument("--ddp-worker", type=Path, help=argparse.SUPPRESS)  # one rank of the DDP check
    args = parser.parse_args()
    if args.ddp_worker is not None:
        ddp_worker(args.ddp_worker)
        return
    started = time.time()
    if args.cpu_smoke:
        device, plan = torch.device("cpu"), [("tiny", 64, 4, 3)]
    else:
        if not torch.cuda.is_available():
            sys.exit("no CUDA device here: run with --cpu-smoke to check the script on the CPU")
        device = torch.device("cuda", 0)
        steps = 10 if args.quick else 30
        plan = [("smollm2-135m", 1024, 32, steps), ("llama-1.2b", 1024, 8, steps)]
    peak = peak_tflops(device, args.peak_tflops)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}; dense bf16 peak used for MFU: {f'{peak:g} TFLOP/s' if peak else 'unknown'}; "
          f"torch {torch.__version__}, {torch.cuda.device_count()} GPU(s)", flush=True)
    results = {size: throughput(size, length, batch, steps, device, peak) for size, length, batch, steps in plan}
    worst = agreement(device if device.type == "cuda" else torch.device("cpu"))
    if torch.cuda.device_count() >= 2 or args.cpu_smoke:
        for label, line in sharded_checks(device.type == "cuda"):
            print(f"\n{label}, 2 processes vs 1: {line}", flush=True)
    else:
        print("\nDDP, DeepSpeed ZeRO-3 and FSDP2, 2 processes vs 1: skipped (one GPU)")
    size = plan[-1][0]
    (fft, fft_t), (lora, lora_t) = results[size]["fft"], results[size]["lora"]

    def mfu(f: Figures) -> str:
        return f"{100 * f.flops / f.seconds / (peak * 1e12):.1f}%" if peak else "?"

    print(f"\nheadline: {size} on {name}: FFT {fft.tokens / fft.seconds:.0f} tok/s (MFU {mfu(fft)}, "
          f"{fft_t.seconds / fft.seconds:.2f}x Trainer), LoRA {lora.tokens / lora.seconds:.0f} tok/s "
          f"(MFU {mfu(lora)}, {lora_t.seconds / lora.seconds:.2f}x Trainer), CPU/CUDA loss agreement "
          f"{worst:.1e}, {time.time() - started:.0f} s in all")


if __name__ == "__main__":
    main()
