"""Adding a task through the task interface, as a user would: a classification task read from a
CSV file, declared in one place (its splits, scorer and selection metric) and registered. Every
kind, method and report path then works for it unchanged."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from pefteval.config import parse_config
from pefteval.plan import plan_trials
from pefteval.reporting import build_table, render
from pefteval.tasks import TASKS, Example, Task, TaskSplits, hold_out_validation, register
from pefteval.tasks.base import score_accuracy, shuffled
from pefteval.trial import run_trial

from .conftest import trigger_sentences


def read_rows(path: Path) -> list[Example]:
    with open(path, newline="", encoding="utf-8") as f:
        return [Example(row["text"], None, int(row["label"])) for row in csv.DictReader(f)]


def csv_task(root: Path) -> Task:
    """The whole task: its data (train.csv, test.csv under ``root``), scorer and metric."""
    def splits(data_dir: Path | None, cfg, seed: int = 0) -> TaskSplits:
        validation, train = hold_out_validation(shuffled(read_rows(root / "train.csv"), cfg.split_seed), cfg)
        return TaskSplits(train=train, validation=validation, test=read_rows(root / "test.csv"))

    return Task(name="trigger_csv", display="Trigger (CSV)", help="label 1 iff the text says 'excellent'",
                kind="classification", splits=splits, score=score_accuracy, selection_metric="accuracy",
                label_names=("other", "excellent"), report_columns=("accuracy",))


def write_csv(path: Path, rows: list[tuple[str, int]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(rows)


@pytest.fixture
def trigger_csv(tmp_path):
    write_csv(tmp_path / "train.csv", trigger_sentences(96, 0))
    write_csv(tmp_path / "test.csv", trigger_sentences(40, 1))
    register(csv_task(tmp_path))
    yield tmp_path
    del TASKS["trigger_csv"]


def test_a_task_from_a_csv_file_trains_evaluates_and_reports(trigger_csv, tiny_bert_dir, tmp_path):
    exp = parse_config({"name": "csv", "model": str(tiny_bert_dir), "tasks": ["trigger_csv"], "seeds": [0],
                        "training": {"epochs": 2, "batch_size": 8, "lr": 1e-3, "precision": "fp32"},
                        "data": {"validation_size": 16}, "analyses": {"capture": False},
                        "methods": [{"type": "fft"}, {"type": "lora", "r": 4, "alpha": 8}]})
    records = []
    for trial in plan_trials(exp, "local"):
        run_dir = tmp_path / "runs" / trial.key
        run_dir.mkdir(parents=True)
        record = run_trial(trial.resolved, None, run_dir, trial.key)
        assert record["status"] == "complete" and record["task_kind"] == "classification"
        assert record["selection_metric"] == "accuracy" and record["train_examples"] == 80
        assert set(record["metrics"]) == {"validation", "test"} and record["metrics"]["test"]["n"] == 40
        rows = json.loads((run_dir / "predictions.json").read_text())
        test = rows["test"]
        assert [r["id"] for r in test] == [str(i) for i in range(40)]
        assert {r["target"] for r in test} <= {"other", "excellent"}
        # the per-example scores are the scorer's: they average to the reported accuracy
        assert sum(r["score"] for r in test) / 40 == record["metrics"]["test"]["accuracy"]
        assert all(r["score"] == float(r["prediction"] == r["target"]) for r in test)
        assert record["curve"][record["best_epoch"] - 1]["validation_accuracy"] == \
            record["metrics"]["validation"]["accuracy"]
        records.append({**record, "key": trial.key, "config": trial.config})
    text = render(build_table(records), "markdown")
    assert "Trigger (CSV) orig" in text and "| fft |" in text and "| lora |" in text
