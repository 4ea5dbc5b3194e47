"""One trial, start to finish: load model, apply method, load splits, train, select
the best epoch on validation, evaluate every split (clean and adversarial), record."""

from __future__ import annotations

import platform
import random
import resource
import time
from pathlib import Path
from typing import Any

from pefteval.train import ProgressFn


def package_versions() -> dict[str, str]:
    import datasets
    import peft
    import torch
    import transformers

    import pefteval

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "datasets": datasets.__version__, "pefteval": pefteval.__version__}


def device_description() -> str:
    import torch

    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux; the trial has this process to itself, so this is the trial's peak
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_trial(config: dict[str, Any], data_dir: Path | None, run_dir: Path,
              progress: ProgressFn | None = None) -> dict[str, Any]:
    import torch
    from pydantic import TypeAdapter

    from pefteval.config import DataConfig, MethodConfig
    from pefteval.methods import apply_method
    from pefteval.metrics import accuracy
    from pefteval.models import load_for_classification
    from pefteval.tasks import get_task
    from pefteval.train import encode, predict, steps_per_epoch, train_model

    started = time.time()
    hp = config["training"]
    seed_everything(config["seed"])
    task = get_task(config["task"])
    if task.kind == "qa":
        return run_qa_trial(config, data_dir, run_dir, progress)
    splits = task.loader(data_dir, DataConfig(**config["data"]))
    method = TypeAdapter(MethodConfig).validate_python({**config["method"], "name": config["method_label"]})
    model, tokenizer, is_decoder = load_for_classification(config["model"], task.num_labels, list(task.label_names))
    total_steps = steps_per_epoch(len(splits.train), hp["batch_size"]) * hp["epochs"]
    applied = apply_method(model, method, total_steps, is_decoder)
    model = applied.model
    pad_id = tokenizer.pad_token_id
    encoded = {name: encode(examples, tokenizer, hp["max_seq_length"])
               for name, examples in {"train": splits.train, **splits.eval_splits()}.items()}
    result = train_model(model, encoded["train"], encoded["validation"], hp, config["seed"], pad_id,
                         on_step=applied.on_step, progress=progress)
    if progress is not None:
        progress({"event": "evaluate"})
    metrics = {}
    eval_started = time.perf_counter()
    for name in splits.eval_splits():
        data = encoded[name]
        preds = predict(model, data, pad_id, hp["eval_batch_size"], hp["precision"])
        metrics[name] = {"accuracy": accuracy(preds, data.labels), "n": len(data)}
    eval_seconds = time.perf_counter() - eval_started
    if config.get("save_weights", True):
        save_trainable(model, run_dir)
    return {
        "key": config.get("key"),
        "status": "complete",
        "metrics": metrics,
        "curve": result.curve,
        "best_epoch": result.best_epoch,
        "params": {"trainable": applied.trainable_params, "total": applied.total_params,
                   "base": applied.base_params, "head": applied.head_params},
        "train_examples": len(splits.train),
        "train_source": splits.train_source,
        "train_seconds": result.train_seconds,
        "train_examples_per_second": result.examples_seen / max(result.train_seconds, 1e-9),
        "eval_seconds": eval_seconds,
        "wall_seconds": time.time() - started,
        "peak_rss_mb": peak_rss_mb(),
        "notes": splits.notes + applied.notes,
        "is_decoder": is_decoder,
        "versions": package_versions(),
        "device": device_description(),
        "threads": torch.get_num_threads(),
    }


def save_trainable(model: Any, run_dir: Path) -> None:
    from safetensors.torch import save_file

    state = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    tmp = run_dir / ".trainable.safetensors.tmp"
    save_file(state, str(tmp))
    tmp.replace(run_dir / "trainable.safetensors")


def evaluate_qa_split(predictor: Any, examples: list[Any], adversarial: bool,
                      cache: dict[tuple[str, str, str], str] | None = None) -> tuple[dict[str, Any], list[str]]:
    """SQuAD EM/F1. An adversarial set also gets the worst case per source question and
    ``source_*``: the plain score on its original questions, the clean baseline of the worst case.
    ``cache`` (keyed by id, question and context) predicts the originals, which every adversarial
    set repeats, once."""
    from pefteval.metrics import squad_metrics
    from pefteval.tasks import source_id

    cache = {} if cache is None else cache
    keys = [(x.id, x.question, x.context) for x in examples]
    todo = [x for x, k in zip(examples, keys) if k not in cache]
    for x, pred in zip(todo, predictor.predict(todo) if todo else []):
        cache[(x.id, x.question, x.context)] = pred
    predictions = [cache[k] for k in keys]
    truths = [x.answers for x in examples]
    if not adversarial:
        return squad_metrics(predictions, truths), predictions
    groups = [source_id(x.id) for x in examples]
    metrics = squad_metrics(predictions, truths, groups)
    originals = [i for i, (x, g) in enumerate(zip(examples, groups)) if x.id == g]
    if originals:
        clean = squad_metrics([predictions[i] for i in originals], [truths[i] for i in originals])
        metrics["source_exact_match"], metrics["source_f1"] = clean["exact_match"], clean["f1"]
    return metrics, predictions


def run_qa_trial(config: dict[str, Any], data_dir: Path | None, run_dir: Path,
                 progress: ProgressFn | None = None) -> dict[str, Any]:
    """Reading comprehension: extractive span prediction with an encoder, generated answers with a
    decoder; validation F1 selects the epoch; every clean and adversarial split is scored with
    SQuAD EM/F1, and model-dependent attacks (AddAny) are generated against the trained model."""
    import torch
    from pydantic import TypeAdapter

    from pefteval.adversarial.squad import generated_set
    from pefteval.config import AttackConfig, DataConfig, MethodConfig
    from pefteval.methods import apply_method
    from pefteval.metrics import squad_metrics
    from pefteval.qa import QAPredictor, load_qa_model, prepare_generative_train, prepare_train_windows
    from pefteval.store import atomic_write_json
    from pefteval.tasks import get_task
    from pefteval.train import steps_per_epoch, train_model

    started = time.time()
    hp = config["training"]
    task = get_task(config["task"])
    data_cfg = DataConfig(**config["data"])
    splits = task.loader(data_dir, data_cfg)
    method = TypeAdapter(MethodConfig).validate_python({**config["method"], "name": config["method_label"]})
    model, tokenizer, is_decoder = load_qa_model(config["model"])
    if is_decoder:
        train = prepare_generative_train(splits.train, tokenizer, hp["max_seq_length"])
    else:
        train = prepare_train_windows(splits.train, tokenizer, hp["max_seq_length"], hp["doc_stride"])
    total_steps = steps_per_epoch(len(train), hp["batch_size"]) * hp["epochs"]
    applied = apply_method(model, method, total_steps, is_decoder, task_kind="qa")
    predictor = QAPredictor(applied.model, tokenizer, is_decoder, hp, model_id=config.get("key") or run_dir.name)

    def validate(_model: Any) -> float:
        return squad_metrics(predictor.predict(splits.validation), [x.answers for x in splits.validation])["f1"]

    result = train_model(applied.model, train, validate, hp, config["seed"], tokenizer.pad_token_id,
                         on_step=applied.on_step, progress=progress, metric="f1")
    if progress is not None:
        progress({"event": "evaluate"})
    metrics: dict[str, Any] = {}
    predictions: dict[str, dict[str, str]] = {}
    eval_started = time.perf_counter()
    cache: dict[tuple[str, str, str], str] = {}
    for name, examples in splits.eval_splits().items():
        metrics[name], preds = evaluate_qa_split(predictor, examples, name in splits.adversarial, cache)
        predictions[name] = {x.id: p for x, p in zip(examples, preds)}
    attack_seconds = 0.0
    for name, sources in splits.model_attacks.items():
        if progress is not None:
            progress({"event": "attack", "attack": name, "questions": len(sources)})
        attack_started = time.perf_counter()
        examples = generated_set(name, sources, AttackConfig(**config["data"]["attack"]), pool=splits.attack_pool,
                                 model=predictor, source_key=splits.attack_source_key)
        attack_seconds += time.perf_counter() - attack_started
        metrics[name], preds = evaluate_qa_split(predictor, examples, adversarial=True, cache=cache)
        predictions[name] = {x.id: p for x, p in zip(examples, preds)}
    eval_seconds = time.perf_counter() - eval_started - attack_seconds
    atomic_write_json(run_dir / "predictions.json", predictions)
    if config.get("save_weights", True):
        save_trainable(applied.model, run_dir)
    return {
        "key": config.get("key"),
        "status": "complete",
        "metrics": metrics,
        "curve": result.curve,
        "best_epoch": result.best_epoch,
        "params": {"trainable": applied.trainable_params, "total": applied.total_params,
                   "base": applied.base_params, "head": applied.head_params},
        "train_examples": len(splits.train),
        "train_features": len(train),
        "train_source": splits.train_source,
        "train_seconds": result.train_seconds,
        "train_examples_per_second": result.examples_seen / max(result.train_seconds, 1e-9),
        "eval_seconds": eval_seconds,
        "attack_seconds": attack_seconds,
        "wall_seconds": time.time() - started,
        "peak_rss_mb": peak_rss_mb(),
        "notes": splits.notes + applied.notes,
        "is_decoder": is_decoder,
        "qa_mode": "generative" if is_decoder else "extractive",
        "versions": package_versions(),
        "device": device_description(),
        "threads": torch.get_num_threads(),
    }
