"""Expand an experiment into trials: tasks x methods x grid points x seeds.

A trial is one fully resolved config; its identity is the hash of that config, so
re-running an experiment finds the trials that are already done.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from pefteval.config import ExperimentConfig, FFTMethod, TrainingConfig, TrialConfig
from pefteval.errors import UserError
from pefteval.tasks.user import include_path_of


@dataclass(frozen=True)
class Trial:
    key: str
    resolved: TrialConfig

    @property
    def config(self) -> dict[str, Any]:
        """The trial's identity as a plain dict: what its key hashes and its record keeps."""
        return self.resolved.identity()

    @property
    def task(self) -> str:
        return self.resolved.task

    @property
    def method(self) -> str:
        return self.resolved.method_label

    @property
    def seed(self) -> int:
        return self.resolved.seed

    @property
    def k_shot(self) -> int | None:
        return self.resolved.data.k_shot  # type: ignore[return-value]

    def describe(self) -> str:
        hp = self.resolved.training
        task = self.task if self.k_shot is None else f"{self.task} (k={self.k_shot})"
        return (f"{self.method} on {task}, seed {self.seed}, lr {hp.lr:g}, "
                f"warmup {hp.warmup_ratio:g}, batch {hp.batch_size}")


def trial_key(config: dict[str, Any]) -> str:
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def plan_trials(exp: ExperimentConfig, data_source: str, methods: list[str] | None = None,
                seeds: list[int] | None = None) -> list[Trial]:
    chosen = exp.methods
    if methods:
        labels = [m.label for m in exp.methods]
        unknown = [m for m in methods if m not in labels]
        if unknown:
            raise UserError(f"--methods: {', '.join(unknown)} not in this config; its methods are: {', '.join(labels)}")
        chosen = [m for m in exp.methods if m.label in methods]
    trials = []
    for task in exp.tasks:
        data = exp.data_for(task)
        ks = data.k_shot
        for k in ks if isinstance(ks, list) else [ks]:
            task_data = data.model_copy(update={"k_shot": k})
            for method in chosen:
                resolved_method = method.model_copy(update={"name": method.label, "training": None})
                for hp in exp.training_for(method).grid():
                    for seed in seeds or exp.seeds:
                        # a trial saves its weights unless none are kept (save_weights: selected removes
                        # the unselected ones later, in the sweep), so its key is what it always was
                        config = TrialConfig(model=exp.model, task=task, method_label=method.label,
                                             method=resolved_method, training=TrainingConfig(**hp), data=task_data,
                                             data_source=data_source, seed=seed,
                                             save_weights=exp.save_weights != "none", analysis=exp.analyses,
                                             include_path=include_path_of(task))
                        trials.append(Trial(trial_key(config.identity()), config))
    return trials


def drop_clipped_duplicates(exp: ExperimentConfig, depth: int | None) -> tuple[ExperimentConfig, list[str]]:
    """Top-k FFT settings with k above the model's depth are clipped to it; settings that clip
    to the same k as an earlier one would train the same thing, so they run once."""
    if depth is None:
        return exp, []
    seen: dict[int, str] = {}
    kept, notices = [], []
    for method in exp.methods:
        if isinstance(method, FFTMethod) and method.top_k_layers is not None:
            k = min(method.top_k_layers, depth)
            if k in seen:
                notices.append(f"{method.label}: top_k_layers {method.top_k_layers} is clipped to the model's depth "
                               f"{depth}, the same setting as {seen[k]}, which runs once in its place")
                continue
            seen[k] = method.label
            if method.top_k_layers > depth:
                notices.append(f"{method.label}: top_k_layers {method.top_k_layers} clipped to the model's depth "
                               f"{depth}")
        kept.append(method)
    return exp.model_copy(update={"methods": kept}), notices
