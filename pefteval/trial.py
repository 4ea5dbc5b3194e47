"""The trial recipe: every trial, of every task and kind, runs through ``run_trial``, top to bottom.

The task (``pefteval.tasks``) is the data half: splits, prompts, scorer, selection metric. The
kind (``pefteval.kinds``) is the model-facing half: head, model loading, encoding, loss,
predictor, probe. The method (``pefteval.methods``) decides what trains.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pefteval.analysis.capture import finish_trial
from pefteval.artifacts import save_trained
from pefteval.config import TrialConfig
from pefteval.device import Placement, peak_memory, reset_peak_memory
from pefteval.distributed import Dist
from pefteval.evaluation import Evaluator
from pefteval.kinds import Predictor, apply_for_kind, load_base, load_placed, prepare
from pefteval.methods import load_trainable_state
from pefteval.record import complete_record
from pefteval.train import ProgressFn, steps_per_epoch, train_model


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def run_trial(trial: TrialConfig, data_dir: Path | None, run_dir: Path, key: str = "",
              progress: ProgressFn | None = None, dist: Dist | None = None) -> dict[str, Any]:
    """Run one trial; returns its record. Under ``dist`` (several processes) every process trains and
    evaluates, and only the main one writes the run's files."""
    dist = dist or Dist()
    started = time.time()
    hp = trial.training
    emit = progress or (lambda event: None)
    # Where the trial runs, and in which number formats (an unknown device is a user error here).
    place = Placement.of(hp)
    reset_peak_memory(place.device)
    # Seed first: a k-shot sample, a fresh head and an adapter's initialisation all draw from it.
    seed_everything(trial.seed)
    # The kind follows from the task, data.k_shot and the model's config (one place: select_kind).
    task, kind, source, model_config = prepare(trial)
    splits = task.splits(data_dir, trial.data, trial.seed)
    # The RNG state just before the model is built: the analyses replay it to rebuild the same
    # initial head, so that every increment is measured from where training started.
    rng_state = torch.get_rng_state()
    with dist.loading_whole():
        model = load_placed(kind, source, model_config)
    train = kind.encode_train(splits.train)
    # AdaLoRA's budget schedule needs the number of optimiser steps, so the method comes after encoding.
    applied = apply_for_kind(model, trial, kind, steps_per_epoch(len(train), hp.batch_size) * hp.epochs)
    evaluator = Evaluator(task, kind, applied.model)
    # Each epoch is scored on validation by the task's scorer; its selection metric picks the epoch.
    result = train_model(applied.model, train, evaluator.validation_scorer(splits.validation), hp, trial.seed,
                         kind.pad_id, on_step=applied.on_step, progress=progress, metric=task.curve_metric,
                         loss_fn=kind.loss, dist=dist)
    emit({"event": "evaluate"})
    # The model now holds the chosen epoch's weights: validation keeps that epoch's predictions,
    # every other split is predicted once, and examples shared between splits only once.
    evaluator.keep_epoch("validation", splits.validation, result.best_epoch)
    for name, examples in splits.eval_splits().items():
        if name != "validation":
            evaluator.evaluate(name, examples, adversarial=name in splits.adversarial)
    # Sets searched against the trained model (AddAny) exist only now; their search time is kept apart.
    attack_seconds = 0.0
    for name, sources in splits.model_attacks.items():
        emit({"event": "attack", "attack": name, "questions": len(sources)})
        attack_started = time.perf_counter()
        examples = task.late_split(name, splits, Predictor(kind, applied.model, key or run_dir.name), trial.data)
        attack_seconds += time.perf_counter() - attack_started
        evaluator.evaluate(name, examples, adversarial=True)
    if dist.is_main:
        evaluator.save(run_dir / "predictions.json")
        kind.save(run_dir)
    kind_fields = kind.record_fields()  # a kind's own notes are complete only after evaluation
    record = complete_record(
        started, applied, result, metrics=evaluator.metrics, selection_metric=task.selection_metric,
        train_examples=len(splits.train) - kind.left_out,
        train_features=len(train), train_source=splits.train_source, eval_seconds=evaluator.seconds,
        eval_examples_per_second=len(splits.test) / max(evaluator.seconds, 1e-9), attack_seconds=attack_seconds,
        notes=splits.notes + kind.notes + applied.notes, **kind_fields, **place.describe(), processes=dist.world,
        parallelism=dist.parallelism,
        **peak_memory(place.device),
        **({"k_shot": trial.data.k_shot} if trial.data.k_shot is not None else {}))
    # Saving and the per-model analyses come after the record, so their time and memory are never
    # counted against the method.
    if dist.world > 1:  # the libraries that ran the processes
        record["versions"].update(dist.versions())
    model = applied.model
    if dist.partitioned:
        # each process holds a shard: every one takes part in gathering the trained tensors, and the
        # main one saves them and runs the analyses on an unsharded copy of the trained model
        trained = dist.full_trainable_state(model)
    if not dist.is_main:
        return record
    probe = kind.probe(splits.validation, trial.analysis.probe_examples)
    general = None
    if trial.analysis.capture and {"forgetting", "similarity"} & set(trial.analysis.run):
        from pefteval.analysis.representations import make_general_probe

        general = make_general_probe(kind.tokenizer, data_dir, trial.analysis.general_texts,
                                     trial.analysis.general_tokens)

    def save(trained_model: nn.Module, into: Path) -> None:
        save_trained(trained_model, into, trial.method.type, kind.tokenizer, source)

    if not dist.partitioned:
        return finish(record, trial, model, run_dir, probe, rng_state, progress, save, general)
    with dist.loading_whole(always=True):  # the main process alone: no model may load partitioned
        if trial.save_weights or trial.analysis.capture:
            model = unsharded_copy(trial, rng_state, trained)
        return finish(record, trial, model, run_dir, probe, rng_state, progress, save, general)


def unsharded_copy(trial: TrialConfig, rng_state: torch.Tensor, trained: dict[str, torch.Tensor]) -> nn.Module:
    """The trained model, whole, in this process: the base loaded as the trial loaded it, its method
    applied and the gathered trainable tensors put in (what the analyses and saving read)."""
    base, kind = load_base(trial, rng_state)
    applied = apply_for_kind(base, trial, kind, 1)
    load_trainable_state(applied.model, trained)
    applied.model.eval()
    return applied.model


def finish(record: dict[str, Any], trial: TrialConfig, model: nn.Module, run_dir: Path, probe: Any,
           rng_state: torch.Tensor, progress: ProgressFn | None,
           save: Callable[[nn.Module, Path], None], general: Any = None) -> dict[str, Any]:
    """Save the trained weights (``save``: pefteval.artifacts' formats) and what the weight analyses
    read. A trial is complete only when everything it promises is on disk: a failure here (a full
    disk: OutputError naming the file) fails the trial, and the sweep redoes it on the next run."""
    if progress is not None:
        progress({"event": "analyse"})
    record["analysis_seconds"] = finish_trial(trial, model, run_dir, probe, rng_state, save, general)
    return record
