"""Without a data directory, tasks load from the hub (nyu-mll/glue, AI-secure/adv_glue).
The hub is unreachable here, so datasets.load_dataset is replaced by a fake that
returns rows in the hub datasets' formats and records what was asked for."""

from __future__ import annotations

import pytest

from pefteval.config import DataConfig
from pefteval.errors import DataError
from pefteval.tasks import get_task


def _fake_hub(calls: list[tuple[str, str, str]]):
    def load_dataset(path: str, config: str, split: str):
        calls.append((path, config, split))
        if path == "AI-secure/adv_glue":
            if config == "adv_sst2":
                return [{"sentence": f"adv {i}", "label": i % 2, "idx": i} for i in range(6)]
            return [{"premise": f"p {i}", "hypothesis": f"h {i}", "label": i % 3, "idx": i} for i in range(9)]
        if config == "sst2":
            n = 50 if split == "train" else 20
            return [{"sentence": f"{split} sentence {i}", "label": i % 2, "idx": i} for i in range(n)]
        if config == "mnli":
            n = 60 if split == "train" else 30
            return [{"premise": f"{split} p {i}", "hypothesis": f"{split} h {i}", "label": i % 3, "idx": i}
                    for i in range(n)]
        raise ValueError(f"unexpected {path}/{config}")

    return load_dataset


def test_sst2_from_hub_uses_train_and_validation(monkeypatch):
    import datasets

    calls: list = []
    monkeypatch.setattr(datasets, "load_dataset", _fake_hub(calls))
    splits = get_task("sst2").splits(None, DataConfig(validation_size=0.2))
    assert ("nyu-mll/glue", "sst2", "train") in calls
    assert ("nyu-mll/glue", "sst2", "validation") in calls
    assert ("AI-secure/adv_glue", "adv_sst2", "validation") in calls
    assert len(splits.train) == 40 and len(splits.validation) == 10 and len(splits.test) == 20
    assert len(splits.adversarial["advglue"]) == 6
    assert splits.train_source == "train"
    assert all(x.text_a.startswith("train") for x in splits.train + splits.validation)


def test_mnli_mm_from_hub_tests_on_mismatched(monkeypatch):
    import datasets

    calls: list = []
    monkeypatch.setattr(datasets, "load_dataset", _fake_hub(calls))
    splits = get_task("mnli-mm").splits(None, DataConfig())
    assert ("nyu-mll/glue", "mnli", "validation_mismatched") in calls
    assert ("AI-secure/adv_glue", "adv_mnli_mismatched", "validation") in calls
    assert all(x.text_a.startswith("validation_mismatched") for x in splits.test)
    assert {x.label for x in splits.test} == {0, 1, 2}


def test_hub_failure_is_a_clear_data_error(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match="--data-dir"):
        get_task("rte").splits(None, DataConfig())
