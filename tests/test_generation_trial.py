"""Generation tasks in a trial: answer-only training labels, the task metrics on generated
text, the Table-1-shaped report, and one tiny sweep through the CLI on a random LLaMA."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from pefteval.kinds.generative import chat_prompt, encode_prompt_target
from pefteval.tasks import get_task
from pefteval.tasks.generation import PROMPTING, GenExample
from pefteval.tasks.sql.normalize import clean_sql_output

from .conftest import run_cli


def test_labels_cover_only_the_target_and_long_prompts_are_left_out(tiny_llama_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_llama_dir))
    examples = [GenExample("a", "Convert: the game is great", "inform(rating[excellent])"),
                GenExample("b", "word " * 300, "x")]
    enc, skipped = encode_prompt_target(examples, tok, max_length=64, prompting=PROMPTING)
    assert skipped == 1 and len(enc) == 1
    feat = enc.features[0]
    prompt_len = len(tok(chat_prompt(tok, examples[0].prompt), add_special_tokens=False)["input_ids"])
    assert feat["labels"][:prompt_len] == [-100] * prompt_len
    target = feat["labels"][prompt_len:]
    assert target[-1] == tok.eos_token_id and target == feat["input_ids"][prompt_len:]
    assert tok.decode(target[:-1]).replace(" ", "") == "inform(rating[excellent])"


def score_generation(task, predictions, examples):
    """A split's metrics by the task's own scorer."""
    return get_task(task).score(predictions, examples, False).metrics


def test_score_generation_per_task(tmp_path):
    import sqlite3

    gsm = [GenExample("1", "p", "... #### 72", {"gold": "72"}), GenExample("2", "p", "#### 10", {"gold": "10"})]
    assert score_generation("gsm8k", ["so 72 clips\n#### 72", "I think 11"], gsm) == {
        "accuracy": 0.5, "lm_eval_strict_match": 0.5, "lm_eval_flexible_extract": 0.5, "gsm8k_extract_answer": 0.5,
        "n": 2}
    golds = ["inform(name[Dirt], genres[driving/racing, sport])", "request(release_year[2014])"]
    viggo = [GenExample(str(i), "p", g) for i, g in enumerate(golds)]
    m = score_generation("viggo", ["inform(genres[sport, driving/racing], name[Dirt])", "request(rating[good])"],
                         viggo)
    assert m["accuracy"] == 0.5 and 0 < m["slot_f1"] < 1
    db = tmp_path / "db.sqlite"
    conn = sqlite3.connect(db)
    conn.executescript("CREATE TABLE singer (name TEXT, age INTEGER);"
                       "INSERT INTO singer VALUES ('Ann', 30), ('Bo', 40);")
    conn.commit()
    conn.close()
    meta = {"db_path": str(db), "schema": "CREATE TABLE singer (name VARCHAR, age INTEGER)"}
    sql = [GenExample("s1", "p", "SELECT name FROM singer WHERE age > 35", meta),
           GenExample("s2", "p", "SELECT count(*) FROM singer", meta)]
    preds = ["```sql\nSELECT name FROM singer WHERE age >= 36;\n```", "DELETE FROM singer"]
    m = score_generation("sql", preds, sql)
    assert m["accuracy"] == 0.5 and m["exact_match"] == 0.0 and m["gold_errors"] == 0
    assert sqlite3.connect(db).execute("SELECT count(*) FROM singer").fetchone() == (2,)
    assert clean_sql_output("SELECT 1; DROP TABLE x") == "SELECT 1"


def write_generation_layout(root: Path) -> Path:
    (root / "viggo").mkdir(parents=True)
    games = ["Dirt", "Halo", "Tetris", "Doom", "Myst", "Portal"]
    rows = ["mr,ref"]
    for i in range(40):
        g, r = games[i % len(games)], "good" if i % 2 else "poor"
        rows.append(f'"inform(name[{g}], rating[{r}])","{g} is a {r} game."')
    text = "\n".join(rows) + "\n"
    for split in ("train", "valid", "test"):
        (root / "viggo" / f"{split}.csv").write_text(text)
    (root / "gsm8k").mkdir()
    lines = [json.dumps({"question": f"What is {i} plus {i}?", "answer": f"{i}+{i}=<<{i}+{i}={2 * i}>>{2 * i}\n"
                                                                      f"#### {2 * i}"}) for i in range(30)]
    (root / "gsm8k" / "train.jsonl").write_text("\n".join(lines) + "\n")
    (root / "gsm8k" / "test.jsonl").write_text("\n".join(lines[:10]) + "\n")
    return root


@pytest.mark.integration
def test_tiny_generation_sweep_end_to_end(tmp_path, tiny_llama_dir):
    data = write_generation_layout(tmp_path / "data")
    cfg = {"name": "tiny_gen", "model": str(tiny_llama_dir), "tasks": ["viggo", "gsm8k"], "seeds": [0],
           "training": {"epochs": 1, "batch_size": 8, "lr": 1e-3, "max_seq_length": 256, "max_new_tokens": 6,
                        "precision": "fp32"},
           "data": {"max_train_examples": 16, "validation_size": 4, "max_validation_examples": 4,
                    "max_eval_examples": 6},
           "methods": [{"type": "fft"}, {"type": "lora", "r": 4, "alpha": 8,
                                         "target_modules": ["q_proj", "v_proj", "embed_tokens", "lm_head"]}]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    proc = run_cli("run", tmp_path / "c.yaml", "--out", out, "--data-dir", data)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Generation tasks (Table 1 shape)" in proc.stdout
    header = next(line for line in proc.stdout.splitlines() if line.startswith("| Method | viggo"))
    assert header.startswith("| Method | viggo | gsm8k | Average |")
    assert "viggo slot F1" in proc.stdout
    runs = sorted((out / "runs").iterdir())
    assert len(runs) == 4
    for run in runs:
        result = json.loads((run / "result.json").read_text())
        assert result["metrics"]["test"]["n"] == 6 and 0.0 <= result["metrics"]["test"]["accuracy"] <= 1.0
        preds = json.loads((run / "predictions.json").read_text())
        assert len(preds["test"]) == 6 and all("target" in v for v in preds["test"])
    lora = json.loads(next(r for r in runs if "lora" in r.name and "viggo" in r.name).joinpath("result.json")
                      .read_text())
    assert lora["params"]["trainable"] < lora["params"]["total"] / 2


def test_encoder_on_a_generation_task_is_a_clear_error(tmp_path, tiny_bert_dir):
    data = write_generation_layout(tmp_path / "data")
    cfg = {"name": "bad", "model": str(tiny_bert_dir), "tasks": ["viggo"], "seeds": [0],
           "training": {"epochs": 1, "batch_size": 8, "lr": 1e-3, "max_seq_length": 64, "precision": "fp32"},
           "data": {"max_train_examples": 8, "validation_size": 4, "max_eval_examples": 4},
           "methods": [{"type": "fft"}]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    proc = run_cli("run", tmp_path / "c.yaml", "--out", tmp_path / "out", "--data-dir", data)
    assert proc.returncode == 1
    assert "needs a decoder language model" in proc.stdout + proc.stderr


def test_lora_on_a_decoder_defaults_to_the_papers_targets(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    from pefteval.config import LoraMethod
    from pefteval.methods import apply_method

    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir))
    applied = apply_method(model, LoraMethod(type="lora"), 10, head="lm", paper_lora_targets=True)
    import re

    wrapped = {m.group(1) for name, _ in applied.model.named_parameters()
               if (m := re.search(r"\.(\w+)\.lora_(?:embedding_)?A\.", name))}
    assert wrapped == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "embed_tokens",
                       "lm_head"}
    # r 8 on every target: the count is exact
    h, inter, vocab, layers = 32, 64, model.config.vocab_size, 2
    per_layer = 4 * 8 * (h + h) + 2 * 8 * (h + inter) + 8 * (inter + h)
    assert applied.trainable_params == layers * per_layer + 8 * (vocab + h) + 8 * (h + vocab)


@pytest.mark.integration
def test_smollm2_generation_and_few_shot_trials(tmp_path, data_dir):
    """The packaged SmolLM2-135M on real ViGGO (generation, LoRA with the paper's default targets on
    a model with tied embeddings) and real SST-2 (prompt-based 2-shot), a handful of examples each."""
    from pefteval.errors import UserError
    from pefteval.models import resolve_model

    try:
        resolve_model("smollm2-135m")
    except UserError as err:
        pytest.skip(f"packaged SmolLM2 not installed: {err}")
    cfg = {"name": "smol", "model": "smollm2-135m", "tasks": ["viggo", "sst2"], "seeds": [0],
           "training": {"epochs": 1, "batch_size": 2, "lr": 1e-3, "max_seq_length": 384, "max_new_tokens": 24,
                        "eval_batch_size": 4, "precision": "bf16"},
           "data": {"max_train_examples": 4, "validation_size": 2, "max_validation_examples": 2,
                    "max_eval_examples": 4},
           "task_data": {"sst2": {"k_shot": 2}},
           "methods": [{"type": "lora"}]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    proc = run_cli("run", tmp_path / "c.yaml", "--out", out, "--data-dir", data_dir, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "| Method | viggo | Average |" in proc.stdout and "| lora | 2 |" in proc.stdout
    viggo = json.loads(next((out / "runs").glob("viggo__lora*")).joinpath("predictions.json").read_text())
    assert len(viggo["test"]) == 4 and all(v["prediction"] for v in viggo["test"])
    fewshot = json.loads(next((out / "runs").glob("sst2-k2__lora*")).joinpath("result.json").read_text())
    assert fewshot["train_examples"] == 4 and fewshot["metrics"]["test"]["n"] == 4


@pytest.mark.parametrize("method", [
    {"type": "fft", "top_k_layers": 1}, {"type": "adalora", "r": 2, "init_r": 4}, {"type": "prefix",
                                                                                   "num_virtual_tokens": 4},
    {"type": "ia3"},
])
def test_every_method_trains_and_generates_on_a_decoder(tiny_llama_dir, method):
    from pydantic import TypeAdapter
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pefteval.config import MethodConfig, TrainingConfig
    from pefteval.kinds.generative import generate_answers
    from pefteval.methods import apply_method
    from pefteval.train import train_model

    tok = AutoTokenizer.from_pretrained(str(tiny_llama_dir))
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir))
    examples = [GenExample(str(i), f"Say {w}", w) for i, w in enumerate(["red", "blue", "green", "red"] * 2)]
    train, _ = encode_prompt_target(examples, tok, 64, PROMPTING)
    cfg = TypeAdapter(MethodConfig).validate_python(method)
    applied = apply_method(model, cfg, 4, head="lm", paper_lora_targets=True)
    assert 0 < applied.trainable_params < applied.total_params
    before = {n: p.detach().clone() for n, p in applied.model.named_parameters() if p.requires_grad}
    hp = TrainingConfig(epochs=2, batch_size=4, lr=1e-2, warmup_ratio=0.0, weight_decay=0.0, max_grad_norm=1.0,
                        precision="fp32", group_by_length=False, eval_batch_size=4)
    result = train_model(applied.model, train, lambda _m: 0.0, hp, 0, tok.pad_token_id, on_step=applied.on_step)
    assert result.examples_seen == 16
    assert any(not torch.equal(before[n], p) for n, p in applied.model.named_parameters() if n in before)
    out = generate_answers(applied.model, tok, [chat_prompt(tok, x.prompt) for x in examples[:3]], 3, 4, "fp32")
    assert len(out) == 3


def test_bitfit_on_a_bias_free_decoder_is_a_clear_error(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    from pefteval.config import BitFitMethod
    from pefteval.errors import UserError
    from pefteval.methods import apply_method

    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir))
    with pytest.raises(UserError, match="no bias terms"):
        apply_method(model, BitFitMethod(type="bitfit"), 4, head="lm", paper_lora_targets=True)
