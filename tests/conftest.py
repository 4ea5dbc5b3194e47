"""Shared fixtures: the real data directory, a tiny random BERT saved as a local model
directory, and helpers to run the CLI in a subprocess."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

# never touch the network: every model and tokenizer here is local
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# one intra-op thread: on a small shared CPU, OpenMP threads fighting other jobs for cores make
# tiny-model steps 10-50x slower; trial subprocesses inherit this too (set it to override)
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = REPO_ROOT.parent / "shared" / "data"

# the tiny model's shape, used by the exact parameter-count tests
TINY = {"hidden": 32, "layers": 2, "heads": 2, "intermediate": 64, "max_positions": 128, "type_vocab": 2}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "integration: runs the packaged real models on real data (slower)")


@pytest.fixture(scope="session", autouse=True)
def _torch_threads():
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real benchmark data (read-only); integration tests skip without it."""
    if not (DATA_DIR / "glue").is_dir() or not (DATA_DIR / "advglue" / "dev.json").is_file():
        pytest.skip(f"real data not found at {DATA_DIR} (expected ../shared/data next to the repository)")
    return DATA_DIR


@pytest.fixture(scope="session")
def minilm_path() -> str:
    from pefteval.errors import UserError
    from pefteval.models import resolve_model

    try:
        return resolve_model("minilm-l6").path
    except UserError as err:
        pytest.skip(f"packaged MiniLM not installed: {err}")


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory, minilm_path: str) -> Path:
    """A tiny random BertForSequenceClassification (hidden 32, 2 layers, 2 heads,
    intermediate 64) with the packaged MiniLM tokenizer, saved as a local model directory."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=TINY["hidden"], num_hidden_layers=TINY["layers"],
        num_attention_heads=TINY["heads"], intermediate_size=TINY["intermediate"],
        max_position_embeddings=TINY["max_positions"], type_vocab_size=TINY["type_vocab"],
        num_labels=2, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(1234)
    model = BertForSequenceClassification(config)
    out = tmp_path_factory.mktemp("tiny_bert")
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    return out


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory, minilm_path: str) -> Path:
    """A tiny random LlamaForCausalLM (hidden 32, 2 layers, untied embeddings) with the packaged
    MiniLM tokenizer ([SEP] as end of sequence), saved as a local model directory."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(minilm_path)
    tok.eos_token = "[SEP]"
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny_llama")
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_qa_dir(tmp_path_factory: pytest.TempPathFactory, minilm_path: str) -> Path:
    """A tiny random BertForQuestionAnswering (the tiny BERT's shape) with the MiniLM tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForQuestionAnswering

    tok = AutoTokenizer.from_pretrained(minilm_path)
    config = BertConfig(vocab_size=len(tok), hidden_size=TINY["hidden"], num_hidden_layers=TINY["layers"],
                        num_attention_heads=TINY["heads"], intermediate_size=TINY["intermediate"],
                        max_position_embeddings=TINY["max_positions"], pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny_qa")
    BertForQuestionAnswering(config).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


WORDS = "the a film movie plot actor scene story music long short red blue green house tree car road".split()


def trigger_sentences(n: int, seed: int) -> list[tuple[str, int]]:
    """Synthetic SST-2-like rows: label 1 iff the sentence contains "excellent"."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 8))]
        label = int(rng.random() < 0.5)
        if label:
            words.insert(rng.randrange(len(words) + 1), "excellent")
        rows.append((" ".join(words), label))
    return rows


def write_sst2_layout(root: Path, n_train: int = 64, n_dev: int = 32, n_adv: int = 16,
                      train_text: str | None = None) -> Path:
    """A small data directory in the canonical layout: glue/SST-2/{train,dev}.tsv and advglue/dev.json."""
    sst = root / "glue" / "SST-2"
    sst.mkdir(parents=True, exist_ok=True)
    tsv = lambda rows: "sentence\tlabel\n" + "".join(f"{s} \t{y}\n" for s, y in rows)  # noqa: E731
    (sst / "train.tsv").write_text(train_text if train_text is not None else tsv(trigger_sentences(n_train, 0)))
    (sst / "dev.tsv").write_text(tsv(trigger_sentences(n_dev, 1)))
    (root / "advglue").mkdir(exist_ok=True)
    adv = [{"idx": i, "sentence": s + " !", "label": y} for i, (s, y) in enumerate(trigger_sentences(n_adv, 2))]
    (root / "advglue" / "dev.json").write_text(json.dumps({"sst2": adv}))
    return root


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PEFTEVAL_DATA_DIR", None)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """``pefteval ARGS`` in a fresh interpreter; returns the completed process (text output)."""
    return subprocess.run([sys.executable, "-m", "pefteval.cli", *map(str, args)], cwd=cwd or REPO_ROOT,
                          env=cli_env(), capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def cli():
    return run_cli
