"""Task kinds: the model-facing half of a trial. ``select_kind`` is the one place that decides
which kind a trial is; ``rebuild`` gives a finished trial's trained model back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pefteval.artifacts import load_state_into, missing_weights_message, saved_entry
from pefteval.config import TrialConfig
from pefteval.device import Placement
from pefteval.errors import UserError
from pefteval.kinds.base import Predictor, TaskKind
from pefteval.kinds.classification import SequenceClassification
from pefteval.kinds.extractive_qa import SpanExtraction
from pefteval.kinds.generative import GenerativeAnswer
from pefteval.kinds.instruct import InstructionFollowing
from pefteval.kinds.label_words import LabelWords, fewshot_loss
from pefteval.methods import AppliedMethod, apply_method
from pefteval.models import ModelSource, is_decoder_config, load_model_config, resolve_model
from pefteval.probe import Probe
from pefteval.tasks import TASKS, get_task
from pefteval.tasks.base import Task
from pefteval.tasks.user import register_include_paths

__all__ = ["KINDS", "Predictor", "TaskKind", "apply_for_kind", "load_base", "load_placed", "probe_loss", "rebuild",
           "select_kind"]

KINDS: dict[str, type[TaskKind]] = {k.name: k for k in (SequenceClassification, SpanExtraction, GenerativeAnswer,
                                                         LabelWords, InstructionFollowing)}


def select_kind(task: Task, k_shot: int | None, model_config: Any) -> type[TaskKind]:
    """The kind of a trial: label-word scoring when the data asks for a k-shot sample; else by the
    task's data (class labels get a classification head, questions a span head on an encoder and
    generated answers on a decoder, prompt/target tasks generated answers)."""
    if k_shot is not None:
        if task.fewshot is None:
            raise UserError(f"task {task.name} has no few-shot pattern; data.k_shot works with "
                            f"{', '.join(t.name for t in TASKS.values() if t.fewshot is not None)}")
        return LabelWords
    if task.kind == "classification":
        return SequenceClassification
    if task.kind == "qa":
        return GenerativeAnswer if is_decoder_config(model_config) else SpanExtraction
    if task.kind == "instruct":
        return InstructionFollowing
    return GenerativeAnswer


def prepare(trial: TrialConfig) -> tuple[Task, TaskKind, ModelSource, Any]:
    """The trial's task, its kind (not yet holding a model), the model's source and config."""
    task = get_task(trial.task)
    source = resolve_model(trial.model)
    config = load_model_config(source)
    kind = select_kind(task, trial.data.k_shot, config)(task, trial.training, trial.seed,  # type: ignore[arg-type]
                                                                 trial.data)
    return task, kind, source, config


def apply_for_kind(model: nn.Module, trial: TrialConfig, kind: TaskKind, total_steps: int) -> AppliedMethod:
    return apply_method(model, trial.method, total_steps, kind.head, kind.paper_lora_targets)


def load_placed(kind: TaskKind, source: ModelSource, config: Any) -> nn.Module:
    """The kind's pretrained model on the trial's device (``training.device``), with gradient
    checkpointing when ``training.gradient_checkpointing`` asks for it. Loaded on the CPU first, so
    a fresh head draws from the CPU generator wherever the trial runs."""
    model = kind.load_model(source, config).to(Placement.of(kind.hp).device)
    if kind.hp.gradient_checkpointing:
        # non-reentrant: gradients reach adapters on a frozen base without inputs that require them
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def load_base(trial: TrialConfig, rng_state: torch.Tensor | None = None) -> tuple[nn.Module, TaskKind]:
    """The model as the trial loaded it before applying its method. With the trial's ``rng_state``
    (taken just before its load) a fresh head is drawn exactly as the trial drew it."""
    _task, kind, source, config = prepare(trial)
    if rng_state is None:
        return load_placed(kind, source, config), kind
    with torch.random.fork_rng():
        torch.set_rng_state(rng_state)
        return load_placed(kind, source, config), kind


def read_trial(run_dir: Path) -> tuple[TrialConfig, str]:
    """A finished trial's config and key, from a run directory that holds its saved weights."""
    if not (run_dir / "trial.json").is_file():
        raise UserError(f"{run_dir} lacks trial.json: not a trial's run directory")
    if saved_entry(run_dir) is None:
        raise UserError(missing_weights_message(run_dir))
    written = json.loads((run_dir / "trial.json").read_text())
    trial = TrialConfig.from_json(written)
    register_include_paths(trial.include_path)  # a task of one's own: the folder of its definition
    return trial, written.get("key") or run_dir.name


def rebuild(run_dir: Path, trial: TrialConfig | None = None) -> tuple[nn.Module, TaskKind, TrialConfig]:
    """A finished trial's trained model (its method applied, its saved weights loaded: see artifacts.py),
    its kind (tokenizer loaded) and its config (``trial``, when already read), from the run directory."""
    if trial is None:
        trial, _key = read_trial(run_dir)
    model, kind = load_base(trial)
    applied = apply_for_kind(model, trial, kind, 1)
    model = load_state_into(applied.model, run_dir)
    model.eval()
    return model, kind, trial


def load_run_predictor(run_dir: str | Path) -> Predictor:
    """A trained QA model from its run directory, as the attacks query it."""
    run_dir = Path(run_dir)
    trial, key = read_trial(run_dir)
    if get_task(trial.task).kind != "qa":
        raise UserError(f"{run_dir} trained task {trial.task}, not a QA task")
    model, kind, _ = rebuild(run_dir, trial)
    return Predictor(kind, model, model_id=key)


def probe_loss(model: nn.Module, probe: Probe) -> torch.Tensor:
    """The trial's own loss on its probe: label-word cross-entropy for a few-shot trial, else the
    model's loss."""
    if probe.loss == "label_words":
        return fewshot_loss(model, dict(probe.tensors), probe.label_ids)
    return model(**probe.tensors).loss
