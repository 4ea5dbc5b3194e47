"""Where the models pefteval saves load: each artefact kind against each loader, on the packaged
models and real data, with the figures that show the loaded model is the trained one.

    python benchmarks/ecosystem_check.py --data-dir ../shared/data [--lm-eval-python PATH]

1. Trains a few small trials into a scratch results directory (`pefteval run`, save_weights: all):
   MiniLM on SST-2 (FFT, LoRA, IA3, BitFit) and SmolLM2-135M on ViGGO (FFT, LoRA).
2. Loads every artefact with the library a user would use and checks it predicts what the trial
   recorded in predictions.json (classification: every test label; ViGGO: greedy generations):
   peft (`PeftModel.from_pretrained(base, adapter/)`), transformers (`AutoModelFor...from_pretrained`
   on model/ and on `pefteval export --merge`), `pefteval.load_bitfit`.
3. With --lm-eval-python (an interpreter that has lm-evaluation-harness installed), loads the decoder
   artefacts with lm-eval's `HFLM` (`peft=` for the adapter, `gguf_file=` for the packaged GGUF base,
   `pretrained=` for model/ and the merged export) and compares log-likelihoods of a few ViGGO
   targets: the adapter through `peft=` and its merged export must agree, and differ from the base.
4. vLLM is checked for being importable (its wheels need CUDA builds of torch and a GPU).
Prints one markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

ENCODER = {"name": "eco_minilm", "model": "minilm-l6", "tasks": ["sst2"], "seeds": [0], "save_weights": "all",
           "training": {"epochs": 1, "batch_size": 16, "max_seq_length": 64, "precision": "fp32"},
           "data": {"max_train_examples": 128, "max_validation_examples": 64, "max_eval_examples": 96},
           "analyses": {"capture": False},
           "methods": [{"type": "fft", "training": {"lr": 1e-4}}, {"type": "lora", "training": {"lr": 2e-3}},
                       {"type": "ia3", "training": {"lr": 3e-2}}, {"type": "bitfit", "training": {"lr": 2e-3}}]}
DECODER = {"name": "eco_smollm2", "model": "smollm2-135m", "tasks": ["viggo"], "seeds": [0], "save_weights": "all",
           "training": {"epochs": 1, "batch_size": 8, "max_seq_length": 384, "max_new_tokens": 48,
                        "precision": "fp32"},
           "data": {"max_train_examples": 16, "validation_size": 4, "max_validation_examples": 4,
                    "max_eval_examples": 6},
           "analyses": {"capture": False},
           "methods": [{"type": "fft", "training": {"lr": 2e-5}},
                       {"type": "lora", "r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"],
                        "training": {"lr": 1e-3}}]}

LM_EVAL_SNIPPET = r'''
import json, sys
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM
spec = json.loads(sys.argv[1])
requests = [Instance(request_type="loglikelihood", doc={}, arguments=(c, t), idx=i)
            for i, (c, t) in enumerate(spec["pairs"])]
out = {}
for name, kwargs in spec["models"].items():
    try:
        lm = HFLM(batch_size=1, device="cpu", dtype="float32", **kwargs)
        out[name] = {"ok": True, "ll": [float(ll) for ll, _ in lm.loglikelihood(requests)]}
    except Exception as err:
        out[name] = {"ok": False, "error": f"{type(err).__name__}: {err}"[:300]}
print("RESULT " + json.dumps(out))
'''


def run_sweep(cfg: dict, scratch: Path, data_dir: str) -> Path:
    path = scratch / f"{cfg['name']}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    out = scratch / cfg["name"]
    proc = subprocess.run([sys.executable, "-m", "pefteval", "run", str(path), "--out", str(out), "--data-dir",
                           data_dir], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"pefteval run {path} failed:\n{proc.stderr[-3000:]}")
    return out


def records(out: Path) -> dict[str, dict]:
    from pefteval.store import ResultStore

    with ResultStore(out / "results.sqlite", read_only=True) as store:
        return {r["config"]["method_label"]: r for r in store.records()}


def predict_like_the_trial(model, run_dir: Path, data_dir: str) -> list:
    from pefteval.kinds import prepare, read_trial
    from pefteval.models import load_tokenizer

    trial, _ = read_trial(run_dir)
    task, kind, source, _config = prepare(trial)
    kind.tokenizer = load_tokenizer(source)
    if kind.is_decoder or task.kind == "generation":
        kind.tokenizer.padding_side = "left"
    examples = task.splits(Path(data_dir), trial.data, trial.seed).eval_splits()["test"]
    predicted = kind.predict(model.eval(), examples)
    labels = task.label_names
    return [labels[p] if labels and isinstance(p, int) else p for p in predicted]


def recorded(run_dir: Path) -> list:
    return [row["prediction"] for row in json.loads((run_dir / "predictions.json").read_text())["test"]]


def agreement(model, run_dir: Path, data_dir: str) -> str:
    got, want = predict_like_the_trial(model, run_dir, data_dir), recorded(run_dir)
    same = sum(a == b for a, b in zip(got, want))
    return f"loads; predicts as recorded: {same}/{len(want)}"


def export(out: Path, key: str, to: Path, merge: bool) -> Path:
    args = [sys.executable, "-m", "pefteval", "export", str(out), "--trial", key, "--to", str(to)]
    proc = subprocess.run(args + (["--merge"] if merge else []), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip()[-500:])
    return to


def check_encoder(out: Path, data_dir: str, scratch: Path) -> list[list[str]]:
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from pefteval import load_bitfit
    from pefteval.models import resolve_model

    base_dir = resolve_model("minilm-l6").path
    rows = []
    for method, rec in records(out).items():
        run_dir = out / rec["run_dir"]
        if method == "fft":
            model = AutoModelForSequenceClassification.from_pretrained(run_dir / "model")
            rows.append(["MiniLM FFT `model/`", "n/a", agreement(model, run_dir, data_dir)])
        elif method == "bitfit":
            rows.append(["MiniLM BitFit `bitfit/`", "n/a", "`pefteval.load_bitfit`: "
                         + agreement(load_bitfit(run_dir / "bitfit"), run_dir, data_dir)])
            merged = export(out, rec["key"], scratch / f"export_{method}", merge=True)
            model = AutoModelForSequenceClassification.from_pretrained(merged)
            rows.append(["MiniLM BitFit, `export --merge`", "n/a", agreement(model, run_dir, data_dir)])
        else:
            base = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=2)
            model = PeftModel.from_pretrained(base, run_dir / "adapter")
            rows.append([f"MiniLM {method} `adapter/`", agreement(model, run_dir, data_dir), "n/a (an adapter)"])
            merged = export(out, rec["key"], scratch / f"export_{method}", merge=True)
            model = AutoModelForSequenceClassification.from_pretrained(merged)
            rows.append([f"MiniLM {method}, `export --merge`", "n/a", agreement(model, run_dir, data_dir)])
    return rows


def check_decoder(out: Path, data_dir: str, scratch: Path, lm_eval_python: str | None) -> tuple[list, list]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from pefteval.models import resolve_model

    source = resolve_model("smollm2-135m")
    recs = records(out)
    rows = []
    lora, fft = recs["lora"], recs["fft"]
    lora_dir, fft_dir = out / lora["run_dir"], out / fft["run_dir"]
    base = AutoModelForCausalLM.from_pretrained(source.path, gguf_file=source.gguf_file, dtype="float32")
    model = PeftModel.from_pretrained(base, lora_dir / "adapter")
    rows.append(["SmolLM2 LoRA `adapter/` (GGUF base)", agreement(model, lora_dir, data_dir), "n/a (an adapter)"])
    merged = export(out, lora["key"], scratch / "export_smollm2_lora", merge=True)
    rows.append(["SmolLM2 LoRA, `export --merge`", "n/a",
                 agreement(AutoModelForCausalLM.from_pretrained(merged, dtype="float32"), lora_dir, data_dir)])
    rows.append(["SmolLM2 FFT `model/`", "n/a",
                 agreement(AutoModelForCausalLM.from_pretrained(fft_dir / "model", dtype="float32"), fft_dir,
                           data_dir)])
    lm_eval = []
    if lm_eval_python:
        preds = json.loads((lora_dir / "predictions.json").read_text())["test"]
        pairs = [["Give the meaning representation of: ", str(row["target"])] for row in preds[:3]]
        spec = {"pairs": pairs, "models": {
            "base (GGUF)": {"pretrained": source.path, "gguf_file": source.gguf_file},
            "LoRA adapter/ via peft=": {"pretrained": source.path, "gguf_file": source.gguf_file,
                                        "peft": str(lora_dir / "adapter")},
            "LoRA export --merge": {"pretrained": str(merged)},
            "FFT model/": {"pretrained": str(fft_dir / "model")}}}
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        proc = subprocess.run([lm_eval_python, "-c", LM_EVAL_SNIPPET, json.dumps(spec)], capture_output=True,
                              text=True, env=env)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            lm_eval = [["lm-eval", f"did not run: {proc.stderr.strip()[-400:]}"]]
        else:
            result = json.loads(line[len("RESULT "):])
            for name, got in result.items():
                lm_eval.append([name, f"loads; log-likelihoods {', '.join(f'{v:.4f}' for v in got['ll'])}"
                                if got["ok"] else f"fails: {got['error']}"])
            if all(g["ok"] for g in result.values()):
                a, m, b = (result[k]["ll"] for k in ("LoRA adapter/ via peft=", "LoRA export --merge", "base (GGUF)"))
                lm_eval.append(["adapter vs merged (max abs diff)", f"{max(abs(x - y) for x, y in zip(a, m)):.2e}"])
                lm_eval.append(["adapter vs base (max abs diff)", f"{max(abs(x - y) for x, y in zip(a, b)):.2e}"])
    return rows, lm_eval


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--lm-eval-python", default=None, help="a Python interpreter with lm-eval installed")
    parser.add_argument("--keep", default=None, help="keep the scratch results directory here")
    args = parser.parse_args()
    scratch = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="pefteval-eco-"))
    scratch.mkdir(parents=True, exist_ok=True)
    started = time.time()
    enc = run_sweep(ENCODER, scratch, args.data_dir)
    dec = run_sweep(DECODER, scratch, args.data_dir)
    trained = time.time() - started
    rows = check_encoder(enc, args.data_dir, scratch)
    dec_rows, lm_eval = check_decoder(dec, args.data_dir, scratch, args.lm_eval_python)
    rows += dec_rows
    try:
        import vllm  # noqa: F401

        vllm_note = "installed"
    except ImportError:
        vllm_note = ("not installed: vLLM's wheels need CUDA builds of torch (vllm 0.33.0 pins torch==2.14.0) "
                     "and a GPU")
    print(f"trained {len(records(enc)) + len(records(dec))} trials in {trained:.0f} s (scratch: {scratch})\n")
    print("| artefact | peft `PeftModel.from_pretrained` | transformers `AutoModelFor...from_pretrained` |")
    print("|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if lm_eval:
        print("\nlm-evaluation-harness `HFLM` (ViGGO targets' log-likelihoods):\n")
        print("| model | result |\n|---|---|")
        for row in lm_eval:
            print("| " + " | ".join(row) + " |")
    print(f"\nvLLM: {vllm_note}")
    if not args.keep:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
