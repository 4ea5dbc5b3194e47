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


def complete_record(config: dict[str, Any], started: float, applied: Any, result: Any,
                    **fields: Any) -> dict[str, Any]:
    """A finished trial's record: what every kind of trial reports (parameter counts, training
    curve and time, memory, environment) plus its own ``fields`` (metrics, notes, ...)."""
    import torch

    return {
        "key": config.get("key"),
        "status": "complete",
        "curve": result.curve,
        "best_epoch": result.best_epoch,
        "params": {"trainable": applied.trainable_params, "total": applied.total_params,
                   "base": applied.base_params, "head": applied.head_params},
        "train_seconds": result.train_seconds,
        "train_examples_per_second": result.examples_seen / max(result.train_seconds, 1e-9),
        **fields,
        "wall_seconds": time.time() - started,
        "peak_rss_mb": peak_rss_mb(),
        "versions": package_versions(),
        "device": device_description(),
        "threads": torch.get_num_threads(),
    }


def run_trial(config: dict[str, Any], data_dir: Path | None, run_dir: Path,
              progress: ProgressFn | None = None) -> dict[str, Any]:
    import torch
    from pydantic import TypeAdapter

    from pefteval.analysis.capture import analysis_options
    from pefteval.analysis.probe import make_probe
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
    if task.kind == "generation":
        return run_generation_trial(config, data_dir, run_dir, progress)
    if config["data"].get("k_shot") is not None:
        return run_fewshot_trial(config, data_dir, run_dir, progress)
    splits = task.loader(data_dir, DataConfig(**config["data"]))
    method = TypeAdapter(MethodConfig).validate_python({**config["method"], "name": config["method_label"]})
    rng_state = torch.get_rng_state()
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
    record = complete_record(config, started, applied, result,
                             metrics=metrics,
                             train_examples=len(splits.train),
                             train_source=splits.train_source,
                             eval_seconds=eval_seconds,
                             notes=splits.notes + applied.notes,
                             is_decoder=is_decoder)
    val = encoded["validation"]
    probe = make_probe(val.features, pad_id, val.labels, analysis_options(config).probe_examples)
    return finish(record, config, model, run_dir, probe, rng_state, progress)


def finish(record: dict[str, Any], config: dict[str, Any], model: Any, run_dir: Path, probe: Any,
           rng_state: Any, progress: ProgressFn | None) -> dict[str, Any]:
    """Save the trained tensors and what the weight analyses read, after the record (and its
    peak memory) is taken, so analysis work never counts as the method's cost."""
    from pefteval.analysis.capture import finish_trial

    if progress is not None:
        progress({"event": "analyse"})
    started = time.perf_counter()
    try:
        record["analysis_seconds"] = finish_trial(config, model, run_dir, probe, rng_state, save_trainable)
    except Exception as err:  # noqa: BLE001 - the trained, evaluated trial stands; its analysis files do not
        import traceback

        traceback.print_exc()
        record["analysis_seconds"] = time.perf_counter() - started
        record["analysis_error"] = f"{type(err).__name__}: {err}"
        record["notes"] = [*record.get("notes", []),
                           f"weight-analysis capture failed ({type(err).__name__}: {err}; traceback in log.txt); "
                           "the trial's metrics are unaffected"]
    return record


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
    from pefteval.analysis.capture import analysis_options
    from pefteval.analysis.probe import make_probe
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
    rng_state = torch.get_rng_state()
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
    record = complete_record(config, started, applied, result,
                             metrics=metrics,
                             train_examples=len(splits.train),
                             train_features=len(train),
                             train_source=splits.train_source,
                             eval_seconds=eval_seconds,
                             attack_seconds=attack_seconds,
                             notes=splits.notes + applied.notes,
                             is_decoder=is_decoder,
                             qa_mode="generative" if is_decoder else "extractive")
    n = analysis_options(config).probe_examples
    if is_decoder:
        probe_data = prepare_generative_train(splits.validation[:n], tokenizer, hp["max_seq_length"])
    else:
        probe_data = prepare_train_windows(splits.validation[:n], tokenizer, hp["max_seq_length"], hp["doc_stride"])
    probe = make_probe(probe_data.features, tokenizer.pad_token_id, None, n)
    return finish(record, config, applied.model, run_dir, probe, rng_state, progress)


def run_generation_trial(config: dict[str, Any], data_dir: Path | None, run_dir: Path,
                         progress: ProgressFn | None = None) -> dict[str, Any]:
    """Instruction-style generation (GSM8K, SQL, ViGGO) with a decoder LM: the loss is on the
    target tokens; validation and test are scored on greedy generations (left-padded batches,
    KV cache, ``max_new_tokens`` cap) with the task's metric, which also selects the epoch."""
    import torch
    from pydantic import TypeAdapter

    from pefteval.analysis.capture import analysis_options
    from pefteval.analysis.probe import make_probe
    from pefteval.config import DataConfig, MethodConfig
    from pefteval.errors import UserError
    from pefteval.gen_metrics import score_generation
    from pefteval.lm import chat_prompt, prepare_lm_train
    from pefteval.methods import apply_method
    from pefteval.qa import generate_answers, load_qa_model
    from pefteval.store import atomic_write_json
    from pefteval.tasks import get_task
    from pefteval.train import steps_per_epoch, train_model

    started = time.time()
    hp = config["training"]
    task = get_task(config["task"])
    splits = task.loader(data_dir, DataConfig(**config["data"]))
    method = TypeAdapter(MethodConfig).validate_python({**config["method"], "name": config["method_label"]})
    rng_state = torch.get_rng_state()
    model, tokenizer, is_decoder = load_qa_model(config["model"])
    if not is_decoder:
        raise UserError(f"task {task.name} generates text and needs a decoder language model (e.g. smollm2-135m "
                        f"or a LLaMA hub id); {config['model']} is an encoder")
    train, skipped = prepare_lm_train(splits.train, tokenizer, hp["max_seq_length"])
    notes = list(splits.notes)
    if skipped:
        notes.append(f"{task.name}: {skipped} training example(s) left out, their prompt alone exceeds "
                     f"max_seq_length {hp['max_seq_length']}")
    if len(train) == 0:
        raise UserError(f"task {task.name}: no training example fits max_seq_length {hp['max_seq_length']}; raise it")
    total_steps = steps_per_epoch(len(train), hp["batch_size"]) * hp["epochs"]
    applied = apply_method(model, method, total_steps, True, task_kind="generation")

    def generate(examples: list[Any]) -> list[str]:
        prompts = [chat_prompt(tokenizer, x.prompt) for x in examples]
        return generate_answers(applied.model, tokenizer, prompts, hp["eval_batch_size"], hp["max_new_tokens"],
                                hp["precision"], first_line=False)

    def validate(_model: Any) -> float:
        return score_generation(task.name, generate(splits.validation), splits.validation)["accuracy"]

    result = train_model(applied.model, train, validate, hp, config["seed"], tokenizer.pad_token_id,
                         on_step=applied.on_step, progress=progress, metric=task.metric)
    if progress is not None:
        progress({"event": "evaluate"})
    eval_started = time.perf_counter()
    metrics: dict[str, Any] = {}
    predictions: dict[str, dict[str, dict[str, str]]] = {}
    # validation was generated after every epoch; the kept epoch's score is the best one
    metrics["validation"] = {"accuracy": result.best_validation, "n": len(splits.validation)}
    preds = generate(splits.test)
    metrics["test"] = score_generation(task.name, preds, splits.test)
    predictions["test"] = {x.id: {"prediction": p, "target": x.target} for x, p in zip(splits.test, preds)}
    eval_seconds = time.perf_counter() - eval_started
    atomic_write_json(run_dir / "predictions.json", predictions)
    record = complete_record(config, started, applied, result,
                             metrics=metrics,
                             train_examples=len(train),
                             train_source=splits.train_source,
                             eval_seconds=eval_seconds,
                             eval_examples_per_second=len(splits.test) / max(eval_seconds, 1e-9),
                             notes=notes + applied.notes,
                             is_decoder=True)
    n = analysis_options(config).probe_examples
    probe_data, _ = prepare_lm_train(splits.validation[:n], tokenizer, hp["max_seq_length"])
    probe = make_probe(probe_data.features, tokenizer.pad_token_id, None, n)
    return finish(record, config, applied.model, run_dir, probe, rng_state, progress)


FEWSHOT_MAX_VALIDATION_PER_CLASS = 16


def fewshot_samples(pool: list[Any], num_classes: int, k: int, seed: int) -> tuple[list[Any], list[Any], list[str]]:
    """The seed's k-shot training sample and its validation sample. Each class is shuffled by the
    seed alone; training takes its first k, validation its last min(k, 16) (as few labelled
    examples as the training set has, up to 16, as LM-BFF sizes its dev set), so for one seed a
    smaller k's training sample is part of every larger one. A class with fewer than k + its
    validation share gives training what is left, with a note."""
    from pefteval.errors import DataError
    from pefteval.tasks.fewshot import group_by_class

    groups = group_by_class(pool, num_classes)
    train, validation, notes = [], [], []
    for label, members in enumerate(groups):
        order = list(members)
        random.Random(f"{seed}:{label}").shuffle(order)
        n_val = min(k, FEWSHOT_MAX_VALIDATION_PER_CLASS)
        if len(order) < 2:
            raise DataError(f"class {label} has {len(order)} example(s) in the training pool; "
                            "few-shot needs at least 2")
        n_val = min(n_val, len(order) // 2)
        n_train = min(k, len(order) - n_val)
        if n_train < k:
            notes.append(f"class {label}: only {n_train} training examples for k={k} (pool {len(order)}, "
                         f"{n_val} kept for validation)")
        train += order[:n_train]
        validation += order[len(order) - n_val:]
    return train, validation, notes


def run_fewshot_trial(config: dict[str, Any], data_dir: Path | None, run_dir: Path,
                      progress: ProgressFn | None = None) -> dict[str, Any]:
    """Prompt-based few-shot classification with a decoder LM (the paper's Appendix D): k training
    examples per class drawn by the seed; every input is one demonstration per class followed by
    the query; the loss is cross-entropy over the label words' logits at the label position and
    prediction is their argmax (no new head)."""
    import torch
    from pydantic import TypeAdapter

    from pefteval.analysis.capture import analysis_options
    from pefteval.analysis.probe import make_probe
    from pefteval.config import MethodConfig
    from pefteval.errors import UserError
    from pefteval.fewshot import encode_fewshot, fewshot_loss, predict_encoded
    from pefteval.methods import apply_method
    from pefteval.metrics import accuracy
    from pefteval.qa import load_qa_model
    from pefteval.store import atomic_write_json
    from pefteval.tasks.fewshot import SPECS, load_fewshot
    from pefteval.train import steps_per_epoch, train_model

    started = time.time()
    hp = config["training"]
    data = config["data"]
    k, seed = int(data["k_shot"]), config["seed"]
    if config["task"] not in SPECS:
        raise UserError(f"task {config['task']} has no few-shot pattern; data.k_shot works with "
                        f"{', '.join(SPECS)}")
    spec = SPECS[config["task"]]
    raw = load_fewshot(spec.name, data_dir, data.get("split_seed", 0))
    train_ex, val_ex, notes = fewshot_samples(raw["train_pool"], spec.num_labels, k, seed)
    notes = [f"{spec.display}: {n}" for n in notes] + list(raw["notes"])
    test = raw["test"]
    cap = data.get("max_eval_examples")
    if cap is not None and cap < len(test):
        test = random.Random(data.get("split_seed", 0)).sample(test, cap)
        notes.append(f"{spec.display}: test capped at {len(test)} of {len(raw['test'])} examples "
                     "(--max-eval-examples)")
    rng_state = torch.get_rng_state()
    model, tokenizer, is_decoder = load_qa_model(config["model"])
    if not is_decoder:
        raise UserError(f"prompt-based few-shot (data.k_shot) scores label words with a decoder language model; "
                        f"{config['model']} is an encoder (drop k_shot to fine-tune it with a classification head)")
    tokenizer.padding_side = "right"
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    max_len = hp["max_seq_length"]
    train = encode_fewshot(train_ex, spec, tokenizer, train_ex, seed, max_len)
    val = encode_fewshot(val_ex, spec, tokenizer, train_ex, seed, max_len)
    test_enc = encode_fewshot(test, spec, tokenizer, train_ex, seed, max_len)
    label_ids = train.label_token_ids
    total_steps = steps_per_epoch(len(train), hp["batch_size"]) * hp["epochs"]
    method = TypeAdapter(MethodConfig).validate_python({**config["method"], "name": config["method_label"]})
    applied = apply_method(model, method, total_steps, True, task_kind="generation")

    def score(encoded: Any) -> float:
        preds = predict_encoded(applied.model, encoded, pad_id, hp["eval_batch_size"], hp["precision"])
        return accuracy(preds, encoded.labels)

    result = train_model(applied.model, train, lambda _model: score(val), hp, seed, pad_id,
                         on_step=applied.on_step, progress=progress,
                         loss_fn=lambda m, b: fewshot_loss(m, b, label_ids))
    if progress is not None:
        progress({"event": "evaluate"})
    eval_started = time.perf_counter()
    test_preds = predict_encoded(applied.model, test_enc, pad_id, hp["eval_batch_size"], hp["precision"])
    metrics = {"validation": {"accuracy": score(val), "n": len(val)},
               "test": {"accuracy": accuracy(test_preds, test_enc.labels), "n": len(test_enc)}}
    eval_seconds = time.perf_counter() - eval_started
    truncated = train.demos_truncated + val.demos_truncated + test_enc.demos_truncated
    if truncated:
        notes.append(f"{spec.display}: demonstrations shortened in {truncated} prompt(s) to fit max_seq_length "
                     f"{max_len}")
    atomic_write_json(run_dir / "predictions.json",
                      {"test": [{"text": x.text_a, "label": x.label, "prediction": p}
                                for x, p in zip(test, test_preds)],
                       "train_sample": [{"text": x.text_a, "label": x.label} for x in train_ex]})
    record = complete_record(config, started, applied, result,
                             metrics=metrics,
                             k_shot=k,
                             train_examples=len(train_ex),
                             train_source="train",
                             eval_seconds=eval_seconds,
                             notes=notes + applied.notes,
                             is_decoder=True)
    probe = make_probe(val.features, pad_id, None, analysis_options(config).probe_examples, loss="label_words",
                       label_ids=list(label_ids))
    return finish(record, config, applied.model, run_dir, probe, rng_state, progress)
