"""Experiment configs: plain YAML validated by pydantic models.

Every field is checked; an error names its YAML path (``methods[1].rr``) and the
allowed fields or values, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import difflib
import itertools
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pefteval.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


GridFloat = Union[float, list[float]]
GridInt = Union[int, list[int]]


def _check_axis(field: str, value: Any) -> Any:
    """A grid axis: one value or a non-empty list of distinct values in the field's range."""
    if value is None:
        return value
    values = value if isinstance(value, list) else [value]
    if not values:
        raise ValueError("a grid axis needs at least one value")
    if len(set(values)) != len(values):
        raise ValueError("grid values must be distinct")
    if field == "lr" and any(v <= 0 for v in values):
        raise ValueError("learning rates must be > 0")
    if field == "warmup_ratio" and any(not 0 <= v <= 1 for v in values):
        raise ValueError("warmup_ratio must be between 0 and 1")
    if field == "batch_size" and any(v < 1 for v in values):
        raise ValueError("batch_size must be >= 1")
    return value


class TrainingConfig(_Strict):
    """Optimisation settings. List-valued fields are grid axes (the paper's Table 6)."""

    epochs: int = Field(3, ge=1)
    lr: GridFloat = 2e-5
    warmup_ratio: GridFloat = 0.06
    batch_size: GridInt = 32
    weight_decay: float = Field(0.0, ge=0.0)
    max_grad_norm: float = Field(1.0, gt=0.0)
    max_seq_length: int = Field(128, ge=8)
    precision: Literal["bf16", "fp32"] = "bf16"
    group_by_length: bool = True
    eval_batch_size: int = Field(128, ge=1)
    # question answering: window overlap for long contexts, longest answer span (extractive),
    # cap on generated tokens (generative)
    doc_stride: int = Field(128, ge=1)
    max_answer_length: int = Field(30, ge=1)
    max_new_tokens: int = Field(32, ge=1)

    @field_validator("lr", "warmup_ratio", "batch_size")
    @classmethod
    def _valid_axis(cls, value: Any, info: Any) -> Any:
        return _check_axis(info.field_name, value)

    def grid(self) -> list[dict[str, Any]]:
        """Expand list-valued fields into scalar grid points (lr-major order)."""
        axes = {k: getattr(self, k) for k in ("lr", "warmup_ratio", "batch_size")}
        lists = {k: v if isinstance(v, list) else [v] for k, v in axes.items()}
        points = []
        for combo in itertools.product(*lists.values()):
            point = self.model_dump()
            point.update(dict(zip(lists.keys(), combo)))
            points.append(point)
        return points


class TrainingOverride(_Strict):
    """Per-method changes to the experiment's training settings."""

    epochs: int | None = Field(None, ge=1)
    lr: GridFloat | None = None
    warmup_ratio: GridFloat | None = None
    batch_size: GridInt | None = None
    weight_decay: float | None = Field(None, ge=0.0)
    max_grad_norm: float | None = Field(None, gt=0.0)
    max_seq_length: int | None = Field(None, ge=8)
    precision: Literal["bf16", "fp32"] | None = None
    group_by_length: bool | None = None
    eval_batch_size: int | None = Field(None, ge=1)
    doc_stride: int | None = Field(None, ge=1)
    max_answer_length: int | None = Field(None, ge=1)
    max_new_tokens: int | None = Field(None, ge=1)

    @field_validator("lr", "warmup_ratio", "batch_size")
    @classmethod
    def _valid_axis(cls, value: Any, info: Any) -> Any:
        return _check_axis(info.field_name, value)


class _MethodBase(_Strict):
    name: str | None = None
    training: TrainingOverride | None = None

    @property
    def label(self) -> str:
        return self.name or self.type  # type: ignore[attr-defined]

    def method_params(self) -> dict[str, Any]:
        """The fields that define the method itself (what a trial hash needs)."""
        return self.model_dump(exclude={"name", "training"})


class FFTMethod(_MethodBase):
    """Full fine-tuning; with top_k_layers only the last k transformer blocks train."""

    type: Literal["fft"]
    top_k_layers: int | None = Field(None, ge=1)


class BitFitMethod(_MethodBase):
    """Bias terms only (Ben Zaken et al. 2022)."""

    type: Literal["bitfit"]


class LoraMethod(_MethodBase):
    type: Literal["lora"]
    r: int = Field(8, ge=1)
    alpha: float = 16
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    target_modules: list[str] | None = None


class AdaLoraMethod(_MethodBase):
    type: Literal["adalora"]
    r: int = Field(8, ge=1, description="target average rank after budget allocation")
    init_r: int = Field(12, ge=1)
    alpha: float = 32
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    target_modules: list[str] | None = None


class PrefixMethod(_MethodBase):
    type: Literal["prefix"]
    num_virtual_tokens: int = Field(20, ge=1)
    prefix_projection: bool = False


class IA3Method(_MethodBase):
    type: Literal["ia3"]
    target_modules: list[str] | None = None
    feedforward_modules: list[str] | None = None


class PeftMethod(_MethodBase):
    """Any other method of the peft library, by its PeftType name and config kwargs."""

    type: Literal["peft"]
    peft_type: str
    kwargs: dict[str, Any] = Field(default_factory=dict)


MethodConfig = Annotated[
    Union[FFTMethod, BitFitMethod, LoraMethod, AdaLoraMethod, PrefixMethod, IA3Method, PeftMethod],
    Field(discriminator="type"),
]
METHOD_TYPES: dict[str, type[_MethodBase]] = {
    "fft": FFTMethod,
    "bitfit": BitFitMethod,
    "lora": LoraMethod,
    "adalora": AdaLoraMethod,
    "prefix": PrefixMethod,
    "ia3": IA3Method,
    "peft": PeftMethod,
}


class AttackConfig(_Strict):
    """Settings of the generated Adversarial SQuAD sets (see pefteval/adversarial/squad.py).
    AddAny and AddAnyExtend search against the trained model, with a query budget."""

    seed: int = 0
    distractor_words: int = Field(10, ge=1, description="words in an AddAny distractor")
    candidates: int = Field(20, ge=1, description="candidate words tried per position and pass")
    max_passes: int = Field(3, ge=1, description="sweeps over the distractor's positions")
    max_queries: int = Field(1200, ge=1, description="model evaluations per source question")


class DataConfig(_Strict):
    """How task splits are drawn. All subsets are fixed by split_seed, not by the trial seed."""

    max_train_examples: int | None = Field(None, ge=1)
    max_eval_examples: int | None = Field(None, ge=1)
    validation_size: float = Field(0.1, gt=0.0, description="fraction (<1) or count (>=1)")
    max_validation_examples: int | None = Field(1000, ge=1)
    train_from: Literal["auto", "train", "dev"] = "auto"
    dev_test_fraction: float = Field(0.5, gt=0.0, lt=1.0)
    split_seed: int = 0
    # adversarial evaluation sets (None: all the task has); for Adversarial SQuAD a cap on the
    # source questions, each scored with all its variants
    adversarial_sets: list[str] | None = None
    max_adversarial_questions: int | None = Field(None, ge=1)
    attack: AttackConfig = Field(default_factory=AttackConfig)
    # prompt-based few-shot classification with a decoder LM: training examples per class
    # (a list runs each k: the data-scaling experiment of Table 7 / Figure 2)
    k_shot: int | list[int] | None = None

    @field_validator("k_shot")
    @classmethod
    def _positive_k(cls, value: int | list[int] | None) -> int | list[int] | None:
        ks = value if isinstance(value, list) else [value] if value is not None else []
        if any(k < 1 for k in ks) or (isinstance(value, list) and not value):
            raise ValueError("k_shot must be a positive number of examples per class, or a non-empty list of them")
        return value


class DataOverride(_Strict):
    """Per-task changes to the experiment's data settings (e.g. fewer examples of a long-text task)."""

    max_train_examples: int | None = Field(None, ge=1)
    max_eval_examples: int | None = Field(None, ge=1)
    validation_size: float | None = Field(None, gt=0.0)
    max_validation_examples: int | None = Field(None, ge=1)
    train_from: Literal["auto", "train", "dev"] | None = None
    dev_test_fraction: float | None = Field(None, gt=0.0, lt=1.0)
    adversarial_sets: list[str] | None = None
    max_adversarial_questions: int | None = Field(None, ge=1)
    attack: AttackConfig | None = None
    k_shot: int | list[int] | None = None


ANALYSIS_NAMES = ("increments", "spectrum", "bound", "sensitivity")


class AnalysisConfig(_Strict):
    """Weight-space diagnostics (``pefteval analyze``): which run after the sweep, and what
    training saves for them. A plain list (``analyses: [increments, spectrum]``) sets ``run``."""

    run: list[Literal["increments", "spectrum", "bound", "sensitivity"]] = Field(default_factory=list)
    # save increments.json, increments.safetensors and probe.safetensors with every trial
    capture: bool = True
    # regular expressions on module names (e.g. 'layer\\.0\\..*query') whose full increments are
    # saved besides the default module (the last block's query projection)
    increment_modules: list[str] = Field(default_factory=list)
    probe_examples: int = Field(32, ge=1)  # validation examples saved for the model-based analyses
    sensitivity_examples: int = Field(16, ge=1)  # of those, the batch of the sensitivity analysis
    rho: list[float] = Field(default_factory=lambda: [1e-3, 3e-3, 1e-2], min_length=1)
    draws: int = Field(8, ge=2, multiple_of=2)  # antithetic pairs (ε, −ε)
    power_iterations: int = Field(20, ge=1)
    power_tol: float = Field(1e-3, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _list_form(cls, value: Any) -> Any:
        return {"run": value} if isinstance(value, list) else value

    @field_validator("increment_modules")
    @classmethod
    def _regexes(cls, patterns: list[str]) -> list[str]:
        import re

        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(f"{pattern!r} is not a regular expression: {err}") from None
        return patterns

    @field_validator("rho")
    @classmethod
    def _positive_rho(cls, rho: list[float]) -> list[float]:
        if any(r <= 0 for r in rho):
            raise ValueError("perturbation sizes rho must be > 0")
        return rho


class ExperimentConfig(_Strict):
    name: str
    model: str
    tasks: list[str] = Field(min_length=1)
    task_data: dict[str, DataOverride] = Field(default_factory=dict)
    methods: list[MethodConfig] = Field(min_length=1)
    seeds: list[int] = Field([0, 42, 421, 520, 1228], min_length=1)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    save_weights: bool = True
    analyses: AnalysisConfig = Field(default_factory=AnalysisConfig)

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, tasks: list[str]) -> list[str]:
        from pefteval.tasks import TASKS

        for task in tasks:
            if task not in TASKS:
                raise ValueError(f"unknown task '{task}'{_suggest(task, TASKS)}; known tasks: {', '.join(TASKS)}")
        return tasks

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError("seeds must be distinct")
        return seeds

    @field_validator("task_data")
    @classmethod
    def _known_task_data(cls, value: dict[str, Any]) -> dict[str, Any]:
        from pefteval.tasks import TASKS

        for task in value:
            if task not in TASKS:
                raise ValueError(f"unknown task '{task}'{_suggest(task, TASKS)}; known tasks: {', '.join(TASKS)}")
        return value

    @field_validator("methods")
    @classmethod
    def _unique_labels(cls, methods: list[Any]) -> list[Any]:
        labels = [m.label for m in methods]
        dupes = sorted({label for label in labels if labels.count(label) > 1})
        if dupes:
            raise ValueError(f"method names must be unique; give each variant a 'name' ({', '.join(dupes)} repeats)")
        return methods

    def data_for(self, task: str) -> DataConfig:
        """The experiment's data settings with the task's overrides applied; command-line
        limits (set on ``data``) still win because they are applied to both."""
        merged = self.data.model_dump()
        if task in self.task_data:
            merged.update(self.task_data[task].model_dump(exclude_none=True))
        return DataConfig(**merged)

    def training_for(self, method: _MethodBase) -> TrainingConfig:
        merged = self.training.model_dump()
        if method.training is not None:
            merged.update(method.training.model_dump(exclude_none=True))
        return TrainingConfig(**merged)


def _suggest(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _format_loc(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path or "(top level)"


def _unwrap(annotation: Any) -> list[Any]:
    """Model classes reachable from a field annotation (through list/Union/Annotated)."""
    origin = get_origin(annotation)
    if origin is None:
        return [annotation] if isinstance(annotation, type) and issubclass(annotation, BaseModel) else []
    found = []
    for arg in get_args(annotation):
        found.extend(_unwrap(arg))
    return found


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that owns the last element of a validation error location."""
    current: type[BaseModel] = ExperimentConfig
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        if part in METHOD_TYPES and current is ExperimentConfig:
            current = METHOD_TYPES[part]
            continue
        field = current.model_fields.get(part)
        if field is None:
            if part in METHOD_TYPES:
                current = METHOD_TYPES[part]
            continue  # a mapping key (task_data.rte) or a union tag
        models = _unwrap(field.annotation)
        if not models:
            return None
        current = models[0]
    return current


def _strip_method_tags(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    # pydantic puts the discriminator tag into the location (methods.0.lora.r); drop it
    out = []
    for i, part in enumerate(loc):
        if part in METHOD_TYPES and i > 0 and isinstance(loc[i - 1], int):
            continue
        out.append(part)
    return tuple(out)


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid experiment config"]
    for item in err.errors():
        loc = tuple(item["loc"])
        path = _format_loc(_strip_method_tags(loc))
        if item["type"] == "extra_forbidden":
            owner = _model_at(loc)
            allowed = list(owner.model_fields) if owner else []
            field = str(loc[-1])
            hint = _suggest(field, allowed)
            lines.append(f"  {path}: unknown field '{field}'{hint}; allowed fields here: {', '.join(allowed)}")
        elif item["type"] == "union_tag_invalid":
            lines.append(f"  {path}.type: unknown method type {item['input'].get('type')!r}; "
                         f"allowed: {', '.join(METHOD_TYPES)}")
        elif item["type"] == "union_tag_not_found":
            lines.append(f"  {path}: a method needs a 'type' (one of {', '.join(METHOD_TYPES)})")
        else:
            msg = item["msg"].removeprefix("Value error, ")
            lines.append(f"  {path}: {msg} (got {item.get('input')!r})")
    return "\n".join(lines)


def parse_config(data: Any, source: str = "config") -> ExperimentConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of fields (name, model, tasks, methods, ...)")
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None


def load_config(path: str | Path) -> ExperimentConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path} "
                          "(pass the path of an experiment YAML, e.g. configs/quickstart.yaml)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    return parse_config(data, str(path))
