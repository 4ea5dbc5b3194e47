"""Experiment configs: plain YAML validated by pydantic models.

Every field is checked; an error names its YAML path (``methods[1].rr``) and the
allowed fields or values, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import codecs
import difflib
import inspect
import itertools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, TypeVar, Union, get_args, get_origin
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from typing_extensions import TypeAliasType

from pefteval.errors import ConfigError
from pefteval.tasks import TASKS


class _Strict(BaseModel):
    # inf and nan pass every range check (nan compares false to everything) and then train
    # "complete" trials with garbage metrics; refused in every float field, list elements included
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def _not_bool(value: Any) -> Any:
    """Lax mode takes True as 1 (``epochs: yes`` would train one epoch); strict mode would also refuse
    the strings PyYAML makes of floats without a dot (``lr: 2e-5``), so only booleans are refused."""
    if isinstance(value, bool):
        raise PydanticCustomError("bool_not_number", "expected a number, not a boolean")
    return value


# every int and float field is one of these (tests/test_validation_gaps.py walks the models to check)
Int = Annotated[int, BeforeValidator(_not_bool)]
Float = Annotated[float, BeforeValidator(_not_bool)]

# The results store keeps seeds as SQLite integers (signed 64-bit): a larger seed trained and then
# failed to be stored. random.seed, np.random.seed(seed % 2**32) and torch.manual_seed take all of
# them. Negative seeds are refused: random.seed(-n) is random.seed(n).
SEED_MAX = 2**63 - 1
SEED_RULE = "a seed must be an integer from 0 to 2**63 - 1 (9223372036854775807), the results store's range"


def _seed_in_range(value: int) -> int:
    if not 0 <= value <= SEED_MAX:
        raise PydanticCustomError("seed_range", SEED_RULE)
    return value


# Named types (TypeAliasType) are validated as one unit: an override's Optional[...] lets None ("not
# set") through without running their validators, and their errors carry no union-member names.
Seed = TypeAliasType("Seed", Annotated[int, BeforeValidator(_not_bool), AfterValidator(_seed_in_range)])

# a grid axis is one value or a list; the input's shape picks the member that validates it, so a bad
# value gets one error (``training.lr[1]: ...``), not one from each member of the union
_ONE, _LIST = "<one value>", "<list>"


def _axis_shape(value: Any) -> str:
    return _LIST if isinstance(value, (list, tuple)) else _ONE


def _axis(item: Any, name: str) -> Any:
    return TypeAliasType(name, Annotated[Union[Annotated[item, Tag(_ONE)], Annotated[list[item], Tag(_LIST)]],
                                         Discriminator(_axis_shape)])


def _none_passes(func: Callable[..., Any], mode: str) -> Callable[..., Any]:
    """A base model's field validator for an override's field, where None means "not set"."""
    takes_info = len(inspect.signature(func).parameters) > (2 if mode == "wrap" else 1)
    if mode == "wrap":
        def validate_wrap(value: Any, handler: Any, info: Any) -> Any:
            if value is None:
                return handler(value)
            return func(value, handler, info) if takes_info else func(value, handler)

        return validate_wrap

    def validate(value: Any, info: Any) -> Any:
        if value is None:
            return None
        return func(value, info) if takes_info else func(value)

    return validate


def _override_of(base: type[BaseModel], doc: str) -> type[_Strict]:
    """``XConfig`` -> ``XOverride``: every field of ``base``, optional with default None ("not
    set"), with the same constraints (ge, lt, ...) and the base's field validators, which the
    override runs on every value that is set. Nested models are overridden whole. The base's
    model validators are not copied: ``ExperimentConfig`` validates each merged config instead."""
    name = base.__name__.removesuffix("Config") + "Override"
    fields: dict[str, Any] = {}
    for field_name, info in base.model_fields.items():
        annotation: Any = Optional[info.annotation]
        if info.metadata:
            annotation = Annotated[(annotation, *info.metadata)]
        fields[field_name] = (annotation, Field(None, description=info.description))
    validators = {
        attr: field_validator(*dec.info.fields, mode=dec.info.mode, check_fields=dec.info.check_fields)(
            _none_passes(dec.func, dec.info.mode))
        for attr, dec in base.__pydantic_decorators__.field_validators.items()
    }
    return create_model(name, __base__=_Strict, __doc__=doc, __module__=__name__, __validators__=validators,
                        **fields)


_C = TypeVar("_C", bound=BaseModel)

GridFloat = _axis(Float, "GridFloat")
GridInt = _axis(Int, "GridInt")


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

    epochs: Int = Field(3, ge=1)
    lr: GridFloat = 2e-5
    warmup_ratio: GridFloat = 0.06
    batch_size: GridInt = 32
    weight_decay: Float = Field(0.0, ge=0.0)
    max_grad_norm: Float = Field(1.0, gt=0.0)
    max_seq_length: Int = Field(128, ge=8)
    # autocast dtype (fp16 with a gradient scaler); the weights stay in model_dtype
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"
    model_dtype: Literal["fp32", "bf16"] = Field("fp32", description="dtype the weights are loaded and trained in "
                                                 "(a checkpoint's declared dtype is not used)")
    group_by_length: bool = True
    eval_batch_size: Int = Field(128, ge=1)
    # each batch of batch_size examples in this many micro-batches, gradients summed before the one
    # optimiser step: the same optimisation as the whole batch, in less memory
    gradient_accumulation_steps: Int = Field(1, ge=1)
    gradient_checkpointing: bool = False
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    # where the trial runs: auto (CUDA when there is one, else CPU), cpu, cuda, cuda:N or mps; not
    # part of the trial's identity (a trial resumes on another device)
    device: str = "auto"
    # question answering: window overlap for long contexts, longest answer span (extractive),
    # cap on generated tokens (generative)
    doc_stride: Int = Field(128, ge=1)
    max_answer_length: Int = Field(30, ge=1)
    max_new_tokens: Int = Field(32, ge=1)

    @field_validator("lr", "warmup_ratio", "batch_size")
    @classmethod
    def _valid_axis(cls, value: Any, info: Any) -> Any:
        return _check_axis(info.field_name, value)

    @field_validator("device")
    @classmethod
    def _device_name(cls, value: str) -> str:
        value = value.strip().lower()
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", value):
            raise ValueError("device must be auto, cpu, cuda, cuda:N or mps")
        return value

    @model_validator(mode="after")
    def _micro_batches(self) -> TrainingConfig:
        sizes = self.batch_size if isinstance(self.batch_size, list) else [self.batch_size]
        if any(b < self.gradient_accumulation_steps for b in sizes):
            raise ValueError(f"gradient_accumulation_steps ({self.gradient_accumulation_steps}) splits each batch "
                             f"into micro-batches: it cannot exceed batch_size ({min(sizes)})")
        return self

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


TrainingOverride = _override_of(
    TrainingConfig, "Per-method changes to the experiment's training settings (any field of TrainingConfig).")


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
    top_k_layers: Optional[Int] = Field(None, ge=1)


class BitFitMethod(_MethodBase):
    """Bias terms only (Ben Zaken et al. 2022)."""

    type: Literal["bitfit"]


class LoraMethod(_MethodBase):
    type: Literal["lora"]
    r: Int = Field(8, ge=1)
    alpha: Float = 16
    dropout: Float = Field(0.1, ge=0.0, lt=1.0)
    target_modules: list[str] | None = None


class AdaLoraMethod(_MethodBase):
    type: Literal["adalora"]
    r: Int = Field(8, ge=1, description="target average rank after budget allocation")
    init_r: Int = Field(12, ge=1, validate_default=True,  # r above the default init_r is caught too
                        description="every adapter's rank before pruning; greater than r")
    alpha: Float = 32
    dropout: Float = Field(0.1, ge=0.0, lt=1.0)
    target_modules: list[str] | None = None

    @field_validator("init_r")
    @classmethod
    def _room_to_prune(cls, init_r: int, info: ValidationInfo) -> int:
        # with init_r <= r there is nothing to prune: peft's first allocation fails in torch.kthvalue
        r = info.data.get("r")
        if r is not None and init_r <= r:
            raise ValueError(f"init_r must be greater than r ({r}): AdaLoRA starts each adapter at rank init_r "
                             "and prunes them to an average rank of r; for a fixed rank use lora")
        return init_r


class PrefixMethod(_MethodBase):
    type: Literal["prefix"]
    num_virtual_tokens: Int = Field(20, ge=1)
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

# what `pefteval list` says of each method type
METHOD_HELP = {
    "fft": "full fine-tuning of every weight; top_k_layers: k trains only the last k transformer blocks",
    "bitfit": "bias terms only (BitFit)",
    "lora": "low-rank adapters B·A on target modules (r, alpha, dropout, target_modules), via peft",
    "adalora": "LoRA with SVD-form adapters and adaptive rank budget (r, init_r, alpha), via peft",
    "prefix": "prefix tuning: learned key/value prefixes in every layer (num_virtual_tokens), via peft",
    "ia3": "IA3: learned rescaling vectors on keys, values and feed-forward activations, via peft",
    "peft": "any other peft method: peft_type (e.g. LOHA, VERA, OFT) plus its config kwargs",
}


class AttackConfig(_Strict):
    """Settings of the generated Adversarial SQuAD sets (see pefteval/tasks/squad/attacks.py).
    AddAny and AddAnyExtend search against the trained model, with a query budget."""

    seed: Seed = Field(0, description=f"seeds every generated variant; {SEED_RULE}")
    distractor_words: Int = Field(10, ge=1, description="words in an AddAny distractor")
    candidates: Int = Field(20, ge=1, description="candidate words tried per position and pass")
    max_passes: Int = Field(3, ge=1, description="sweeps over the distractor's positions")
    max_queries: Int = Field(1200, ge=1, description="model evaluations per source question")


class DataConfig(_Strict):
    """How task splits are drawn. All subsets are fixed by split_seed, not by the trial seed."""

    max_train_examples: Optional[Int] = Field(None, ge=1)
    max_eval_examples: Optional[Int] = Field(None, ge=1)
    validation_size: Float = Field(0.1, gt=0.0, description="fraction (<1) or count (>=1)")
    max_validation_examples: Optional[Int] = Field(1000, ge=1)
    train_from: Literal["auto", "train", "dev"] = "auto"
    dev_test_fraction: Float = Field(0.5, gt=0.0, lt=1.0)
    split_seed: Seed = Field(0, description=f"fixes every subset and split drawn from the data; {SEED_RULE}")
    # adversarial evaluation sets (None: all the task has); for Adversarial SQuAD a cap on the
    # source questions, each scored with all its variants
    adversarial_sets: list[str] | None = None
    max_adversarial_questions: Optional[Int] = Field(None, ge=1)
    attack: AttackConfig = Field(default_factory=AttackConfig)
    # prompt-based few-shot classification with a decoder LM: training examples per class
    # (a list runs each k: the data-scaling experiment of Table 7 / Figure 2)
    k_shot: Optional[GridInt] = None
    # MT-Bench answers (the alpaca task's test split): the cap on each turn's generated tokens
    # (FastChat's gen_model_answer uses 1024); validation's ROUGE-L generations use training.max_new_tokens
    mt_bench_max_new_tokens: Int = Field(1024, ge=1)

    @field_validator("k_shot")
    @classmethod
    def _positive_k(cls, value: int | list[int] | None) -> int | list[int] | None:
        ks = value if isinstance(value, list) else [value] if value is not None else []
        if any(k < 1 for k in ks) or (isinstance(value, list) and not value):
            raise ValueError("k_shot must be a positive number of examples per class, or a non-empty list of them")
        return value


DataOverride = _override_of(
    DataConfig, "Per-task changes to the experiment's data settings (any field of DataConfig, e.g. fewer "
    "examples of a long-text task); ``attack`` is replaced whole.")


ANALYSIS_NAMES = ("increments", "spectrum", "bound", "sensitivity", "intruders", "forgetting", "similarity")


class AnalysisConfig(_Strict):
    """Weight-space diagnostics (``pefteval analyze``): which run after the sweep, and what
    training saves for them. A plain list (``analyses: [increments, spectrum]``) sets ``run``."""

    run: list[Literal["increments", "spectrum", "bound", "sensitivity", "intruders", "forgetting", "similarity"]] = (
        Field(default_factory=list))
    # save increments.json, increments.safetensors and probe.safetensors with every trial
    capture: bool = True
    # regular expressions on module names (e.g. 'layer\\.0\\..*query') whose full increments are
    # saved besides the default module (the last block's query projection)
    increment_modules: list[str] = Field(default_factory=list)
    probe_examples: Int = Field(32, ge=1)  # validation examples saved for the model-based analyses
    sensitivity_examples: Int = Field(16, ge=1)  # of those, the batch of the sensitivity analysis
    rho: list[Float] = Field(default_factory=lambda: [1e-3, 3e-3, 1e-2], min_length=1)
    draws: Int = Field(8, ge=2, multiple_of=2)  # antithetic pairs (ε, −ε)
    power_iterations: Int = Field(20, ge=1)
    power_tol: Float = Field(1e-3, gt=0)
    # intruder dimensions (Shuttleworth et al. 2024): a top-k singular vector of the fine-tuned matrix
    # whose largest |cosine| with every pretrained singular vector is below epsilon; training keeps
    # the largest cosines of the top intruder_saved vectors, so k can be raised up to it afterwards
    intruder_k: Int = Field(10, ge=1)
    intruder_epsilon: Float = Field(0.5, gt=0, lt=1)
    intruder_saved: Int = Field(32, ge=1)
    # forgetting and similarity: general text (Wikipedia paragraphs: SQuAD v1.1 dev contexts, which no
    # task trains on), this many paragraphs of at most general_tokens tokens, saved with each trial
    general_texts: Int = Field(64, ge=4)
    general_tokens: Int = Field(128, ge=8)

    @model_validator(mode="before")
    @classmethod
    def _list_form(cls, value: Any) -> Any:
        return {"run": value} if isinstance(value, list) else value

    @field_validator("increment_modules")
    @classmethod
    def _regexes(cls, patterns: list[str]) -> list[str]:
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


class ResourcesConfig(_Strict):
    """What one trial needs of a machine, for the executors that run several at once (``--jobs``,
    ``--executor ray``). Not part of any trial's identity."""

    # GPUs each trial process sees (CUDA_VISIBLE_DEVICES); default: 1 where GPUs exist, and a
    # trial launched on several processes (--num-processes) that many
    gpus_per_trial: Optional[Int] = Field(None, ge=0)
    # CPU cores (and so threads) each trial gets; default: the cores split between the running trials
    cpus_per_trial: Optional[Int] = Field(None, ge=1)
    # memory a trial is scheduled with on a Ray cluster, in GB; default: none asked
    memory_gb_per_trial: Optional[Float] = Field(None, gt=0)


class JudgeConfig(_Strict):
    """The MT-Bench judge (``pefteval judge``, pefteval/judging): single-answer grading with FastChat's
    prompts. Not part of any trial's identity: another judge re-judges the saved answers. ``local``
    runs a model (alias, directory or hub id) in this process; ``openai`` sends chat completions to
    any OpenAI-compatible endpoint (OpenAI, vLLM, TGI, llama.cpp's server, ``transformers serve``)."""

    backend: Literal["local", "openai"] = "local"
    model: str = Field("smollm2-135m", min_length=1, description="the judge model: an alias, directory or hub "
                       "id (local), or the model name the endpoint serves (openai)")
    base_url: Optional[str] = Field(None, description="the endpoint, e.g. http://127.0.0.1:8000/v1 (openai; "
                                    "default: OpenAI's own)")
    api_key_env: str = Field("OPENAI_API_KEY", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                             description="the environment variable holding the API key (openai); the key "
                             "itself is never written anywhere")
    max_new_tokens: Int = Field(2048, ge=1, description="the judge's output cap (FastChat: 2048)")
    max_concurrency: Int = Field(8, ge=1, description="requests in flight at once (openai)")
    max_retries: Int = Field(5, ge=0, description="retries with backoff of a request that failed transiently "
                             "(openai: connection errors, timeouts, 408, 409, 429, 5xx)")
    timeout_s: Float = Field(600.0, gt=0, description="seconds one request may take (openai)")
    batch_size: Int = Field(8, ge=1, description="judgments generated at once (local)")
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"  # local: autocast dtype
    device: str = "auto"  # local: where the judge model runs
    sanity_questions: Int = Field(5, ge=1, description="questions with GPT-4 reference answers the sanity check "
                                  "rates against deliberately bad answers")

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("base_url must be an http:// or https:// URL, e.g. http://127.0.0.1:8000/v1")
        return value

    @model_validator(mode="after")
    def _url_for_endpoint(self) -> JudgeConfig:
        if self.base_url is not None and self.backend != "openai":
            raise ValueError("base_url is for backend: openai (an endpoint); the local backend runs the model here")
        return self


TRACKER_NAMES = ("tensorboard", "mlflow", "wandb")


class TensorBoardTracking(_Strict):
    """TensorBoard event files, one directory per trial."""

    log_dir: Optional[str] = Field(None, description="where the trials' run directories go (a relative path is "
                                   "under OUT); default OUT/tensorboard")


class MlflowTracking(_Strict):
    """An MLflow tracking store; credentials come from the environment only (MLFLOW_TRACKING_TOKEN,
    MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD), never from the config."""

    tracking_uri: Optional[str] = Field(None, description="sqlite:///PATH, http(s)://HOST or any MLflow "
                                        "tracking URI; default sqlite:///OUT/mlflow.db")
    experiment_name: Optional[str] = Field(None, description="default: the experiment's name")

    @field_validator("tracking_uri")
    @classmethod
    def _no_password(cls, uri: str | None) -> str | None:
        # the config is copied to OUT/experiment.yaml: a secret in it would be written to disk
        if uri is not None and "://" in uri and urlsplit(uri).password is not None:
            raise ValueError("the tracking URI holds a password, which would be written to OUT/experiment.yaml; "
                             "remove it and set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or "
                             "MLFLOW_TRACKING_TOKEN) in the environment")
        return uri


class WandbTracking(_Strict):
    """Weights & Biases; offline by default (``wandb sync`` uploads later). An API key comes from the
    environment only (WANDB_API_KEY, or ``wandb login``)."""

    project: Optional[str] = Field(None, description="default: the experiment's name")
    entity: Optional[str] = None
    mode: Literal["offline", "online"] = "offline"


class TrackingConfig(_Strict):
    """Experiment trackers the sweep feeds (pefteval/tracking.py): one tracker run per trial. Not part
    of any trial's identity: changing them never reruns a trial. A plain list (``tracking:
    [tensorboard, mlflow]``) sets ``trackers``."""

    trackers: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(default_factory=list)
    log_every_steps: Int = Field(1, ge=1, description="the training loss of every N-th optimiser step")
    tensorboard: TensorBoardTracking = Field(default_factory=TensorBoardTracking)
    mlflow: MlflowTracking = Field(default_factory=MlflowTracking)
    wandb: WandbTracking = Field(default_factory=WandbTracking)

    @model_validator(mode="before")
    @classmethod
    def _list_form(cls, value: Any) -> Any:
        return {"trackers": value} if isinstance(value, (list, str)) else value

    @field_validator("trackers", mode="before")
    @classmethod
    def _one_name_or_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("trackers")
    @classmethod
    def _distinct_trackers(cls, trackers: list[str]) -> list[str]:
        if len(set(trackers)) != len(trackers):
            raise ValueError("each tracker once")
        return trackers


def _one_or_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


IncludePaths = Annotated[list[str], BeforeValidator(_one_or_list)]


def _unknown_task(task: str) -> str:
    return (f"unknown task '{task}'{_suggest(task, TASKS)}; known tasks: {', '.join(TASKS)}. A task of your own "
            "needs the folder of its definition in include_path (or --include-path DIR)")


def resolve_include_paths(value: Any, base: Path) -> Any:
    """``include_path`` as a YAML file gives it (a path or a list of paths) with each relative path made
    absolute against ``base``, the file's folder; anything else is left for validation to name."""
    items = _one_or_list(value)
    if not isinstance(items, list):
        return value
    return [str((base / Path(p).expanduser()).resolve()) if isinstance(p, str) else p for p in items]


class ExperimentConfig(_Strict):
    name: str
    model: str
    tasks: list[str] = Field(min_length=1)
    task_data: dict[str, DataOverride] = Field(default_factory=dict)
    methods: list[MethodConfig] = Field(min_length=1)
    seeds: list[Seed] = Field([0, 42, 421, 520, 1228], min_length=1,
                              description=f"one trial per seed (training order, initial weights, k-shot sample); "
                                          f"{SEED_RULE}")
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    save_weights: Literal["all", "selected", "none"] = Field(
        "selected", description="which trials keep their trained weights (adapter/, model/, bitfit/): all; "
        "selected (default): only the trials at each method and task's validation-selected grid point, once "
        "every seed of every grid point of that group is complete; none. Increments and probes are always kept. "
        "true and false mean all and none")
    analyses: AnalysisConfig = Field(default_factory=AnalysisConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)  # MT-Bench's judge (instruction-tuning tasks)
    # folders of task definitions of one's own (docs/tasks.md), relative to the YAML file's folder
    # (load_config makes them absolute); their tasks are registered before a config is validated
    include_path: IncludePaths = Field(default_factory=list)

    @field_validator("save_weights", mode="before")
    @classmethod
    def _weights_policy(cls, value: Any) -> Any:
        if value is True:
            return "all"
        if value is False:
            return "none"
        return value

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, tasks: list[str]) -> list[str]:
        for task in tasks:
            if task not in TASKS:
                raise ValueError(_unknown_task(task))
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
        for task in value:
            if task not in TASKS:
                raise ValueError(_unknown_task(task))
        return value

    @field_validator("methods")
    @classmethod
    def _unique_labels(cls, methods: list[Any]) -> list[Any]:
        labels = [m.label for m in methods]
        dupes = sorted({label for label in labels if labels.count(label) > 1})
        if dupes:
            raise ValueError(f"method names must be unique; give each variant a 'name' ({', '.join(dupes)} repeats)")
        return methods

    @model_validator(mode="after")
    def _valid_merges(self) -> ExperimentConfig:
        """Every task's data settings and every method's training settings, overrides applied,
        are valid; an error names the override's path (``task_data.sst2.k_shot``)."""
        errors: list[Any] = []
        merges = [(self.data, o, ("task_data", t)) for t, o in self.task_data.items()]
        merges += [(self.training, m.training, ("methods", i, "training")) for i, m in enumerate(self.methods)]
        for base, override, loc in merges:
            try:
                _merge(base, override, loc)
            except ValidationError as err:
                errors += _line_errors(err)
        if errors:
            raise ValidationError.from_exception_data(type(self).__name__, errors)
        return self

    def data_for(self, task: str) -> DataConfig:
        """The experiment's data settings with the task's overrides applied; command-line
        limits (set on ``data``) still win because they are applied to both."""
        return self._merged(self.data, self.task_data.get(task), ("task_data", task))

    def training_for(self, method: _MethodBase) -> TrainingConfig:
        """The experiment's training settings with the method's overrides applied."""
        index = next((i for i, m in enumerate(self.methods) if m is method), None)
        if index is None:
            index = self.methods.index(method) if method in self.methods else method.label
        return self._merged(self.training, method.training, ("methods", index, "training"))

    def _merged(self, base: _C, override: BaseModel | None, loc: tuple[Any, ...]) -> _C:
        # parsing already validated every merge; this covers configs built without validation
        # (model_construct, model_copy(update=...))
        try:
            return _merge(base, override, loc)
        except ValidationError as err:
            raise ConfigError(format_validation_error(err, f"experiment {self.name!r}")) from None


def _merge(base: _C, override: BaseModel | None, loc: tuple[Any, ...]) -> _C:
    """``base`` with the fields the override sets (not None) replaced. An invalid result raises a
    ValidationError located under ``loc``, the override's path."""
    merged = base.model_dump()
    if override is not None:
        merged.update(override.model_dump(exclude_none=True))
    try:
        return type(base)(**merged)
    except ValidationError as err:
        raise ValidationError.from_exception_data(err.title, _line_errors(err, loc)) from None


def _line_errors(err: ValidationError, prefix: tuple[Any, ...] = ()) -> list[Any]:
    """The errors of ``err`` (type and message kept) with locations under ``prefix``."""
    return [{"type": PydanticCustomError(e["type"], e["msg"]), "loc": (*prefix, *e["loc"]), "input": e["input"]}
            for e in err.errors()]


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


def _model_at(loc: tuple[Any, ...], root: type[BaseModel] | None = None) -> type[BaseModel] | None:
    """The pydantic model that owns the last element of a validation error location under ``root``
    (default: the experiment config)."""
    current: type[BaseModel] = root or ExperimentConfig
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


def _strip_tags(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    # pydantic puts the discriminator tag into the location (methods.0.lora.r, training.lr.<list>.1); drop it
    out = []
    for i, part in enumerate(loc):
        if (part in METHOD_TYPES and i > 0 and isinstance(loc[i - 1], int)) or part in (_ONE, _LIST):
            continue
        out.append(part)
    return tuple(out)


# pydantic's wording replaced where it does not say what is wrong with the value
_MESSAGES = {"finite_number": "must be a finite number, not inf or nan"}


def format_validation_error(err: ValidationError, source: str, root: type[BaseModel] | None = None,
                            what: str = "experiment config",
                            line_of: Callable[[tuple[Any, ...]], int | None] | None = None) -> str:
    """One line per error, each naming its YAML path. ``root`` is the model validated (default: the
    experiment config), ``what`` names it; ``line_of`` gives the line of a path in the file, when known."""
    lines = [f"{source}: invalid {what}"]
    for item in err.errors():
        loc = tuple(item["loc"])
        path = _format_loc(_strip_tags(loc))
        line = line_of(_strip_tags(loc)) if line_of is not None else None
        if line is not None:
            path = f"line {line}, {path}"
        if item["type"] == "extra_forbidden":
            owner = _model_at(loc, root)
            allowed = list(owner.model_fields) if owner else []
            field = str(loc[-1])
            hint = _suggest(field, allowed)
            lines.append(f"  {path}: unknown field '{field}'{hint}; allowed fields here: {', '.join(allowed)}")
        elif item["type"] == "union_tag_invalid":
            lines.append(f"  {path}.type: unknown method type {item['input'].get('type')!r}; "
                         f"allowed: {', '.join(METHOD_TYPES)}")
        elif item["type"] == "union_tag_not_found":
            lines.append(f"  {path}: a method needs a 'type' (one of {', '.join(METHOD_TYPES)})")
        elif item["type"] == "missing":
            lines.append(f"  {path}: required field missing; add it")
        else:
            msg = _MESSAGES.get(item["type"]) or item["msg"].removeprefix("Value error, ")
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
    if path.is_dir():
        raise ConfigError(f"{path} is a directory, not a config file; pass the path of an experiment YAML, "
                          "e.g. configs/quickstart.yaml")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path} "
                          "(pass the path of an experiment YAML, e.g. configs/quickstart.yaml)")
    try:
        data = yaml.safe_load(read_utf8(path))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if isinstance(data, dict) and "include_path" in data:
        data = {**data, "include_path": resolve_include_paths(data["include_path"], path.parent)}
    return parse_config(data, str(path))


def read_utf8(path: Path) -> str:
    """The file's text, read as UTF-8 whatever the locale (a leading byte-order mark is dropped); a
    file that is not UTF-8 (a Latin-1 byte, a binary file) is a ConfigError naming the first bad line."""
    try:
        raw = path.read_bytes().removeprefix(codecs.BOM_UTF8)
    except OSError as err:
        raise ConfigError(f"{path}: cannot be read ({err.strerror})") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise ConfigError(f"{path}: not UTF-8 text: line {line} has the byte 0x{raw[err.start]:02x}, which UTF-8 "
                          "cannot decode; save the file as UTF-8") from None


# TrainingConfig fields outside a trial's identity (where it runs), and fields added after results
# stores existed, which the identity holds only when they differ from these defaults
RUNTIME_TRAINING_FIELDS = ("device",)
LATER_TRAINING_DEFAULTS: dict[str, Any] = {"model_dtype": "fp32", "gradient_accumulation_steps": 1,
                                           "gradient_checkpointing": False, "attn_implementation": "sdpa"}


LATER_DATA_DEFAULTS: dict[str, Any] = {"k_shot": None, "mt_bench_max_new_tokens": 1024}


class TrialConfig(_Strict):
    """One trial, fully resolved and validated: what planning hands to the trial process and what
    its record keeps. ``identity()`` is the part its key hashes (the analysis options ride along
    outside it: they never change training)."""

    model: str
    task: str
    method_label: str
    method: MethodConfig
    training: TrainingConfig  # one grid point: every axis holds a single value
    data: DataConfig  # with the task's overrides applied; k_shot a single value or None
    data_source: str
    seed: Seed = Field(description=SEED_RULE)
    save_weights: bool = True
    analysis: AnalysisConfig = Field(default_factory=AnalysisConfig)

    # Runtime settings ride along outside the identity: they never change what a trial computes
    # beyond float rounding. Fields added to the identity after stores existed count only when
    # set, so every trial that does not set them keeps the key it always had.
    threads: Optional[Int] = Field(None, ge=1, description="CPU threads (None: torch's default, all cores "
                                   "unless OMP_NUM_THREADS says otherwise)")
    include_path: list[str] = Field(default_factory=list, description="folders of task definitions the trial "
                                    "process registers before it runs (pefteval.tasks.user)")

    def identity(self) -> dict[str, Any]:
        data = self.data.model_dump()
        for name, default in LATER_DATA_DEFAULTS.items():
            if data[name] == default:
                del data[name]  # absent unless set, so trials without it keep the keys they always had
        training = self.training.model_dump(exclude=set(RUNTIME_TRAINING_FIELDS))
        for name, default in LATER_TRAINING_DEFAULTS.items():
            if training[name] == default:
                del training[name]
        return {
            "model": self.model,
            "task": self.task,
            "method_label": self.method_label,
            "method": self.method.method_params(),
            "training": training,
            "data": data,
            "data_source": self.data_source,
            "seed": self.seed,
            "save_weights": self.save_weights,
        }

    def to_json(self) -> dict[str, Any]:
        """What the sweep writes as ``trial.json``: the identity, with the runtime settings and the
        analysis options beside it (``from_json`` reads it back)."""
        return {**self.identity(), "training": self.training.model_dump(), "threads": self.threads,
                "include_path": self.include_path, "analysis": self.analysis.model_dump()}

    @classmethod
    def from_json(cls, config: dict[str, Any]) -> TrialConfig:
        """A trial's ``trial.json`` (its identity, plus ``key`` and ``analysis``) as written by the
        sweep, by this release or an earlier one."""
        fields = {k: v for k, v in config.items() if k != "key"}
        fields["method"] = {**config["method"], "name": config["method_label"]}
        fields["analysis"] = config.get("analysis") or {}
        return cls.model_validate(fields)
