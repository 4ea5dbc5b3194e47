"""Intruder dimensions, forgetting and representation similarity: known answers on constructed
matrices and models, and a real (tiny) sweep that saves what they read and renders their tables."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from pefteval.analysis.intruders import count, max_cosines
from pefteval.analysis.representations import hidden_grams, linear_cka, text_losses
from pefteval.probe import Probe

from .conftest import run_cli, write_sst2_layout


def _orthogonal(n: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


def test_a_new_direction_is_an_intruder_and_an_old_one_is_not():
    n = 32
    u0, v0 = _orthogonal(n, 0), _orthogonal(n, 1)
    s0 = torch.linspace(1.0, 0.1, n, dtype=torch.float64)
    w0 = u0 @ torch.diag(s0) @ v0.T
    # a direction spread evenly over every pretrained left singular vector: |cos| = 1/sqrt(32) with each
    spread_u = u0.sum(1) / math.sqrt(n)
    spread_v = v0.sum(1) / math.sqrt(n)
    intruded = w0 + 5.0 * torch.outer(spread_u, spread_v)
    left, right, sv = max_cosines(intruded, w0, 10)
    assert left[0] == pytest.approx(1 / math.sqrt(n), abs=0.05) and right[0] < 0.5
    assert sv[0] == pytest.approx(5.0, rel=0.2)
    assert count(left, 10, 0.5) >= 1
    # strengthening a pretrained direction rotates nothing: no intruder among the top 10
    aligned = w0 + 5.0 * torch.outer(u0[:, 3], v0[:, 3])
    left, _right, _sv = max_cosines(aligned, w0, 10)
    assert left[0] == pytest.approx(1.0, abs=1e-6)
    assert count(left, 10, 0.5) == 0
    assert count([0.2, 0.7, 0.4], 2, 0.5) == 1  # only the top k are counted


def test_linear_cka_known_values():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 16, generator=gen)

    def gram(m: torch.Tensor) -> torch.Tensor:
        m = m - m.mean(0, keepdim=True)
        return m @ m.T

    rotation = _orthogonal(16, 2).float()
    assert linear_cka(gram(x), gram(x)) == pytest.approx(1.0)
    assert linear_cka(gram(x), gram(3.0 * x @ rotation)) == pytest.approx(1.0, abs=1e-5)  # rotation and scale
    unrelated = linear_cka(gram(x), gram(torch.randn(200, 16, generator=gen)))
    assert unrelated < 0.2  # of order d/n for independent features
    half = torch.cat([x[:, :8], torch.randn(200, 8, generator=gen)], 1)
    assert unrelated < linear_cka(gram(x), gram(half)) < 1.0


def test_text_losses_and_grams_of_a_tiny_decoder(tiny_llama_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    enc = tok(["the cat sat on the mat", "a longer sentence about the river and its banks"], padding="max_length",
              max_length=16, truncation=True, return_tensors="pt")
    probe = Probe({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}, loss="text")
    losses, counts = text_losses(model, probe)
    # against the model's own loss on the first paragraph alone (no padding)
    ids = tok("the cat sat on the mat", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ref = float(model(input_ids=ids, labels=ids).loss)
    assert losses[0] == pytest.approx(ref, rel=1e-4) and counts[0] == ids.shape[1] - 1
    grams = hidden_grams(model, probe)
    assert len(grams) == 3 and grams[0].shape == (2, 2)  # embeddings + 2 layers; paragraphs × paragraphs
    assert linear_cka(grams[1], grams[1]) == pytest.approx(1.0)


def _squad_subset(data_dir, target):
    """A few real Wikipedia articles of SQuAD v1.1 dev, in its own format, for the general text."""
    raw = json.loads((data_dir / "squad" / "dev-v1.1.json").read_text())
    (target / "squad").mkdir(parents=True, exist_ok=True)
    (target / "squad" / "dev-v1.1.json").write_text(json.dumps({"version": "1.1", "data": raw["data"][:3]}))


@pytest.fixture(scope="module")
def analysed_decoder(tmp_path_factory, tiny_llama_dir, data_dir):
    tmp = tmp_path_factory.mktemp("published")
    data = write_sst2_layout(tmp / "data", n_train=48, n_dev=24, n_adv=8)
    _squad_subset(data_dir, data)
    cfg = {"name": "published", "model": str(tiny_llama_dir), "tasks": ["sst2"], "seeds": [0, 1],
           "training": {"epochs": 1, "batch_size": 4, "max_seq_length": 64, "lr": 1e-3, "precision": "fp32"},
           "data": {"k_shot": 4, "max_eval_examples": 16},
           "analyses": {"run": ["intruders", "forgetting", "similarity"], "general_texts": 8, "general_tokens": 32,
                        "probe_examples": 4},
           "methods": [{"type": "fft"}, {"type": "lora", "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}]}
    (tmp / "c.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp / "out"
    proc = run_cli("run", tmp / "c.yaml", "--out", out, "--data-dir", data)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc


def test_training_saves_the_published_analyses_inputs(analysed_decoder):
    out, proc = analysed_decoder
    for name in ("intruders", "forgetting", "similarity"):
        assert f"analysis {name}: " in proc.stdout + proc.stderr, proc.stderr[-2000:]
    runs = {p.name.split("__")[1] + p.name.split("__")[2]: p for p in (out / "runs").iterdir()}
    lora, fft = runs["loraseed0"], runs["fftseed0"]
    probe = Probe.load(fft / "general_probe.safetensors")
    assert probe.tensors["input_ids"].shape == (8, 32)
    intruders = json.loads((lora / "analysis" / "intruders.json").read_text())
    # LoRA on q_proj and v_proj of 2 layers changed 4 block matrices; the others are listed unchanged
    assert {m["type"] for m in intruders["matrices"].values()} == {"query", "value"}
    assert len(intruders["matrices"]) == 4 and len(intruders["unchanged"]) > 0
    assert all(len(m["max_cos_left"]) == min(32, min(m["shape"])) for m in intruders["matrices"].values())
    forgetting = json.loads((lora / "analysis" / "forgetting.json").read_text())
    assert forgetting["applies"] and len(forgetting["base_loss"]) == 8
    # FFT's base and LoRA's base are the same pretrained model on the same tokens
    fft_forgetting = json.loads((fft / "analysis" / "forgetting.json").read_text())
    assert forgetting["base_loss"] == pytest.approx(fft_forgetting["base_loss"], rel=1e-5)
    similarity = json.loads((lora / "analysis" / "similarity.json").read_text())
    assert similarity["layers"] == 3 and all(0 < c <= 1 + 1e-6 for c in similarity["cka_base"])
    sizes = sum(p.stat().st_size for p in (lora / "analysis").iterdir()) + (lora / "general_probe.safetensors").stat(
    ).st_size
    assert sizes < 200_000


def test_the_published_analyses_render_tables_and_figures(analysed_decoder):
    out, _proc = analysed_decoder
    text = (out / "analysis" / "intruders.md").read_text()
    assert "Intruder dimensions" in text and "| fft |" in text and "| lora |" in text
    for figure in ("intruders.png", "forgetting.png", "similarity.png"):
        assert (out / "analysis" / figure).read_bytes()[:4] == b"\x89PNG"
    forgetting = (out / "analysis" / "forgetting.md").read_text()
    assert "Change vs FFT (95% CI)" in forgetting and "8 Wikipedia paragraphs" in forgetting
    similarity = (out / "analysis" / "similarity.md").read_text()
    assert "FFT vs lora" in similarity and "base vs fft" in similarity
    # k and ε come from the experiment's options: a k above what training kept is an error naming the fix
    exp = yaml.safe_load((out / "experiment.yaml").read_text())
    exp["analyses"]["intruder_k"] = 64
    (out / "experiment.yaml").write_text(yaml.safe_dump(exp))
    proc = run_cli("analyze", "intruders", out)
    assert proc.returncode == 2 and "intruder_saved" in proc.stderr
    assert "Intruder dimensions" in (out / "report.html").read_text()


def test_an_encoder_has_no_forgetting_but_a_similarity(tmp_path, tiny_bert_dir, data_dir):
    data = write_sst2_layout(tmp_path / "data", n_train=32, n_dev=16, n_adv=8)
    _squad_subset(data_dir, data)
    cfg = {"name": "enc", "model": str(tiny_bert_dir), "tasks": ["sst2"], "seeds": [0],
           "training": {"epochs": 1, "batch_size": 8, "max_seq_length": 32, "lr": 1e-3, "precision": "fp32"},
           "analyses": {"run": [], "general_texts": 6, "general_tokens": 24},
           "methods": [{"type": "fft"}, {"type": "lora", "r": 2, "alpha": 4}]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    proc = run_cli("run", tmp_path / "c.yaml", "--out", out, "--data-dir", data)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # measured afterwards from the saved weights, the general text read from the data directory
    from pefteval.analysis import run_analysis

    forgetting = run_analysis("forgetting", out, data_dir=data).markdown()
    assert "does not apply" in forgetting and "similarity" in forgetting
    similarity = run_analysis("similarity", out, data_dir=data).markdown()
    assert "base vs lora" in similarity and "FFT vs lora" in similarity
    probe = Probe.load(next((out / "runs").glob("*lora*")) / "general_probe.safetensors")
    assert probe.tensors["input_ids"].shape == (6, 24)
