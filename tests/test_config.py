"""Experiment configs: parsing, grid expansion, overrides and the error messages a user sees."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pefteval.config import (
    AdaLoraMethod,
    DataConfig,
    DataOverride,
    FFTMethod,
    IA3Method,
    LoraMethod,
    PrefixMethod,
    TrainingConfig,
    TrainingOverride,
    load_config,
    parse_config,
)
from pefteval.errors import ConfigError, UserError

from .conftest import DATA_DIR

REPO = Path(__file__).resolve().parents[1]


def base(**extra):
    cfg = {"name": "t", "model": "minilm-l6", "tasks": ["sst2"], "methods": [{"type": "fft"}]}
    cfg.update(extra)
    return cfg


def error_of(data) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data, "exp.yaml")
    return str(info.value)


def test_quickstart_parses():
    exp = load_config(REPO / "configs" / "quickstart.yaml")
    assert exp.name == "quickstart"
    assert exp.model == "minilm-l6"
    assert exp.tasks == ["sst2", "rte"]
    assert exp.seeds == [0, 42, 421]
    assert [m.label for m in exp.methods] == ["fft", "lora", "adalora", "prefix", "ia3", "bitfit"]
    assert [type(m) for m in exp.methods[:5]] == [FFTMethod, LoraMethod, AdaLoraMethod, PrefixMethod, IA3Method]
    lora = exp.methods[1]
    assert (lora.r, lora.alpha) == (8, 16)
    assert exp.methods[3].num_virtual_tokens == 20
    assert exp.training.epochs == 2 and exp.training.max_seq_length == 128
    assert exp.data.max_train_examples == 1000
    # per-method learning rates override the experiment default
    assert exp.training_for(exp.methods[0]).lr == pytest.approx(1e-4)
    assert exp.training_for(exp.methods[4]).lr == pytest.approx(3e-2)
    assert exp.training.lr != exp.training_for(exp.methods[4]).lr
    # RTE's task_data override, SST-2 keeps the experiment's data settings
    assert exp.data_for("rte").max_train_examples == 300
    assert exp.data_for("rte").max_validation_examples == 200
    assert exp.data_for("sst2").max_train_examples == 1000
    assert exp.data_for("sst2").max_validation_examples == 300


def test_paper_table6_grid_has_nine_points():
    exp = load_config(REPO / "configs" / "paper" / "table3_advglue.yaml")
    grid = exp.training_for(exp.methods[0]).grid()
    assert len(grid) == 9
    combos = [(p["lr"], p["warmup_ratio"], p["batch_size"]) for p in grid]
    assert len(set(combos)) == 9
    assert {c[0] for c in combos} == {1e-5, 2e-5, 3e-5}
    assert {c[1] for c in combos} == {0.0, 0.02, 0.06}
    assert {c[2] for c in combos} == {64}
    # lr-major order, every point a full scalar training config
    assert [c[0] for c in combos] == [1e-5] * 3 + [2e-5] * 3 + [3e-5] * 3
    assert all(p["epochs"] == 10 and p["max_seq_length"] == 256 for p in grid)
    assert all(not isinstance(p[k], list) for p in grid for k in p)


def test_grid_three_axes_product():
    grid = TrainingConfig(lr=[1e-4, 2e-4], warmup_ratio=[0.0, 0.1, 0.2], batch_size=[8, 16]).grid()
    assert len(grid) == 12
    assert len({(p["lr"], p["warmup_ratio"], p["batch_size"]) for p in grid}) == 12
    scalar = TrainingConfig(lr=3e-4).grid()
    assert len(scalar) == 1 and scalar[0]["lr"] == 3e-4


def test_misspelt_method_field_names_path_and_suggests():
    msg = error_of(base(methods=[{"type": "fft"}, {"type": "lora", "rr": 4}]))
    assert "exp.yaml" in msg
    assert "methods[1].rr" in msg
    assert "did you mean 'r'?" in msg
    assert "alpha" in msg  # lists the fields allowed for a LoRA method


def test_misspelt_nested_training_and_task_data_fields():
    msg = error_of(base(methods=[{"type": "lora", "training": {"lrr": 1e-3}}]))
    assert "methods[0].training.lrr" in msg and "did you mean 'lr'?" in msg
    msg = error_of(base(task_data={"sst2": {"max_train": 3}}))
    assert "task_data.sst2.max_train" in msg and "max_train_examples" in msg
    msg = error_of(base(seed=[1]))
    assert "seed" in msg and "did you mean 'seeds'?" in msg


def test_unknown_method_type():
    msg = error_of(base(methods=[{"type": "lorra", "r": 4}]))
    assert "methods[0].type" in msg
    assert "unknown method type 'lorra'" in msg
    assert "lora" in msg and "bitfit" in msg
    msg = error_of(base(methods=[{"r": 4}]))
    assert "methods[0]" in msg and "needs a 'type'" in msg


def test_unknown_task_with_suggestion():
    msg = error_of(base(tasks=["sst2", "mlni"]))
    assert "unknown task 'mlni'" in msg and "did you mean 'mnli'?" in msg
    msg = error_of(base(task_data={"rtee": {"max_train_examples": 3}}))
    assert "unknown task 'rtee'" in msg and "did you mean 'rte'?" in msg


def test_duplicate_method_names():
    msg = error_of(base(methods=[{"type": "lora", "r": 4}, {"type": "lora", "r": 8}]))
    assert "unique" in msg and "lora" in msg
    # distinct names make variants legal
    exp = parse_config(base(methods=[{"type": "lora", "r": 4, "name": "lora4"}, {"type": "lora", "r": 8}]))
    assert [m.label for m in exp.methods] == ["lora4", "lora"]


@pytest.mark.parametrize("lr", [-1e-5, [1e-5, -2e-5]])
def test_negative_lr_rejected(lr):
    msg = error_of(base(training={"lr": lr}))
    assert "training.lr" in msg and "must be > 0" in msg


def test_batch_size_zero_rejected():
    # a batch size of 0 can never train (steps_per_epoch divides by it); it must fail at config time
    msg = error_of(base(training={"batch_size": 0}))
    assert "training.batch_size" in msg


def test_other_value_errors():
    assert "training.lr" in error_of(base(training={"lr": []}))
    assert "training.epochs" in error_of(base(training={"epochs": 0}))
    assert "methods[0].r" in error_of(base(methods=[{"type": "lora", "r": 0}]))
    assert "tasks" in error_of(base(tasks=[]))
    assert "data.dev_test_fraction" in error_of(base(data={"dev_test_fraction": 1.0}))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        parse_config(["not", "a", "mapping"], "exp.yaml")
    assert issubclass(ConfigError, UserError)


def test_per_method_training_override_merges():
    exp = parse_config(base(
        training={"epochs": 4, "lr": 2e-5, "batch_size": 16, "max_seq_length": 64},
        methods=[{"type": "fft"}, {"type": "lora", "training": {"lr": [1e-3, 2e-3], "epochs": 2}}],
    ))
    fft, lora = exp.methods
    assert exp.training_for(fft).lr == 2e-5 and exp.training_for(fft).epochs == 4
    t = exp.training_for(lora)
    assert t.lr == [1e-3, 2e-3] and t.epochs == 2
    assert t.batch_size == 16 and t.max_seq_length == 64  # untouched fields keep the experiment's values
    assert len(t.grid()) == 2
    assert exp.training.lr == 2e-5  # the experiment's settings are not modified


def test_per_task_data_override_merges():
    exp = parse_config(base(
        tasks=["sst2", "rte"],
        data={"max_train_examples": 500, "validation_size": 0.2, "split_seed": 3},
        task_data={"rte": {"max_train_examples": 50, "train_from": "dev"}},
    ))
    rte, sst2 = exp.data_for("rte"), exp.data_for("sst2")
    assert rte.max_train_examples == 50 and rte.train_from == "dev"
    assert rte.validation_size == 0.2 and rte.split_seed == 3
    assert sst2.max_train_examples == 500 and sst2.train_from == "auto"
    assert exp.data.max_train_examples == 500


def test_task_data_overrides_every_data_field():
    # split_seed and k_shot were missing from the hand-written override; a None means "not set"
    exp = parse_config(base(
        tasks=["sst2", "rte"],
        data={"max_train_examples": 500, "split_seed": 3, "attack": {"max_queries": 24, "seed": 1}},
        task_data={"rte": {"split_seed": 7, "k_shot": [4, 8], "max_train_examples": None, "attack": {"seed": 5}}},
    ))
    rte, sst2 = exp.data_for("rte"), exp.data_for("sst2")
    assert rte.split_seed == 7 and rte.k_shot == [4, 8]
    assert rte.max_train_examples == 500  # None in an override keeps the experiment's value
    assert sst2.split_seed == 3 and sst2.k_shot is None
    # a nested model is overridden whole: the task's attack is AttackConfig(seed=5), not a field-wise merge
    assert rte.attack.seed == 5 and rte.attack.max_queries == 1200
    assert sst2.attack.seed == 1 and sst2.attack.max_queries == 24


def test_override_models_have_every_base_field():
    # derived from the base models, so a new field is overridable at once and constraints cannot diverge
    for base_model, override in [(TrainingConfig, TrainingOverride), (DataConfig, DataOverride)]:
        assert list(override.model_fields) == list(base_model.model_fields)
        for name, field in base_model.model_fields.items():
            assert override.model_fields[name].default is None, name
            assert override.model_fields[name].metadata == field.metadata, name
        assert override().model_dump(exclude_none=True) == {}
        base_validators = base_model.__pydantic_decorators__.field_validators
        override_validators = override.__pydantic_decorators__.field_validators
        assert {k: v.info.fields for k, v in override_validators.items()} == \
            {k: v.info.fields for k, v in base_validators.items()}
    assert DataOverride(k_shot=None).k_shot is None  # the base's validators let "not set" through


@pytest.mark.parametrize("k_shot", [0, [], [4, 0]])
def test_bad_task_data_k_shot_names_its_path(k_shot):
    # used to pass validation and crash later in data_for with a raw pydantic traceback
    msg = error_of(base(task_data={"sst2": {"k_shot": k_shot}}))
    assert msg.splitlines() == [
        "exp.yaml: invalid experiment config",
        "  task_data.sst2.k_shot: k_shot must be a positive number of examples per class, "
        f"or a non-empty list of them (got {k_shot!r})",
    ]


@pytest.mark.parametrize(("training", "path", "needle"), [
    ({"lr": -1}, "methods[1].training.lr", "learning rates must be > 0 (got -1)"),
    ({"lr": [1e-3, 1e-3]}, "methods[1].training.lr", "grid values must be distinct"),
    ({"warmup_ratio": 2}, "methods[1].training.warmup_ratio", "warmup_ratio must be between 0 and 1 (got 2)"),
    ({"batch_size": 0}, "methods[1].training.batch_size", "batch_size must be >= 1"),
    ({"epochs": 0}, "methods[1].training.epochs", "Input should be greater than or equal to 1 (got 0)"),
    ({"precision": "fp8"}, "methods[1].training.precision", "Input should be 'bf16', 'fp16' or 'fp32' (got 'fp8')"),
])
def test_bad_method_training_override_names_its_path(training, path, needle):
    msg = error_of(base(methods=[{"type": "fft"}, {"type": "lora", "training": training}]))
    assert f"  {path}: {needle}" in msg


def test_bad_task_data_values_name_their_paths():
    msg = error_of(base(tasks=["sst2", "rte"], task_data={"rte": {"dev_test_fraction": 1.0, "validation_size": 0}}))
    assert "  task_data.rte.dev_test_fraction: Input should be less than 1 (got 1.0)" in msg
    assert "  task_data.rte.validation_size: Input should be greater than 0 (got 0)" in msg


def test_misspelt_task_data_field_suggests_the_close_one():
    msg = error_of(base(tasks=["sst2", "rte"], task_data={"rte": {"split_sed": 1}}))
    line = next(x for x in msg.splitlines() if "task_data.rte.split_sed" in x)
    assert "unknown field 'split_sed' (did you mean 'split_seed'?); allowed fields here: " in line
    assert line.endswith(", ".join(DataConfig.model_fields))
    msg = error_of(base(task_data={"sst2": {"attack": {"max_query": 5}}}))
    assert "task_data.sst2.attack.max_query" in msg and "did you mean 'max_queries'?" in msg


def test_invalid_merges_are_config_errors_with_paths():
    # overrides that skipped validation (built directly, model_copy) are still reported with their path:
    # at parse time by the experiment's merge check, later by data_for / training_for
    lora = {"type": "lora", "training": TrainingOverride.model_construct(lr=-1.0)}
    msg = error_of(base(task_data={"sst2": DataOverride.model_construct(k_shot=0)}, methods=[{"type": "fft"}, lora]))
    assert "  task_data.sst2.k_shot: k_shot must be a positive number" in msg
    assert "  methods[1].training.lr: learning rates must be > 0 (got -1.0)" in msg
    exp = parse_config(base())
    bad = exp.model_copy(update={"task_data": {"sst2": DataOverride.model_construct(k_shot=0)}})
    with pytest.raises(ConfigError, match=r"task_data\.sst2\.k_shot: k_shot must be a positive number"):
        bad.data_for("sst2")
    method = exp.methods[0].model_copy(update={"training": TrainingOverride.model_construct(warmup_ratio=2.0)})
    bad = exp.model_copy(update={"methods": [method]})
    with pytest.raises(ConfigError, match=r"methods\[0\]\.training\.warmup_ratio: warmup_ratio must be between"):
        bad.training_for(method)


def test_cli_run_reports_bad_override_before_training(cli, tmp_path):
    cfg = base(tasks=["sst2"], seeds=[0], task_data={"sst2": {"k_shot": 0}},
               methods=[{"type": "fft"}, {"type": "lora", "training": {"warmup_ratio": 2}}])
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    out = tmp_path / "out"
    proc = cli("run", path, "--out", out, "--data-dir", DATA_DIR)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.stderr.startswith(f"error: {path}: invalid experiment config")
    assert "  task_data.sst2.k_shot: k_shot must be a positive number of examples per class" in proc.stderr
    assert "  methods[1].training.warmup_ratio: warmup_ratio must be between 0 and 1 (got 2)" in proc.stderr
    assert not out.exists()  # nothing planned or trained


def test_load_config_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found") as info:
        load_config(tmp_path / "nope.yaml")
    assert "nope.yaml" in str(info.value)


def test_load_config_invalid_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\ntasks: [sst2\nmethods: {type: fft\n")
    with pytest.raises(ConfigError, match="not valid YAML") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_load_config_roundtrip_and_error_names_file(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(base(methods=[{"type": "ia3", "target_module": ["key"]}])))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert "methods[0].target_module" in str(info.value) and "target_modules" in str(info.value)
    path.write_text(yaml.safe_dump(base(seeds=[7, 8])))
    assert load_config(path).seeds == [7, 8]


# experiment configs: configs/accelerate/ holds accelerate launch configs, not experiments
@pytest.mark.parametrize("path", sorted(p for p in (REPO / "configs").rglob("*.yaml") if "accelerate" not in p.parts),
                         ids=lambda p: p.name)
def test_every_shipped_config_parses_and_plans(path):
    from pefteval.plan import plan_trials
    from pefteval.tasks import TASKS

    exp = load_config(path)
    assert all(t in TASKS for t in exp.tasks)
    trials = plan_trials(exp, "local")
    assert len(trials) >= len(exp.tasks) * len(exp.methods) * len(exp.seeds)
    assert len({t.key for t in trials}) == len(trials)
