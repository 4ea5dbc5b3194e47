"""Golden records: what every kind of trial measures on the tiny random models and real data,
recorded from the code before the trial recipe was unified, and trial keys of every shipped
config, so that results stores written by earlier releases still resume.

Re-record (only when a change of numbers is intended and explained):
``PEFTEVAL_RECORD_GOLDEN=1 python -m pytest tests/test_golden.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from pefteval.config import load_config, parse_config
from pefteval.plan import plan_trials

from .conftest import REPO_ROOT

GOLDEN = Path(__file__).parent / "golden"
RECORD = os.environ.get("PEFTEVAL_RECORD_GOLDEN") == "1"
# experiment configs (configs/accelerate/ holds accelerate launch configs)
CONFIGS = sorted(p for p in (REPO_ROOT / "configs").rglob("*.yaml") if "accelerate" not in p.parts)


def _check(name: str, value: object, exact: bool = True) -> None:
    """``value`` equals the recorded one; with ``exact=False`` it may hold more (a record that
    gained a field), but every recorded value must be there, unchanged."""
    path = GOLDEN / name
    if RECORD:
        path.write_text(json.dumps(value, indent=1, sort_keys=True) + "\n")
        return
    assert path.is_file(), f"{path} missing; record it with PEFTEVAL_RECORD_GOLDEN=1"
    recorded = json.loads(path.read_text())
    if exact:
        assert value == recorded
    else:
        _assert_holds(value, recorded, name)


def _assert_holds(value: object, recorded: object, where: str) -> None:
    if isinstance(recorded, dict):
        assert isinstance(value, dict), where
        for key, expected in recorded.items():
            assert key in value, f"{where}/{key} is missing"
            _assert_holds(value[key], expected, f"{where}/{key}")
    else:
        assert value == recorded, f"{where}: {value!r} != recorded {recorded!r}"


def _keys(exp, source="local", **kwargs) -> list[str]:
    return [t.key for t in plan_trials(exp, source, **kwargs)]


def _digest(keys: list[str]) -> str:
    return f"{len(keys)} keys, sha256 " + hashlib.sha256(",".join(keys).encode()).hexdigest()


def test_every_shipped_config_plans_the_recorded_keys():
    planned = {}
    for path in CONFIGS:
        exp = load_config(path)
        name = str(path.relative_to(REPO_ROOT))
        planned[name] = {"local": _keys(exp), "hub": _digest(_keys(exp, "hub"))}
        # the command line's overrides (run --max-train-examples 50 --seeds 0,1) go through a dump
        # and a re-parse of the config
        raw = exp.model_dump(exclude_unset=True, mode="json")
        for section in [raw.setdefault("data", {}), *raw.get("task_data", {}).values()]:
            section["max_train_examples"] = 50
        planned[name]["cli_overrides"] = _digest(_keys(parse_config(raw), seeds=[0, 1]))
    assert sum(len(v["local"]) for v in planned.values()) > 1000
    _check("trial_keys.json", planned)


# one small experiment per kind of trial; real data, tiny random models
def _cases(tiny_bert_dir: Path, tiny_qa_dir: Path, tiny_llama_dir: Path) -> dict[str, dict]:
    fast = {"epochs": 2, "batch_size": 8, "lr": 1e-3, "precision": "fp32", "max_seq_length": 64}
    return {
        "classification": {
            "model": str(tiny_bert_dir), "tasks": ["sst2", "rte"], "seeds": [0],
            "training": fast,
            "data": {"max_train_examples": 48, "max_validation_examples": 16, "max_eval_examples": 24},
            "methods": [{"type": "fft"}, {"type": "lora", "r": 4, "alpha": 8}, {"type": "adalora", "r": 2, "init_r": 4},
                        {"type": "prefix", "num_virtual_tokens": 4}, {"type": "ia3"}, {"type": "bitfit"},
                        {"type": "fft", "name": "top1", "top_k_layers": 1}],
        },
        "extractive_qa": {
            "model": str(tiny_qa_dir), "tasks": ["squad"], "seeds": [0],
            "training": {**fast, "epochs": 1, "doc_stride": 16},
            "data": {"max_train_examples": 24, "max_validation_examples": 6, "max_eval_examples": 8,
                     "max_adversarial_questions": 3,
                     "attack": {"candidates": 3, "max_passes": 1, "max_queries": 6}},
            "methods": [{"type": "fft"}, {"type": "lora", "r": 4, "alpha": 8}],
        },
        "generative_qa": {
            "model": str(tiny_llama_dir), "tasks": ["squad"], "seeds": [0],
            "training": {**fast, "epochs": 1, "max_seq_length": 160, "max_new_tokens": 4},
            "data": {"max_train_examples": 16, "max_validation_examples": 4, "max_eval_examples": 6,
                     "max_adversarial_questions": 2, "adversarial_sets": ["AddSent", "AddNegAns"]},
            "methods": [{"type": "fft"}, {"type": "lora", "r": 4, "alpha": 8}],
        },
        "generation": {
            "model": str(tiny_llama_dir), "tasks": ["viggo", "gsm8k", "sql"], "seeds": [0],
            "training": {**fast, "epochs": 2, "max_seq_length": 256, "max_new_tokens": 6},
            "data": {"max_train_examples": 16, "validation_size": 4, "max_validation_examples": 4,
                     "max_eval_examples": 6},
            "methods": [{"type": "fft"}, {"type": "lora", "r": 4, "alpha": 8}],
        },
        "fewshot": {
            "model": str(tiny_llama_dir), "tasks": ["sst2", "trec"], "seeds": [0, 1],
            "training": {**fast, "batch_size": 4, "max_seq_length": 96},
            "data": {"k_shot": [2, 4], "max_eval_examples": 12},
            "methods": [{"type": "fft"}, {"type": "lora", "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
                        {"type": "lora", "name": "lora_paper", "r": 2, "alpha": 4}],
        },
    }


def _measured(record: dict) -> dict:
    """What must not change: metrics, parameter counts, the training curve and the chosen epoch."""
    keep = ("metrics", "params", "curve", "best_epoch", "train_examples", "train_source", "k_shot")
    return {k: record[k] for k in keep if k in record}


def _captured(run_dir: Path) -> dict:
    """What the analyses read: each increment's Frobenius norm, and the probe's tensors (shape, sum)."""
    from safetensors.torch import load_file

    from pefteval.kinds import rebuild

    stats = json.loads((run_dir / "increments.json").read_text())["modules"]
    probe = load_file(str(run_dir / "probe.safetensors"))
    return {"increments": {name: round(s["fro"], 6) for name, s in stats.items()},
            "probe": {name: [list(t.shape), int(t.long().sum())] for name, t in probe.items()},
            "trainable": sorted(n for n, p in rebuild(run_dir)[0].named_parameters() if p.requires_grad)}


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["classification", "extractive_qa", "generative_qa", "generation", "fewshot"])
def test_golden_records_per_trial_kind(kind, tmp_path, data_dir, tiny_bert_dir, tiny_qa_dir, tiny_llama_dir,
                                       monkeypatch):
    from pefteval.sweep import run_dir_for, run_trials

    monkeypatch.setenv("PEFTEVAL_CACHE_DIR", str(tmp_path / "cache"))
    raw = {"name": f"golden_{kind}",
           **_cases(tiny_bert_dir, tiny_qa_dir, tiny_llama_dir)[kind]}
    exp = parse_config(raw)
    trials = plan_trials(exp, "local")
    out = tmp_path / "out"
    summary = run_trials(trials, out, data_dir, exp.name)
    failed = [(t.describe(), e) for t, e in summary.failed]
    assert not failed
    records = {}
    for trial in trials:
        record = json.loads((run_dir_for(out, trial) / "result.json").read_text())
        label = f"{trial.task}/{trial.method}/seed{trial.seed}" + (f"/k{trial.k_shot}" if trial.k_shot else "")
        records[label] = {**_measured(record), **_captured(run_dir_for(out, trial))}
    # the validation split is scored by the task's full scorer now (generation tasks gained their
    # secondary metrics there); every recorded number must be unchanged
    _check(f"records_{kind}.json", records, exact=False)
