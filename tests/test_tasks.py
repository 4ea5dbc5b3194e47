"""Task loaders on the real data (counts, splits, leak filter, label ids checked against
AdvGLUE) and on small malformed files written in the canonical layout."""

from __future__ import annotations

import difflib
import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pefteval.config import DataConfig
from pefteval.errors import DataError, UserError
from pefteval.tasks import TASKS, Example, get_task, resolve_data_dir
from pefteval.tasks.glue import (
    ADVGLUE_FILE,
    SPEC_BY_NAME,
    make_splits,
    normalise,
    read_advglue,
    read_local,
    read_parquet,
    read_tsv,
)

DEV_TASKS = ["qnli", "qqp", "mnli"]


def load(task: str, data_dir: Path, **data) -> object:
    return get_task(task).splits(data_dir, DataConfig(**data))


def source_dev(task: str, data_dir: Path) -> list[Example]:
    spec = SPEC_BY_NAME[task]
    return read_local(data_dir, spec.local_test, spec)


def advglue(task: str, data_dir: Path) -> list[Example]:
    return read_advglue(data_dir / ADVGLUE_FILE, SPEC_BY_NAME[task])


# ---------------------------------------------------------------- real data: counts and splits


def test_registry_has_the_glue_qa_and_generation_tasks():
    assert list(TASKS) == ["sst2", "qqp", "mnli", "mnli-mm", "qnli", "rte", "squad", "viggo", "sql", "gsm8k",
                           "trec", "agnews", "emoc", "amazon", "alpaca"]
    assert {TASKS[t].kind for t in ("gsm8k", "sql", "viggo")} == {"generation"}
    assert TASKS["alpaca"].kind == "instruct" and TASKS["alpaca"].selection_metric == "rougeL"
    assert TASKS["trec"].kind == "classification" and TASKS["trec"].num_labels == 6
    assert TASKS["agnews"].adversarial == ()
    assert get_task("mnli").num_labels == 3 and get_task("sst2").num_labels == 2
    assert get_task("squad").kind == "qa" and get_task("sst2").kind == "classification"
    with pytest.raises(KeyError, match="unknown task"):
        get_task("cola")


def test_sst2_counts(data_dir):
    spec = SPEC_BY_NAME["sst2"]
    train = read_local(data_dir, spec.local_train, spec)
    dev = read_local(data_dir, spec.local_test, spec)
    assert len(train) == 67_349 and len(dev) == 872
    assert Counter(x.label for x in train) == {1: 37_569, 0: 29_780}
    assert Counter(x.label for x in dev) == {1: 444, 0: 428}
    assert train[0].text_a.startswith("hide new secretions from the parental units") and train[0].text_b is None

    splits = load("sst2", data_dir)
    assert splits.train_source == "train"
    assert len(splits.validation) == 1000  # 10 % of train, capped at max_validation_examples
    assert len(splits.train) + len(splits.validation) == 67_349
    assert splits.test == dev  # the whole GLUE dev set is the test set
    assert len(splits.adversarial["advglue"]) == 148
    assert set(splits.eval_splits()) == {"validation", "test", "advglue"}
    # SST-2 train repeats some phrases, so disjointness is checked on the row objects themselves
    ids_train, ids_val = {id(x) for x in splits.train}, {id(x) for x in splits.validation}
    assert not ids_train & ids_val and len(ids_train | ids_val) == 67_349


def test_rte_counts(data_dir):
    spec = SPEC_BY_NAME["rte"]
    train = read_local(data_dir, spec.local_train, spec)
    assert len(train) == 2_490
    assert Counter(x.label for x in train) == {0: 1_249, 1: 1_241}  # 0 = entailment
    dev = source_dev("rte", data_dir)
    assert len(dev) == 277 and Counter(x.label for x in dev) == {0: 146, 1: 131}
    splits = load("rte", data_dir)
    assert len(splits.validation) == 249 and len(splits.train) == 2_490 - 249
    assert splits.test == dev and len(splits.adversarial["advglue"]) == 81
    assert all(x.text_b for x in splits.train)


@pytest.mark.parametrize("task,rows", [("qnli", 5_463), ("qqp", 40_430), ("mnli", 9_815)])
def test_train_from_dev_splits_are_disjoint_and_deterministic(data_dir, task, rows):
    dev = source_dev(task, data_dir)
    assert len(dev) == rows
    splits = load(task, data_dir)
    assert splits.train_source == "dev"
    train, val, test = set(splits.train), set(splits.validation), set(splits.test)
    assert len(train) == len(splits.train) and len(test) == len(splits.test)
    assert not train & test and not val & test and not train & val
    assert train | val | test <= set(dev)
    assert len(splits.test) == round(rows * 0.5)
    # what is neither test nor train/validation was dropped by the AdvGLUE leak filter, and said so
    dropped = rows - len(train) - len(val) - len(test)
    assert dropped > 0
    assert any(f"dropped {dropped} training examples" in n for n in splits.notes)
    again = load(task, data_dir)
    assert (again.train, again.validation, again.test) == (splits.train, splits.validation, splits.test)
    other = load(task, data_dir, split_seed=1)
    assert set(other.test) != test and len(other.test) == len(splits.test)


@pytest.mark.parametrize("fraction", [0.2, 0.7])
def test_dev_test_fraction_respected(data_dir, fraction):
    splits = load("qnli", data_dir, dev_test_fraction=fraction)
    assert len(splits.test) == round(5_463 * fraction)
    assert len(splits.train) + len(splits.validation) <= 5_463 - len(splits.test)
    assert any(f"{fraction:.0%}" in n for n in splits.notes)


def test_train_from_dev_on_a_task_with_train(data_dir):
    splits = load("rte", data_dir, train_from="dev")
    dev = set(source_dev("rte", data_dir))
    assert splits.train_source == "dev"
    assert set(splits.train) | set(splits.validation) | set(splits.test) <= dev
    assert len(splits.test) == round(277 * 0.5)


def test_train_from_train_without_a_train_split_is_data_error(data_dir):
    with pytest.raises(DataError, match="no train split"):
        load("qnli", data_dir, train_from="train")


@pytest.mark.parametrize("task", ["qnli", "qqp", "mnli", "mnli-mm"])
def test_advglue_leak_filter(data_dir, task):
    adv = advglue(task, data_dir)
    keys_a = {normalise(x.text_a) for x in adv}
    keys_b = {normalise(x.text_b) for x in adv}
    splits = load(task, data_dir)
    for x in splits.train + splits.validation:
        assert normalise(x.text_a) not in keys_a, x
        assert normalise(x.text_b) not in keys_b, x


def test_sst2_train_from_dev_excludes_advglue_originals(data_dir):
    # AdvGLUE's SST-2 items are word-level perturbations of GLUE dev sentences, so an exact (normalised)
    # match never finds their originals; with train_from: dev they must still not be trained on
    splits = load("sst2", data_dir, train_from="dev")
    adv = splits.adversarial["advglue"]
    leaked = []
    for x in adv:
        a = normalise(x.text_a)
        for y in splits.train + splits.validation:
            sm = difflib.SequenceMatcher(None, a, normalise(y.text_a), autojunk=False)
            if sm.real_quick_ratio() > 0.9 and sm.quick_ratio() > 0.9 and sm.ratio() > 0.9:
                leaked.append((x.text_a, y.text_a))
                break
    assert leaked == [], f"{len(leaked)} of {len(adv)} AdvGLUE items have their GLUE original in training"


def test_leak_filter_unit():
    spec = SPEC_BY_NAME["qnli"]
    dev = [Example(f"question {i} ?", f"sentence number {i} .", i % 2) for i in range(40)]
    adv = [Example("QUESTION 3?", "a perturbed sentence", 0), Example("something else", "Sentence number 7.", 1)]
    splits = make_splits(spec, None, dev, None, adv, DataConfig(dev_test_fraction=0.25, validation_size=2))
    kept = set(splits.train) | set(splits.validation)
    assert len(splits.test) == 10
    pool = set(dev) - set(splits.test)
    leaked = {dev[3], dev[7]} & pool
    assert not kept & leaked
    assert kept == pool - leaked
    assert len(splits.validation) == 2


def test_mnli_mm_trains_like_mnli_and_tests_on_mismatched(data_dir):
    mnli, mm = load("mnli", data_dir), load("mnli-mm", data_dir)
    spec = SPEC_BY_NAME["mnli-mm"]
    mismatched = read_local(data_dir, spec.local_test, spec)
    assert len(mismatched) == 9_832
    assert mm.test == mismatched
    assert len(mm.adversarial["advglue"]) == 162
    matched = set(source_dev("mnli", data_dir))
    assert set(mm.train) <= matched and not set(mm.train) & set(mnli.test)
    # the paper's MNLI-MM is the MNLI model tested on mismatched: same training data, same validation
    assert mm.train == mnli.train
    assert mm.validation == mnli.validation


def test_max_train_and_eval_limits(data_dir):
    full = load("sst2", data_dir)
    capped = load("sst2", data_dir, max_train_examples=50, max_eval_examples=20)
    assert len(capped.train) == 50 and capped.train == full.train[:50]
    assert len(capped.validation) == 20 and capped.validation == full.validation[:20]
    assert len(capped.test) == 20 and set(capped.test) <= set(full.test)
    assert len(capped.adversarial["advglue"]) == 20
    assert set(capped.adversarial["advglue"]) <= set(full.adversarial["advglue"])
    assert load("sst2", data_dir, max_train_examples=50, max_eval_examples=20).test == capped.test
    # limits larger than the data change nothing
    rte = load("rte", data_dir, max_train_examples=10**6, max_eval_examples=10**6)
    assert len(rte.train) == 2_490 - 249 and len(rte.test) == 277 and len(rte.adversarial["advglue"]) == 81


def test_validation_size_count_and_cap(data_dir):
    assert len(load("rte", data_dir, validation_size=30).validation) == 30
    assert len(load("rte", data_dir, validation_size=0.5, max_validation_examples=100).validation) == 100


# ---------------------------------------------------------------- label ids checked against AdvGLUE


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def _ratio(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, normalise(a), normalise(b), autojunk=False).ratio()


def matched_label_pairs(task: str, data_dir: Path) -> list[tuple[int, int]]:
    """(AdvGLUE label, GLUE dev label) for AdvGLUE items traced back to their GLUE dev row."""
    dev, adv = source_dev(task, data_dir), advglue(task, data_dir)
    pairs = []
    if SPEC_BY_NAME[task].fields[1] is None:
        # single sentence: the GLUE row whose sentence is > 0.9 similar (word index prefilter)
        index: dict[str, set[int]] = defaultdict(set)
        for i, y in enumerate(dev):
            for w in set(_words(y.text_a)):
                index[w].add(i)
        for x in adv:
            words = set(_words(x.text_a))
            votes = Counter(i for w in words for i in index.get(w, ()))
            candidates = [i for i, n in votes.items() if n >= 0.5 * len(words)]
            scored = [(_ratio(x.text_a, dev[i].text_a), i) for i in candidates]
            if scored and max(scored)[0] > 0.9:
                pairs.append((x.label, dev[max(scored)[1]].label))
        return pairs
    by_a, by_b = defaultdict(list), defaultdict(list)
    for y in dev:
        by_a[normalise(y.text_a)].append(y)
        by_b[normalise(y.text_b)].append(y)
    for x in adv:
        # one field identical after normalise, the other nearly identical (the perturbed one)
        scored = [(_ratio(x.text_b, y.text_b), y) for y in by_a.get(normalise(x.text_a), [])]
        scored += [(_ratio(x.text_a, y.text_a), y) for y in by_b.get(normalise(x.text_b), [])]
        if scored:
            best, row = max(scored, key=lambda s: s[0])
            if best > 0.9:
                pairs.append((x.label, row.label))
    return pairs


@pytest.mark.parametrize("task,min_pairs", [("sst2", 20), ("qnli", 20), ("rte", 15), ("mnli", 20),
                                            ("mnli-mm", 20), ("qqp", 10)])
def test_label_ids_agree_with_advglue(data_dir, task, min_pairs, capsys):
    pairs = matched_label_pairs(task, data_dir)
    agree = sum(a == b for a, b in pairs)
    with capsys.disabled():
        print(f"\n  {task}: {len(pairs)} AdvGLUE items traced to GLUE dev rows, labels agree on {agree}")
    assert len(pairs) >= min_pairs
    assert agree >= 0.9 * len(pairs)
    # every class occurs among the traced items, so a permuted mapping could not pass
    assert len({b for _, b in pairs}) == get_task(task).num_labels


# ---------------------------------------------------------------- malformed files (canonical layout)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


SST_DEV = "sentence\tlabel\na fine film \t1\na dull film \t0\n"


def sst2_dir(tmp_path: Path, train: str) -> Path:
    write(tmp_path / "glue/SST-2/train.tsv", train)
    write(tmp_path / "glue/SST-2/dev.tsv", SST_DEV)
    write(tmp_path / "advglue/dev.json", json.dumps({"sst2": [{"idx": 0, "sentence": "a film", "label": 1}]}))
    return tmp_path


def test_small_valid_layout_loads(tmp_path):
    rows = "".join(f"sentence {i}\t{i % 2}\n" for i in range(10))
    splits = load("sst2", sst2_dir(tmp_path, "sentence\tlabel\n" + rows), validation_size=2)
    assert len(splits.train) == 8 and len(splits.validation) == 2 and len(splits.test) == 2
    assert splits.adversarial["advglue"] == [Example("a film", None, 1)]


def test_tsv_wrong_column_count(tmp_path):
    d = sst2_dir(tmp_path, "sentence\tlabel\ngood\t1\nbad\t0\textra\n")
    with pytest.raises(DataError) as info:
        load("sst2", d)
    msg = str(info.value)
    assert str(d / "glue/SST-2/train.tsv") + ":3:" in msg
    assert "expected 2" in msg and "found 3" in msg


def test_tsv_bad_label(tmp_path):
    d = sst2_dir(tmp_path, "sentence\tlabel\ngood\t1\nbad\t0\nugly\tpositve\n")
    with pytest.raises(DataError) as info:
        load("sst2", d)
    msg = str(info.value)
    assert str(d / "glue/SST-2/train.tsv") + ":4:" in msg and "'positve'" in msg


def test_tsv_label_out_of_range(tmp_path):
    with pytest.raises(DataError, match=r"train\.tsv:2: label '2'"):
        load("sst2", sst2_dir(tmp_path, "sentence\tlabel\ngood\t2\n"))


def test_tsv_missing_column(tmp_path):
    d = sst2_dir(tmp_path, "sentence\tscore\ngood\t1\n")
    with pytest.raises(DataError) as info:
        load("sst2", d)
    assert str(d / "glue/SST-2/train.tsv") + ":1:" in str(info.value)
    assert "label" in str(info.value)


def test_tsv_empty_file(tmp_path):
    with pytest.raises(DataError, match="empty file"):
        read_tsv(write(tmp_path / "dev.tsv", ""), SPEC_BY_NAME["sst2"])


def test_tsv_label_names_and_ids(tmp_path):
    path = write(tmp_path / "glue/RTE/dev.tsv",
                 "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tnot_entailment\n1\tc\td\tentailment\n2\te\tf\t1\n")
    assert [x.label for x in read_tsv(path, SPEC_BY_NAME["rte"])] == [1, 0, 1]


def _mnli_parquet(path: Path, table: pa.Table) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def test_parquet_missing_column(tmp_path):
    path = _mnli_parquet(tmp_path / "glue/MNLI/validation_matched-00000-of-00001.parquet",
                         pa.table({"premise": ["p"], "label": [0]}))
    with pytest.raises(DataError) as info:
        load("mnli", tmp_path)
    assert str(path) in str(info.value) and "hypothesis" in str(info.value)


def test_parquet_bad_label_names_row(tmp_path):
    path = _mnli_parquet(tmp_path / "glue/MNLI/validation_matched-00000-of-00001.parquet",
                         pa.table({"premise": ["p0", "p1", "p2"], "hypothesis": ["h0", "h1", "h2"],
                                   "label": [0, 2, 3]}))
    with pytest.raises(DataError) as info:
        read_parquet(path, SPEC_BY_NAME["mnli"])
    assert str(path) in str(info.value) and "row 2" in str(info.value)
    path.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        read_parquet(path, SPEC_BY_NAME["mnli"])


def test_non_integer_labels_rejected(tmp_path):
    # a label of 1.5 is not a class id; it must not be truncated to class 1
    path = _mnli_parquet(tmp_path / "m.parquet", pa.table({"premise": ["p0", "p1"], "hypothesis": ["h0", "h1"],
                                                           "label": [0.0, 1.5]}))
    with pytest.raises(DataError, match="row 1"):
        read_parquet(path, SPEC_BY_NAME["mnli"])
    adv = write(tmp_path / "dev.json", json.dumps({"sst2": [{"idx": 0, "sentence": "a", "label": 0.5}]}))
    with pytest.raises(DataError, match="row 0"):
        read_advglue(adv, SPEC_BY_NAME["sst2"])


def test_parquet_null_text(tmp_path):
    path = _mnli_parquet(tmp_path / "m.parquet", pa.table({"premise": ["p0", None], "hypothesis": ["h0", "h1"],
                                                           "label": [0, 1]}))
    with pytest.raises(DataError, match="row 1 is malformed"):
        read_parquet(path, SPEC_BY_NAME["mnli"])


def test_advglue_invalid_json_names_line(tmp_path):
    path = write(tmp_path / "advglue/dev.json", '{"sst2": [\n  {"idx": 0,\n  "label": 1 "sentence": "x"}\n]}')
    with pytest.raises(DataError) as info:
        read_advglue(path, SPEC_BY_NAME["sst2"])
    assert f"{path}:3:" in str(info.value) and "not valid JSON" in str(info.value)


def test_advglue_missing_key_and_bad_item(tmp_path):
    path = write(tmp_path / "dev.json", json.dumps({"qqp": []}))
    with pytest.raises(DataError, match="no 'rte' key"):
        read_advglue(path, SPEC_BY_NAME["rte"])
    path.write_text(json.dumps({"rte": [{"idx": 0, "sentence1": "a", "sentence2": "b", "label": 0},
                                        {"idx": 1, "sentence1": "a", "label": 1}]}))
    with pytest.raises(DataError) as info:
        read_advglue(path, SPEC_BY_NAME["rte"])
    assert str(path) in str(info.value) and "row 1" in str(info.value)


def test_missing_files_and_dirs(tmp_path):
    with pytest.raises(DataError) as info:
        load("rte", tmp_path)
    assert str(tmp_path / "glue/RTE/train.tsv") in str(info.value) and "not found" in str(info.value)
    missing = tmp_path / "no_such_dir"
    with pytest.raises(DataError, match="data directory not found") as info:
        resolve_data_dir(missing)
    assert str(missing) in str(info.value) and "--data-dir" in str(info.value)
    assert issubclass(DataError, UserError)
    assert resolve_data_dir(tmp_path) == tmp_path


def test_data_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("PEFTEVAL_DATA_DIR", str(tmp_path))
    assert resolve_data_dir(None) == tmp_path
    monkeypatch.setenv("PEFTEVAL_DATA_DIR", str(tmp_path / "gone"))
    with pytest.raises(DataError, match="PEFTEVAL_DATA_DIR"):
        resolve_data_dir(None)
    monkeypatch.delenv("PEFTEVAL_DATA_DIR")
    assert resolve_data_dir(None) is None


def test_normalise():
    assert normalise("It 's a Film , isn't it ?") == normalise("it's a film, isn't it?") == "itsafilmisntit"
    assert normalise(None) == ""
