"""Local data files: a bad one (absent, a folder, unreadable, not UTF-8) is one DataError naming it
and the fix, a UTF-8 byte-order mark is accepted in every format, and ``track_data_reads`` records
exactly the files (and hub splits) a task's splits were read from, with the hash of their bytes."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest

from pefteval.config import DataConfig
from pefteval.errors import DataError
from pefteval.tasks import fewshot as fs
from pefteval.tasks import get_task
from pefteval.tasks.base import file_sha256, read_data_bytes, read_data_text, track_data_reads
from pefteval.tasks.gsm8k import GSM8K_FILES, read_gsm8k_jsonl
from pefteval.tasks.sql.data import SPIDER_TEST_FILE, SPIDER_TRAIN_FILES
from pefteval.tasks.squad.data import ADV_FILES, DEV_FILE, TRAIN_FILE, read_squad_json
from pefteval.tasks.viggo import read_viggo_csv

from .conftest import write_sst2_layout

BOM = b"\xef\xbb\xbf"
SMALL = DataConfig(max_train_examples=8, max_eval_examples=4, max_validation_examples=4)


def _sha(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def _expected(*paths: Path) -> dict[str, str]:
    return {str(p.resolve()): _sha(p) for p in paths}


def _add_bom(*paths: Path) -> None:
    for path in paths:
        path.write_bytes(BOM + path.read_bytes())


def _head(source: Path, target: Path, lines: int) -> Path:
    """The first ``lines`` lines of a real data file, copied into the test's folder."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with source.open("rb") as f:
        target.write_bytes(b"".join(f.readline() for _ in range(lines)))
    return target


# --- a byte-order mark is accepted ----------------------------------------------------------------

def test_sst2_with_a_bom_loads_the_same_examples(tmp_path: Path):
    plain = write_sst2_layout(tmp_path / "plain")
    marked = write_sst2_layout(tmp_path / "marked")
    _add_bom(marked / "glue/SST-2/train.tsv", marked / "glue/SST-2/dev.tsv", marked / "advglue/dev.json")
    task = get_task("sst2")
    a, b = task.splits(plain, DataConfig(), 0), task.splits(marked, DataConfig(), 0)
    assert (a.train, a.validation, a.test, a.adversarial) == (b.train, b.validation, b.test, b.adversarial)
    assert len(a.train) > 0 and not b.train[0].text_a.startswith("\ufeff")


def test_a_bom_is_accepted_in_csv_jsonl_json_and_trec_files(tmp_path: Path, data_dir: Path):
    viggo = _head(data_dir / "viggo/valid.csv", tmp_path / "valid.csv", 6)
    gsm8k = _head(data_dir / GSM8K_FILES["test"], tmp_path / "test.jsonl", 5)
    agnews = _head(data_dir / "ag_news/test.csv", tmp_path / "ag_news.csv", 5)
    trec = _head(data_dir / "trec/train_5500.label", tmp_path / "train_5500.label", 70)  # holds the 0xF0 byte
    squad = tmp_path / "squad.json"
    squad.write_text(json.dumps({"version": "1.1", "data": [{"title": "T", "paragraphs": [
        {"context": "Paris is in France.", "qas": [{"id": "q1", "question": "Where is Paris?",
                                                     "answers": [{"text": "France", "answer_start": 12}]}]}]}]}))
    spec_agnews, spec_trec = fs.get_spec("agnews"), fs.get_spec("trec")
    readers = [(viggo, lambda p: read_viggo_csv(p, "validation")), (gsm8k, lambda p: read_gsm8k_jsonl(p, "test")),
               (agnews, lambda p: fs.read_agnews_csv(p, spec_agnews)), (trec, lambda p: fs.read_trec(p, spec_trec)),
               (squad, read_squad_json)]
    for path, read in readers:
        plain = read(path)
        _add_bom(path)
        assert read(path) == plain, path
    assert "sister\xf0city" in fs.read_trec(trec, spec_trec)[65].text_a  # latin-1 still, after the BOM


# --- a bad file is one DataError ------------------------------------------------------------------

def test_a_latin1_byte_in_a_tsv_names_the_file_line_and_column(tmp_path: Path):
    root = write_sst2_layout(tmp_path)
    train = root / "glue/SST-2/train.tsv"
    train.write_bytes("sentence\tlabel\nfine film \t1\nna\u00efve caf".encode() + b"\xe9 \t0\n")
    with pytest.raises(DataError) as info:
        get_task("sst2").splits(root, DataConfig(), 0)
    message = str(info.value)
    # columns count characters: "na\u00efve caf" before the bad byte is 9 of them (10 bytes)
    assert f"{train} line 3: not UTF-8 (byte 0xe9 at column 10)" in message and "re-save the file as UTF-8" in message


@pytest.mark.parametrize("relpath", [GSM8K_FILES["train"], DEV_FILE])
def test_binary_garbage_in_a_json_or_jsonl_file_names_the_file(tmp_path: Path, data_dir: Path, relpath: str):
    for rel in [*GSM8K_FILES.values(), TRAIN_FILE, DEV_FILE, *ADV_FILES.values()]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).symlink_to(data_dir / rel)
    bad = tmp_path / relpath
    bad.unlink()
    bad.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    task = "gsm8k" if relpath in GSM8K_FILES.values() else "squad"
    with pytest.raises(DataError) as info:
        get_task(task).splits(tmp_path, DataConfig(adversarial_sets=["AddSent"]), 0)
    assert f"{bad} line 1: not UTF-8 (byte 0x89 at column 1)" in str(info.value)


def test_a_directory_in_place_of_a_data_file_says_so(tmp_path: Path):
    root = write_sst2_layout(tmp_path / "sst2")
    train = root / "glue/SST-2/train.tsv"
    train.unlink()
    train.mkdir()
    with pytest.raises(DataError, match=f"^{re.escape(str(train))} is a directory, not a file: "):
        get_task("sst2").splits(root, DataConfig(), 0)
    trec = tmp_path / "trec" / "trec/train_5500.label"
    trec.mkdir(parents=True)
    with pytest.raises(DataError, match="is a directory, not a file"):
        fs.load_fewshot("trec", tmp_path / "trec")


def test_missing_and_unreadable_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    missing = DataError("the file is not found")
    with pytest.raises(DataError, match="the file is not found"):
        read_data_text(tmp_path / "absent.json", missing)
    with pytest.raises(DataError, match="not found"):  # a parent that is a file
        read_data_bytes(write_sst2_layout(tmp_path) / "glue/SST-2/train.tsv/x")
    path = tmp_path / "locked.tsv"
    path.write_text("x\n")

    def denied(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)  # root reads any file, so chmod cannot show it
    with pytest.raises(DataError, match=r"locked\.tsv: cannot be read \(Permission denied\); check its permissions"):
        read_data_text(path)


# --- the data a trial read ------------------------------------------------------------------------

def test_tracker_records_the_glue_files_sst2_and_mnli_mm_read(data_dir: Path):
    with track_data_reads() as reads:
        get_task("sst2").splits(data_dir, SMALL, 0)
    assert reads == _expected(data_dir / "glue/SST-2/train.tsv", data_dir / "glue/SST-2/dev.tsv",
                              data_dir / "advglue/dev.json")
    with track_data_reads() as reads:  # Parquet, and the matched part MNLI-MM trains on
        get_task("mnli-mm").splits(data_dir, SMALL, 0)
    assert reads == _expected(data_dir / "glue/MNLI/validation_mismatched-00000-of-00001.parquet",
                              data_dir / "glue/MNLI/validation_matched-00000-of-00001.parquet",
                              data_dir / "advglue/dev.json")


def test_tracker_records_the_fewshot_files_trec_read(data_dir: Path):
    with track_data_reads() as reads:
        get_task("trec").splits(data_dir, DataConfig(k_shot=4, max_eval_examples=4), 1)
    # the hash of the bytes as stored (train holds a latin-1 byte), not of the decoded text
    assert reads == _expected(data_dir / "trec/train_5500.label", data_dir / "trec/TREC_10.label")


def test_tracker_records_the_gsm8k_files_read(data_dir: Path):
    with track_data_reads() as reads:
        get_task("gsm8k").splits(data_dir, SMALL, 0)
    assert reads == _expected(*(data_dir / rel for rel in GSM8K_FILES.values()))


def test_tracker_records_the_squad_files_but_not_the_attack_cache(data_dir: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PEFTEVAL_CACHE_DIR", str(tmp_path / "cache"))
    cfg = DataConfig(max_train_examples=8, max_eval_examples=4, adversarial_sets=["AddSent", "AddAnsCtx"],
                     max_adversarial_questions=3)
    expected = _expected(data_dir / TRAIN_FILE, data_dir / DEV_FILE, data_dir / ADV_FILES["AddSent"])
    with track_data_reads() as first:
        generated = get_task("squad").splits(data_dir, cfg, 0).adversarial["AddAnsCtx"]
    assert list((tmp_path / "cache").rglob("*.json"))  # AddAnsCtx was generated and cached
    with track_data_reads() as second:  # now read from the cache, which is not input data
        assert get_task("squad").splits(data_dir, cfg, 0).adversarial["AddAnsCtx"] == generated
    assert first == second == expected


def test_tracker_records_the_spider_files_and_databases_sql_read(data_dir: Path):
    root = data_dir / "spider"
    train = next(root / name for name in SPIDER_TRAIN_FILES if (root / name).is_file())
    db_ids = {r["db_id"] for rel in (train, root / SPIDER_TEST_FILE) for r in json.loads(rel.read_text())}
    databases = [p for p in (root / "database" / d / f"{d}.sqlite" for d in db_ids) if p.is_file()]
    assert len(databases) > 100
    with track_data_reads() as reads:
        get_task("sql").splits(data_dir, SMALL, 0)
    assert reads == _expected(root / "tables.json", train, root / SPIDER_TEST_FILE, *databases)


def test_tracker_records_hub_splits_by_their_fingerprint(monkeypatch: pytest.MonkeyPatch):
    import datasets

    class Split(list):
        def __init__(self, rows: list[dict], fingerprint: str):
            super().__init__(rows)
            self._fingerprint = fingerprint

    def load_dataset(path: str, config: str | None = None, split: str = "train") -> Split:
        rows = [{"sentence": f"{split} {i}", "label": i % 2, "question": f"q{i}", "answer": f"#### {i}"}
                for i in range(12)]
        return Split(rows, f"fp-{path}-{config}-{split}")

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    with track_data_reads() as reads:
        get_task("sst2").splits(None, DataConfig(), 0)
        get_task("gsm8k").splits(None, DataConfig(), 0)
    assert reads == {"hub:nyu-mll/glue/sst2:train": "fp-nyu-mll/glue-sst2-train",
                     "hub:nyu-mll/glue/sst2:validation": "fp-nyu-mll/glue-sst2-validation",
                     "hub:AI-secure/adv_glue/adv_sst2:validation": "fp-AI-secure/adv_glue-adv_sst2-validation",
                     "hub:openai/gsm8k/main:train": "fp-openai/gsm8k-main-train",
                     "hub:openai/gsm8k/main:test": "fp-openai/gsm8k-main-test"}


def test_a_changed_file_changes_its_hash_and_trackers_nest(tmp_path: Path):
    root = write_sst2_layout(tmp_path)
    train, dev = root / "glue/SST-2/train.tsv", root / "glue/SST-2/dev.tsv"
    task = get_task("sst2")
    with track_data_reads() as before:
        task.splits(root, DataConfig(), 0)
    train.write_text(train.read_text().replace("\t1\n", "\t0\n", 1))
    with track_data_reads() as outer:
        read_data_text(dev)
        with track_data_reads() as inner:
            task.splits(root, DataConfig(), 0)
        read_data_text(root / "advglue/dev.json")
    key = str(train.resolve())
    assert outer[key] == _sha(train) == file_sha256(train) != before[key]
    assert {k: v for k, v in outer.items() if k != key} == {k: v for k, v in before.items() if k != key}
    assert inner == outer  # the inner block read all three files; the outer one saw those reads too
    read_data_text(dev)  # no tracker active: nothing is recorded, nothing fails


def test_file_sha256_streams_large_files(tmp_path: Path):
    path = tmp_path / "big.bin"
    path.write_bytes(bytes(range(256)) * 9000)  # over two 1 MiB blocks
    assert file_sha256(path) == _sha(path)
    shutil.copy(path, tmp_path / "copy.bin")
    (tmp_path / "copy.bin").open("ab").write(b"\0")
    assert file_sha256(tmp_path / "copy.bin") != file_sha256(path)
