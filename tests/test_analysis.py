"""Weight-space diagnostics: numerics against cases with known answers, increments of every
method against merged weights, the trainable-subspace projections, and the analyze/report
commands end to end on tiny models."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import yaml

from pefteval.analysis.sensitivity import effective_model, measure_sensitivity, top_hessian_eigenvalue
from pefteval.analysis.spectrum import critical_rank, effective_rank, energy, matrix_spectrum, numerical_rank
from pefteval.analysis.weights import (
    Subspace,
    canonical,
    default_module,
    increments,
    layer_slot,
    project,
    subspaces,
    tensor_stats,
)
from pefteval.kinds import probe_loss
from pefteval.probe import Probe, make_probe
from tests.conftest import run_cli, write_sst2_layout

# ------------------------------------------------------------------ spectrum (Theorem 3)


@pytest.mark.parametrize("rank", [1, 3, 8])
def test_update_of_known_rank_has_that_rank(rank):
    gen = torch.Generator().manual_seed(rank)
    u = torch.linalg.qr(torch.randn(40, rank, generator=gen))[0]
    v = torch.linalg.qr(torch.randn(30, rank, generator=gen))[0]
    equal = u @ v.T  # rank r, every nonzero singular value 1
    sv = torch.linalg.svdvals(equal).tolist()
    assert effective_rank(sv) == pytest.approx(rank, rel=1e-4)
    assert numerical_rank(sv, (40, 30)) == rank
    spec = matrix_spectrum(sv, (40, 30))
    assert all(e == pytest.approx(1.0, abs=1e-5) for r, e in spec["energy"].items() if r >= rank)
    assert spec["critical_rank"][0.01] == rank
    # decaying singular values: same numerical rank, smaller effective rank
    decaying = u @ torch.diag(torch.tensor([2.0 ** -i for i in range(rank)])) @ v.T
    sv2 = torch.linalg.svdvals(decaying).tolist()
    assert numerical_rank(sv2, (40, 30)) == rank
    assert effective_rank(sv2) < rank or rank == 1


def test_energy_and_critical_rank_by_hand():
    sv = [3.0, 2.0, 1.0, 0.0]  # energies 9, 4, 1 of 14
    assert energy(sv, 1) == pytest.approx(9 / 14)
    assert energy(sv, 2) == pytest.approx(13 / 14)
    assert critical_rank(sv, 0.10) == 2  # tail after 2: 1/14 = 7.1% < 10%
    assert critical_rank(sv, 0.05) == 3  # tail after 2 is 7.1% >= 5%; after 3 it is 0
    assert critical_rank(sv, 0.80) == 1  # tail at r = 0 is 100%, after 1 it is 5/14
    assert critical_rank([1.0] * 10, 0.05) == 10


# ------------------------------------------------------------------ sharpness (Theorem 4)


def test_quadratic_loss_gives_its_top_eigenvalue():
    gen = torch.Generator().manual_seed(0)
    q = torch.linalg.qr(torch.randn(12, 12, generator=gen, dtype=torch.float64))[0]
    eig = torch.tensor([7.5, 3.0, 2.0, 1.0, 0.5, 0.2, 0.1, -0.3, 0.05, 0.01, 0.0, -1.0], dtype=torch.float64)
    a = q @ torch.diag(eig) @ q.T
    theta = torch.randn(12, dtype=torch.float64, generator=gen, requires_grad=True)
    out = top_hessian_eigenvalue(lambda: 0.5 * theta @ a @ theta, [theta], iterations=200, tol=1e-10)
    assert out["lambda_max"] == pytest.approx(7.5, rel=1e-6)
    assert out["converged"]


# ------------------------------------------------------------------ increment statistics


def test_tensor_stats_known_shapes():
    gen = torch.Generator().manual_seed(0)
    gauss = tensor_stats(torch.randn(400, 300, generator=gen, dtype=torch.float64))
    assert gauss["std"] == pytest.approx(1.0, rel=0.01)
    assert abs(gauss["kurtosis"]) < 0.05
    laplace = torch.distributions.Laplace(0.0, 1.0).sample((200_000,))
    assert tensor_stats(laplace)["kurtosis"] == pytest.approx(3.0, rel=0.1)
    sparse = torch.zeros(1000)
    sparse[:10] = 1.0
    stats = tensor_stats(sparse)
    assert stats["small_share"] == pytest.approx(0.99)
    assert stats["fro"] == pytest.approx(math.sqrt(10)) and stats["spectral"] == pytest.approx(math.sqrt(10))
    rank1 = torch.outer(torch.arange(1.0, 5.0), torch.ones(3))
    s = tensor_stats(rank1)
    assert s["spectral"] == pytest.approx(float(torch.linalg.matrix_norm(rank1, ord=2)), rel=1e-5)
    assert s["singular_values"][1] == pytest.approx(0.0, abs=1e-5)


def test_layer_slots_and_names():
    assert layer_slot("bert.encoder.layer.5.attention.self.query.weight").module_type == "query"
    assert layer_slot("bert.encoder.layer.2.output.dense.weight").position == 3
    assert layer_slot("bert.encoder.layer.2.attention.output.dense.weight").module_type == "attn_out"
    assert layer_slot("model.layers.29.mlp.down_proj.weight").layer == 29
    assert layer_slot("model.layers.3.input_layernorm.weight").is_norm
    assert layer_slot("classifier.weight") is None
    assert canonical("base_model.model.bert.encoder.layer.0.attention.self.query.base_layer.weight") == \
        "bert.encoder.layer.0.attention.self.query.weight"
    assert canonical("base_model.model.classifier.modules_to_save.default.weight") == "classifier.weight"
    assert canonical("base_model.model.classifier.original_module.weight") is None
    names = [f"bert.encoder.layer.{i}.attention.self.query.weight" for i in range(4)] + ["classifier.weight"]
    assert default_module(names) == "bert.encoder.layer.3.attention.self.query"


# ------------------------------------------------------------------ methods on a tiny BERT


def _tiny(tiny_bert_dir):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=2)


def _apply(model, spec):
    from pydantic import TypeAdapter

    from pefteval.config import MethodConfig
    from pefteval.methods import apply_method

    method = TypeAdapter(MethodConfig).validate_python(spec)
    return apply_method(model, method, 10).model


def _train_randomly(model, scale=0.05):
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for _n, p in model.named_parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn(p.shape, generator=gen))


@pytest.mark.parametrize("spec", [{"type": "lora", "r": 4, "alpha": 8}, {"type": "ia3"},
                                  {"type": "adalora", "r": 4, "init_r": 6, "alpha": 8},
                                  {"type": "peft", "peft_type": "LOHA",
                                   "kwargs": {"r": 2, "target_modules": ["query", "value"]}}])
def test_increments_equal_merged_minus_pretrained(tiny_bert_dir, spec):
    base = _tiny(tiny_bert_dir)
    base_state = {n: p.detach().clone() for n, p in base.named_parameters()}
    model = _apply(copy.deepcopy(base), spec)
    _train_randomly(model)
    deltas = increments(model, base_state)
    merged = dict(effective_model(model).named_parameters())
    changed = 0
    for name, delta in deltas.items():
        if name.startswith("classifier"):
            continue
        assert torch.allclose(merged[name].detach() - base_state[name], delta, atol=1e-6), name
        changed += 1
    assert changed >= 4
    # every tensor the merge changed is accounted for
    for name, value in merged.items():
        if name not in deltas and name in base_state:
            assert torch.equal(value.detach(), base_state[name]), name


def test_fft_and_bitfit_increments_are_differences(tiny_bert_dir):
    base = _tiny(tiny_bert_dir)
    base_state = {n: p.detach().clone() for n, p in base.named_parameters()}
    model = _apply(copy.deepcopy(base), {"type": "bitfit"})
    _train_randomly(model)
    deltas = increments(model, base_state)
    assert deltas and all(n.endswith(".bias") or n.startswith("classifier") for n in deltas)
    name = "bert.encoder.layer.1.attention.self.query.bias"
    assert torch.allclose(deltas[name], dict(model.named_parameters())[name].detach() - base_state[name])


def test_tangent_projection_is_a_projection(tiny_bert_dir):
    model = _apply(_tiny(tiny_bert_dir), {"type": "lora", "r": 2, "alpha": 4})
    _train_randomly(model, 0.5)
    spaces = subspaces(model)
    name = "bert.encoder.layer.0.attention.self.query.weight"
    space = spaces[name]
    assert space.kind == "tangent"
    gen = torch.Generator().manual_seed(1)
    eps = {name: torch.randn(space.u.shape[0], space.v.shape[0], generator=gen)}
    once = project(eps, spaces)[name]
    twice = project({name: once}, spaces)[name]
    assert torch.allclose(once, twice, atol=1e-5)
    assert 0 < once.norm() < eps[name].norm()
    # a LoRA step dB·A + B·dA lies inside
    layer = model.base_model.model.bert.encoder.layer[0].attention.self.query
    a, b = layer.lora_A["default"].weight.detach(), layer.lora_B["default"].weight.detach()
    step = torch.randn(b.shape, generator=gen) @ a + b @ torch.randn(a.shape, generator=gen)
    assert torch.allclose(project({name: step}, spaces)[name], step, atol=1e-4)


def test_perturbation_inside_a_frozen_subspace_changes_nothing(tiny_bert_dir):
    """BitFit trains biases (and the head): a perturbation of the frozen weight matrices has no
    component inside its trainable subspace, so the 'inside' perturbation leaves the model and its
    loss exactly as they were."""
    model = _apply(_tiny(tiny_bert_dir), {"type": "bitfit"})
    model.eval()
    spaces = subspaces(model)
    params = dict(model.named_parameters())
    frozen = {n: torch.randn_like(p) for n, p in params.items() if not p.requires_grad}
    assert frozen and project(frozen, spaces) == {}
    probe = Probe({"input_ids": torch.tensor([[101, 2009, 2003, 2204, 102]]),
                   "attention_mask": torch.ones(1, 5, dtype=torch.long), "labels": torch.tensor([1])})
    with torch.no_grad():
        before = float(probe_loss(model, probe))
        inside = project(frozen, spaces)
        for n, e in inside.items():
            params[n].add_(e)
        after = float(probe_loss(model, probe))
    assert after == before
    # and the scale subspace of IA3 keeps a row rescaling, and drops what is orthogonal to it
    ref = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    space = {"w": Subspace("scale", axis=0, ref=ref)}
    assert torch.allclose(project({"w": 0.1 * ref}, space)["w"], 0.1 * ref)
    ortho = torch.tensor([[2.0, -1.0], [4.0, -3.0]])
    assert torch.allclose(project({"w": ortho}, space)["w"], torch.zeros(2, 2), atol=1e-6)


def test_sensitivity_of_a_tiny_model(tiny_bert_dir):
    model = _apply(_tiny(tiny_bert_dir), {"type": "lora", "r": 2, "alpha": 4})
    _train_randomly(model)
    probe = make_probe([{"input_ids": [101, 2009, 2003, 102], "attention_mask": [1, 1, 1, 1]},
                        {"input_ids": [101, 2204, 102], "attention_mask": [1, 1, 1]}], 0, [1, 0])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    out = measure_sensitivity(model, probe, [1e-3, 1e-2], draws=3, seed=0, power_iterations=5)
    assert set(out["delta_loss"]) == {"full", "inside", "orthogonal"}
    assert all(len(v) == 3 for part in out["delta_loss"].values() for v in part.values())
    assert 0 < out["subspace_dimension"] < out["total_dimension"]
    assert math.isfinite(out["sharpness"]["lambda_max"])
    # the trained model itself is left untouched
    assert all(torch.equal(p.detach(), before[n]) for n, p in model.named_parameters())
    # ΔL grows with ρ (first order: 10x; allow curvature)
    small = sum(abs(x) for x in out["delta_loss"]["full"]["0.001"])
    large = sum(abs(x) for x in out["delta_loss"]["full"]["0.01"])
    assert large > 3 * small > 0


def test_a_failed_analysis_capture_fails_the_trial(monkeypatch, tmp_path):
    # complete means everything the trial promises is on disk: a capture that fails is not swallowed
    import pefteval.trial as trial_module
    from pefteval.errors import OutputError
    from pefteval.trial import finish

    def broken(*_args, **_kwargs):
        raise OutputError(f"no space left on device while writing {tmp_path}/increments.safetensors")

    # trial.py imports finish_trial from pefteval.analysis.capture at module level
    monkeypatch.setattr(trial_module, "finish_trial", broken)
    record = {"status": "complete", "metrics": {"test": {"accuracy": 0.9}}, "notes": []}
    with pytest.raises(OutputError, match="no space left on device while writing .*increments.safetensors"):
        finish(record, {}, None, tmp_path, None, None, None, lambda _model, _dir: None)


# ------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def analysed(tmp_path_factory, tiny_bert_dir):
    tmp = tmp_path_factory.mktemp("analysis")
    data = write_sst2_layout(tmp / "data", n_train=48, n_dev=24, n_adv=8)
    cfg = {"name": "tiny-analysis", "model": str(tiny_bert_dir), "tasks": ["sst2"], "seeds": [0, 1],
           "training": {"epochs": 1, "batch_size": 8, "max_seq_length": 32, "lr": 1e-3, "precision": "fp32"},
           "analyses": {"run": ["increments", "spectrum", "bound"], "increment_modules": [r"layer\.0\..*value"],
                        "probe_examples": 8, "draws": 2, "power_iterations": 3},
           "methods": [{"type": "fft"}, {"type": "lora", "r": 4, "alpha": 8}, {"type": "prefix",
                                                                               "num_virtual_tokens": 4},
                       {"type": "ia3"}, {"type": "bitfit"}]}
    (tmp / "c.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp / "out"
    proc = run_cli("run", tmp / "c.yaml", "--out", out, "--data-dir", data)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc


def test_training_saves_what_the_analyses_read(analysed):
    from safetensors.torch import load_file

    out, proc = analysed
    runs = {p.name.split("__")[1] + p.name.split("__")[2]: p for p in (out / "runs").iterdir()}
    fft = runs["fftseed0"]
    meta = json.loads((fft / "increments.json").read_text())
    assert meta["default_module"] == "bert.encoder.layer.1.attention.self.query"
    # statistics for every changed tensor, full values only for the chosen modules
    assert len(meta["modules"]) > 20
    full = load_file(str(fft / "increments.safetensors"))
    assert set(full) == {f"bert.encoder.layer.1.attention.self.query.{k}" for k in ("weight", "bias")} | \
        {f"bert.encoder.layer.0.attention.self.value.{k}" for k in ("weight", "bias")}
    assert meta["modules"]["bert.encoder.layer.1.attention.self.query.weight"]["std"] == \
        pytest.approx(float(full["bert.encoder.layer.1.attention.self.query.weight"].std(unbiased=False)), rel=1e-4)
    assert (fft / "probe.safetensors").is_file() and (fft / "analysis" / "bound.json").is_file()
    assert not (fft / "analysis" / "sensitivity.json").exists()  # not listed: measured on demand
    prefix = load_file(str(runs["prefixseed0"] / "increments.safetensors"))
    assert list(prefix) == ["prompt_encoder.default.embedding.weight"]
    result = json.loads((fft / "result.json").read_text())
    assert result["analysis_seconds"] > 0
    # the run wrote the analyses it listed and the HTML page
    for name in ("increments", "spectrum", "bound"):
        assert (out / "analysis" / f"{name}.md").is_file(), proc.stderr
    assert (out / "report.html").is_file() and (out / "report.md").is_file()


def test_analyze_commands(analysed):
    out, _ = analysed
    proc = run_cli("analyze", "increments", out)
    assert proc.returncode == 0, proc.stderr
    table = proc.stdout
    for method in ("fft", "lora", "prefix", "ia3", "bitfit"):
        assert f"| {method} |" in table
    assert "| bitfit | bias Δ |" in table and "| prefix | prompt embeddings |" in table
    assert "| ia3 | not trained |" in table  # IA3 does not touch the query projection
    assert (out / "analysis" / "increments_sst2.png").stat().st_size > 5000
    # another module: saved in full for this experiment (increment_modules)
    proc = run_cli("analyze", "increments", out, "--module", r"layer\.0\.attention\.self\.value", "--format", "csv")
    assert proc.returncode == 0, proc.stderr
    assert "section,Method" in proc.stdout and "ia3" in proc.stdout
    # a module not saved in full is rebuilt from the saved trained tensors
    proc = run_cli("analyze", "increments", out, "--module", r"layer\.0\.output\.dense")
    assert proc.returncode == 0, proc.stderr
    assert "| ia3 | weight Δ |" in proc.stdout
    proc = run_cli("analyze", "spectrum", out)
    assert proc.returncode == 0, proc.stderr
    assert "| sst2 | fft | query | 1 |" in proc.stdout and "Verdict for rank 4" in proc.stdout
    proc = run_cli("analyze", "bound", out)
    assert proc.returncode == 0, proc.stderr
    assert "n/a: no weight increment" in proc.stdout and "residual connections" in proc.stdout
    proc = run_cli("analyze", "sensitivity", out)
    assert proc.returncode == 0, proc.stderr
    assert "ΔL_peft > ΔL_full held in" in proc.stdout and "| lora | 0.001 |" in proc.stdout
    data = json.loads(next((out / "runs").glob("sst2__lora__seed1__*")).joinpath("analysis", "sensitivity.json")
                      .read_text())
    assert data["draws"] == 2 and len(data["delta_loss"]["orthogonal"]["0.01"]) == 2


@pytest.mark.parametrize("args,needle", [
    (["analyze", "curvature", "{out}"], "unknown analysis 'curvature'"),
    (["analyze", "increments", "{missing}"], "does not exist"),
    (["analyze", "increments", "{out}", "--module", "("], "not a regular expression"),
    (["analyze", "spectrum", "{out}", "--module", "query"], "--module applies to `analyze increments` only"),
    (["analyze", "bound", "{out}", "--format", "html"], "choose markdown or csv"),
])
def test_analyze_errors(analysed, tmp_path, args, needle):
    out, _ = analysed
    proc = run_cli(*[a.format(out=out, missing=tmp_path / "nothing") for a in args])
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert needle in proc.stderr and "Traceback" not in proc.stderr


def test_html_report_is_self_contained(analysed):
    out, _ = analysed
    proc = run_cli("report", out, "--format", "html")
    assert proc.returncode == 0, proc.stderr
    page = (out / "report.html").read_text()
    assert page.count("<table") >= 5 and "data:image/png;base64," in page
    assert "http://" not in page and "https://" not in page and "<script" not in page
    for section in ("Comparison", "Learned increments", "FFT update spectrum", "Capacity bound", "Run metadata"):
        assert section in page


def test_html_report_in_a_real_browser(analysed, tmp_path):
    """Debian's chromium, headless: the page loads with no console error or failed request, every
    image decodes, the tables are there, and a full-page screenshot is a real picture."""
    import shutil

    sync_api = pytest.importorskip("playwright.sync_api")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed: `make browser` installs Debian's (CI runs `make browser test`)")
    out, _ = analysed
    assert run_cli("report", out, "--format", "html").returncode == 0
    problems: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
        page.goto((out / "report.html").as_uri())
        page.wait_for_load_state("load")
        decoded = page.evaluate("Promise.all(Array.from(document.images).map("
                                "i => i.decode().then(() => [i.naturalWidth, i.naturalHeight])))")
        tables = page.locator("table").count()
        headers = page.locator("h2").all_inner_texts()
        shot = tmp_path / "report.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert problems == []
    assert len(decoded) >= 2 and all(w > 100 and h > 100 for w, h in decoded)
    assert tables >= 5
    assert headers[0] == "Comparison" and headers[-1] == "Run metadata"
    from PIL import Image

    with Image.open(shot) as img:
        assert img.width == 1280 and img.height > 2000
        gray = img.convert("L")
        assert sum(1 for c in gray.histogram() if c) > 20  # text, tables and plots, not a blank page


def test_decoder_few_shot_trials_are_analysed(tmp_path, tiny_llama_dir):
    """A decoder (tiny LLaMA) with prompt-based few-shot training: every analysis runs as its trial
    finishes, including the label-word loss of the sensitivity probe."""
    data = write_sst2_layout(tmp_path / "data", n_train=40, n_dev=16)
    cfg = {"name": "dec", "model": str(tiny_llama_dir), "tasks": ["sst2"], "seeds": [0],
           "training": {"epochs": 1, "batch_size": 4, "lr": 1e-3, "max_seq_length": 96, "precision": "fp32"},
           "data": {"k_shot": 4},
           "analyses": {"run": ["increments", "spectrum", "bound", "sensitivity"], "probe_examples": 4, "draws": 2,
                        "power_iterations": 2, "rho": [1e-2]},
           "methods": [{"type": "fft"}, {"type": "lora", "r": 2, "alpha": 4, "target_modules": ["q_proj", "v_proj"]}]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    proc = run_cli("run", tmp_path / "c.yaml", "--out", out, "--data-dir", data)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    md = {name: (out / "analysis" / f"{name}.md").read_text() for name in ("increments", "spectrum", "bound",
                                                                          "sensitivity")}
    assert "model.layers.1.self_attn.q_proj" in md["increments"]
    assert "| sst2@k=4 | fft | ffn_gate | 0 |" in md["spectrum"]
    assert "Activation: silu" in md["bound"]
    assert "| lora | 0.01 |" in md["sensitivity"]
    run = next((out / "runs").glob("sst2-k4__lora__seed0__*"))
    assert Probe.load(run / "probe.safetensors").loss == "label_words"


def test_analysis_config():
    from pefteval.config import ConfigError, parse_config

    base = {"name": "x", "model": "minilm-l6", "tasks": ["sst2"], "methods": [{"type": "fft"}]}
    exp = parse_config({**base, "analyses": ["increments", "bound"]}, "t.yaml")
    assert exp.analyses.run == ["increments", "bound"] and exp.analyses.draws == 8 and exp.analyses.capture
    for bad, needle in [({"draws": 7}, "multiple of 2"), ({"run": ["hessian"]}, "analyses.run"),
                        ({"increment_modules": ["("]}, "not a regular expression"), ({"rho": [0.0]}, "rho"),
                        ({"drawz": 8}, "drawz")]:
        with pytest.raises(ConfigError) as err:
            parse_config({**base, "analyses": bad}, "t.yaml")
        assert needle in str(err.value), str(err.value)


def test_results_without_captured_files_get_a_clear_error(analysed, tmp_path):
    """A results directory from before the analyses (no increments.json, no probe): each analysis
    names the missing file and the fix, and nothing in the directory is removed."""
    import shutil

    out, _ = analysed
    old = tmp_path / "old"
    shutil.copytree(out, old)
    for run in (old / "runs").iterdir():
        (run / "increments.json").unlink()
        (run / "probe.safetensors").unlink()
        shutil.rmtree(run / "analysis")
    for name, needle in [("increments", "has no increments.json"), ("spectrum", "has no increments.json"),
                         ("bound", "lacks probe.safetensors"), ("sensitivity", "lacks probe.safetensors")]:
        proc = run_cli("analyze", name, old)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert needle in proc.stderr and "new --out directory" in proc.stderr and "Traceback" not in proc.stderr
    from pefteval.artifacts import saved_entry

    assert (old / "results.sqlite").is_file() and all(saved_entry(r) is not None for r in (old / "runs").iterdir())
