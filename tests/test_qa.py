"""Question answering: SQuAD metrics and worst-case scoring, the extractive window
preprocessing (spans map back to the exact answer text), generative training labels and
batched generation on a tiny random LLaMA, the SQuAD loader, the QA and parameter-scaling
reports, top-k clipping, and one tiny end-to-end QA sweep through the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pefteval.config import DataConfig, parse_config
from pefteval.errors import DataError
from pefteval.kinds.extractive_qa import best_span, predict_extractive, prepare_eval_windows, prepare_train_windows
from pefteval.kinds.generative import encode_prompt_target, generate_answers
from pefteval.plan import drop_clipped_duplicates
from pefteval.tasks import QAExample
from pefteval.tasks.squad import PROMPTING, clean_generated, make_splits
from pefteval.tasks.squad.data import read_squad_json, source_id
from pefteval.tasks.squad.metrics import normalize_answer, squad_metrics, squad_scores

from .conftest import run_cli

# ---------------------------------------------------------------- metrics


def test_normalize_answer_follows_the_official_script():
    assert normalize_answer("The  Cat's, hat!") == "cats hat"
    assert normalize_answer("an Apple a day") == "apple day"
    assert normalize_answer("") == ""


def test_squad_scores_take_the_best_ground_truth():
    em, f1 = squad_scores("the Denver Broncos", ["Broncos", "Denver Broncos"])
    assert (em, f1) == (1.0, 1.0)
    em, f1 = squad_scores("Denver", ["Denver Broncos"])
    # precision 1, recall 1/2 -> F1 2/3
    assert em == 0.0 and f1 == pytest.approx(2 / 3)
    assert squad_scores("", ["Denver"]) == (0.0, 0.0)
    # repeated tokens count with multiplicity (Counter intersection)
    assert squad_scores("x y y", ["y y z"])[1] == pytest.approx(2 / 3)
    assert squad_scores("a b b", ["b b c"])[1] == pytest.approx(0.8)  # "a" is an article, dropped


def test_worst_case_per_source_question():
    ids = ["q1", "q1-high-conf-turk0", "q1-high-conf-turk1", "q2", "q2-AddAny-0"]
    groups = [source_id(i) for i in ids]
    assert groups == ["q1", "q1", "q1", "q2", "q2"]
    preds = ["Denver Broncos", "Denver Broncos", "Chicago", "Paris", "Paris"]
    truths = [["Denver Broncos"]] * 3 + [["Paris"]] * 2
    m = squad_metrics(preds, truths, groups)
    assert m["n"] == 5 and m["groups"] == 2
    assert m["exact_match"] == pytest.approx(4 / 5)
    # q1's worst case is the fooled variant (0), q2 survives (1)
    assert m["worst_exact_match"] == pytest.approx(0.5) and m["worst_f1"] == pytest.approx(0.5)
    assert squad_metrics([], [])["n"] == 0 and math.isnan(squad_metrics([], [])["f1"])
    with pytest.raises(ValueError, match="group ids"):
        squad_metrics(["a"], [["a"]], ["g1", "g2"])


def test_evaluator_caches_originals_and_squad_scores_report_their_clean_score():
    from pefteval.evaluation import Evaluator
    from pefteval.tasks import get_task
    from pefteval.tasks.squad import score_squad

    class Kind:
        """Stands in for the trial's kind: what the evaluator asks to predict."""

        calls: list[str] = []

        def predict(self, model, examples):
            self.calls += [x.id for x in examples]
            return ["wrong" if "turk" in x.id else x.answers[0] for x in examples]

    def ex(i, ctx="c"):
        return QAExample(id=i, question="q?", context=ctx, answers=("right",), answer_starts=(0,))

    adv = [ex("a"), ex("a-high-conf-turk0", "c x"), ex("b"), ex("b-high-conf-turk0", "c y")]
    kind = Kind()
    evaluator = Evaluator(get_task("squad"), kind, model=None)
    evaluator.evaluate("AddSent", adv, adversarial=True)
    evaluator.evaluate("test", [ex("a"), ex("b")], adversarial=False)
    m1, m2 = evaluator.metrics["AddSent"], evaluator.metrics["test"]
    assert kind.calls == ["a", "a-high-conf-turk0", "b", "b-high-conf-turk0"]  # originals predicted once
    assert m1["worst_exact_match"] == 0.0 and m1["source_exact_match"] == 1.0 and m1["source_f1"] == 1.0
    assert m2 == {"exact_match": 1.0, "f1": 1.0, "n": 2}
    # the scorer alone gives the same metrics, and each question's own F1
    scored = score_squad(["right", "wrong", "right", "wrong"], adv, adversarial=True)
    assert scored.metrics == m1 and scored.per_example == [1.0, 0.0, 1.0, 0.0]


# ---------------------------------------------------------------- extractive preprocessing


@pytest.fixture(scope="module")
def bert_tokenizer(minilm_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path)


FILLER = " ".join(f"Sentence number {i} talks about nothing in particular." for i in range(30))


def qa(qid, question, context, answer, start=None):
    start = context.index(answer) if start is None else start
    assert context[start:start + len(answer)] == answer
    return QAExample(id=qid, question=question, context=context, answers=(answer,), answer_starts=(start,))


def hand_made():
    short = qa("s", "Who won Super Bowl 50?", "The Denver Broncos defeated the Carolina Panthers 24–10.",
               "Denver Broncos")
    long = qa("l", "Where is the treasure?", FILLER + " The treasure is buried under the old oak tree. " + FILLER,
              "under the old oak tree")
    late = qa("t", "What colour is the door?", FILLER + " In the end the door is painted crimson-red.",
              "crimson-red")
    return [short, long, late]


def test_train_windows_map_back_to_the_exact_answer_text(bert_tokenizer):
    examples = hand_made()
    enc = prepare_train_windows(examples, bert_tokenizer, max_length=64, doc_stride=16)
    # recompute the windows' character offsets to check the labelled spans
    windows = prepare_eval_windows(examples, bert_tokenizer, max_length=64, doc_stride=16)
    assert len(enc) == len(windows) > len(examples)  # long contexts were split
    per_example = {i: 0 for i in range(len(examples))}
    without = 0
    for feat, j, offsets in zip(enc.features, windows.example_index, windows.offsets):
        assert len(feat["input_ids"]) <= 64
        s, e = feat["start_positions"], feat["end_positions"]
        if s == 0 and e == 0:
            without += 1  # [CLS]: this window does not hold the whole answer
            continue
        x = examples[j]
        assert x.context[offsets[s][0]:offsets[e][1]] == x.answers[0]
        per_example[j] += 1
    assert all(n >= 1 for n in per_example.values())  # every answer is labelled in some window
    assert without > 0


def test_best_span_respects_context_order_and_length_cap():
    offsets = [None, (0, 3), (4, 8), (9, 12), None]
    # [CLS]/[SEP] logits (None offsets) are never chosen; (3, 1) and (3, 2) would score highest but end
    # before they start
    start = np.array([20.0, 3.0, 1.0, 8.0, 20.0])
    end = np.array([20.0, 6.0, 4.0, -9.0, 20.0])
    assert best_span(start, end, offsets) == (pytest.approx(9.0), 0, 3)
    # (1, 2) is best (7) until a one-token cap leaves (2, 2) (5)
    start, end = np.array([0.0, 3.0, 1.0, 0.0, 0.0]), np.array([0.0, 0.0, 4.0, 0.0, 0.0])
    assert best_span(start, end, offsets) == (pytest.approx(7.0), 0, 8)
    assert best_span(start, end, offsets, max_answer_length=1) == (pytest.approx(5.0), 4, 8)
    assert best_span(np.zeros(2), np.zeros(2), [None, None]) is None


class SpanOracle(torch.nn.Module):
    """Scores each token by whether it starts/ends a target word sequence, wherever it appears."""

    def __init__(self, first_id: int, last_id: int):
        super().__init__()
        self.first_id, self.last_id = first_id, last_id

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        from types import SimpleNamespace

        start = (input_ids == self.first_id).float() * 10
        end = (input_ids == self.last_id).float() * 10
        return SimpleNamespace(start_logits=start, end_logits=end)


def test_predict_extractive_finds_the_answer_across_strided_windows(bert_tokenizer):
    x = qa("l", "Where is the treasure?", FILLER + " The treasure is buried beneath marigolds. " + FILLER,
           "beneath marigolds")
    ids = bert_tokenizer(" beneath marigolds", add_special_tokens=False)["input_ids"]
    model = SpanOracle(ids[0], ids[-1])
    pred = predict_extractive(model, [x, x], bert_tokenizer, max_length=48, doc_stride=12, batch_size=4,
                              precision="fp32")
    assert pred == ["beneath marigolds", "beneath marigolds"]
    # a one-token cap: the prediction shrinks to a single token of the context
    (short,) = predict_extractive(model, [x], bert_tokenizer, 48, 12, precision="fp32", max_answer_length=1)
    assert short and short in x.context and len(bert_tokenizer(short, add_special_tokens=False)["input_ids"]) == 1


# ---------------------------------------------------------------- generative


@pytest.fixture(scope="module")
def tiny_llama(bert_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = bert_tokenizer.__class__.from_pretrained(bert_tokenizer.name_or_path)
    tok.eos_token = "[SEP]"
    tok.padding_side = "left"
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval(), tok


def test_generative_labels_cover_only_the_answer(tiny_llama):
    _, tok = tiny_llama
    examples = hand_made()
    enc, left_out = encode_prompt_target(examples, tok, max_length=96, prompting=PROMPTING)
    assert left_out == 0 and len(enc) == len(examples)  # long prompts are shortened, never left out
    for feat, x in zip(enc.features, examples):
        ids, labels = feat["input_ids"], feat["labels"]
        assert len(ids) == len(labels) <= 96
        kept = [t for t in labels if t != -100]
        assert kept[-1] == tok.eos_token_id
        assert tok.decode(kept[:-1]).strip() == tok.decode(tok(x.answers[0], add_special_tokens=False)["input_ids"])
        first = labels.index(kept[0])
        assert all(t == -100 for t in labels[:first]) and ids[first:] == kept
        # the long contexts were cut around the answer, which survives in the prompt
        squash = lambda t: normalize_answer(t).replace(" ", "")  # noqa: E731
        assert squash(x.answers[0]) in squash(tok.decode(ids[:first]))


def test_batched_left_padded_generation_matches_one_at_a_time_and_is_capped(tiny_llama):
    model, tok = tiny_llama
    prompts = ["Context: a b c\nQuestion: d?\nAnswer:", "Context: " + "word " * 40 + "\nQuestion: e?\nAnswer:",
               "Q: f?\nAnswer:"]
    new_tokens = []
    generate = model.generate

    def spy(*args, **kwargs):
        out = generate(*args, **kwargs)
        new_tokens.append(out.shape[1] - kwargs["input_ids"].shape[1])
        return out

    model.generate = spy
    try:
        batched = generate_answers(model, tok, prompts, batch_size=3, max_new_tokens=5, precision="fp32")
        single = [generate_answers(model, tok, [p], batch_size=1, max_new_tokens=5, precision="fp32")[0]
                  for p in prompts]
    finally:
        del model.generate
    assert batched == single
    assert len(new_tokens) == 4 and max(new_tokens) <= 5  # one batched call, three single ones, all capped


def test_clean_generated_keeps_the_first_line():
    assert clean_generated("  Answer: Denver Broncos\nQuestion: next") == "Denver Broncos"
    assert clean_generated("\n") == ""


# ---------------------------------------------------------------- loader


def squad_json(articles):
    return {"version": "1.1", "data": articles}


def article(title, context, qas):
    return {"title": title, "paragraphs": [{"context": context, "qas": qas}]}


def test_read_squad_json_and_its_errors(tmp_path):
    ctx = "Paris is the capital of France."
    good = squad_json([article("France", ctx, [
        {"id": "q1", "question": "Capital?", "answers": [{"text": "Paris", "answer_start": 0}]}])])
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(good))
    (x,) = read_squad_json(path)
    assert (x.id, x.answers, x.answer_starts, x.title) == ("q1", ("Paris",), (0,), "France")
    bad = json.loads(json.dumps(good))
    del bad["data"][0]["paragraphs"][0]["qas"][0]["answers"]
    path.write_text(json.dumps(bad))
    with pytest.raises(DataError, match=r"data\[0\]\.paragraphs\[0\]\.qas\[0\]"):
        read_squad_json(path)
    path.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        read_squad_json(path)
    with pytest.raises(DataError, match="not found"):
        read_squad_json(tmp_path / "missing.json")


def _examples(prefix, n):
    return [qa(f"{prefix}{i}", f"What is item {i}?", f"Item {i} is a thing number {i}.", f"number {i}")
            for i in range(n)]


def test_make_splits_holds_validation_out_of_train_and_keeps_adversarial_groups():
    train, dev = _examples("t", 50), _examples("d", 20)
    variant = QAExample(id="d3-high-conf-turk0", question=dev[3].question, context=dev[3].context + " Decoy.",
                        answers=dev[3].answers, answer_starts=dev[3].answer_starts)
    cfg = DataConfig(validation_size=0.3, max_validation_examples=10, max_adversarial_questions=None,
                     adversarial_sets=["AddSent"])
    s = make_splits(train, dev, {"AddSent": [dev[3], variant, dev[5]]}, cfg, None)
    assert len(s.validation) == 10 and len(s.train) == 40
    assert not {x.id for x in s.validation} & {x.id for x in s.train}
    assert [x.id for x in s.test] == [x.id for x in dev]
    assert [x.id for x in s.adversarial["AddSent"]] == ["d3", "d3-high-conf-turk0", "d5"]
    with pytest.raises(DataError, match="unknown adversarial set"):
        make_splits(train, dev, {}, DataConfig(adversarial_sets=["AddNothing"]), None)


# ---------------------------------------------------------------- reports


TRAINING = {"epochs": 1, "warmup_ratio": 0.0, "batch_size": 8, "max_seq_length": 64, "precision": "fp32",
            "weight_decay": 0.0, "max_grad_norm": 1.0, "group_by_length": True, "eval_batch_size": 8}


def qa_record(method, seed, f1, worst, trainable, mtype=None, **method_cfg):
    from pefteval.plan import trial_key

    config = {"model": "tiny", "task": "squad", "method_label": method,
              "method": {"type": mtype or method, **method_cfg}, "training": {**TRAINING, "lr": 1e-3},
              "data": {}, "data_source": "local", "seed": seed, "save_weights": False}
    adv = {"exact_match": worst, "f1": worst + 0.1, "worst_exact_match": worst - 0.1, "worst_f1": worst,
           "source_exact_match": f1 - 0.1, "source_f1": f1, "n": 30, "groups": 10}
    return {"key": trial_key(config), "status": "complete", "config": config, "experiment": "exp",
            "metrics": {"validation": {"exact_match": f1 - 0.1, "f1": f1, "n": 10},
                        "test": {"exact_match": f1 - 0.1, "f1": f1, "n": 20}, "AddSent": adv, "AddAnsCtx": adv},
            "params": {"trainable": trainable, "base": 1000, "total": 1000, "head": 10},
            "train_seconds": 1.0, "peak_rss_mb": 100.0, "notes": [], "device": "cpu", "versions": {},
            "qa_mode": "extractive"}


def test_qa_report_table_worst_case_and_scaling(tmp_path):
    from pefteval.reporting import build_table, render_csv, render_markdown
    from pefteval.reporting.scaling import plot_scaling

    recs = [qa_record("fft", 0, 0.60, 0.30, 1000), qa_record("fft", 1, 0.70, 0.40, 1000),
            qa_record("fft_top1", 0, 0.50, 0.20, 300, mtype="fft", top_k_layers=1),
            qa_record("fft_top1", 1, 0.50, 0.20, 300, mtype="fft", top_k_layers=1),
            qa_record("lora_r8", 0, 0.40, 0.10, 20, mtype="lora", r=8),
            qa_record("lora_r16", 0, 0.45, 0.15, 40, mtype="lora", r=16)]
    table = build_table(recs)
    text = render_markdown(table)
    row = next(line for line in text.splitlines() if line.startswith("| fft |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # Original: EM/F1 mean (std over seeds 0 and 1); Orig. (src); AS worst-case
    assert cells[1] == "55.0/65.0 (7.1/7.1)"
    assert cells[2] == "55.0/65.0 (7.1/7.1)"
    assert cells[3] == "25.0/35.0 (7.1/7.1)"
    assert "Orig. (src)" in text and "AAC" in text and "worst case" in text
    # the scaling table: FFT family (top-1, all layers) and LoRA family (r=8, r=16), sorted by size
    assert table.scaling is not None
    settings = [(r.setting, r.trainable) for r in table.scaling.rows]
    assert settings == [("top-1", 300), ("all layers", 1000), ("r=8", 20), ("r=16", 40)]
    top1 = table.scaling.rows[0]
    assert top1.scores["squad F1"][0] == pytest.approx(0.5) and top1.scores["squad adv F1"][0] == pytest.approx(0.2)
    assert "FFT (top-k layers): top-1" in text
    png = plot_scaling(table.scaling, tmp_path / "scaling.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    csv_rows = {tuple(line.split(",")[:3]): line.split(",")[3:5] for line in render_csv(table).splitlines()}
    assert csv_rows[("fft", "squad", "AddSent:worst_f1")] == ["0.350000", "0.070711"]
    assert csv_rows[("fft", "squad", "test:f1")] == ["0.650000", "0.070711"]


def test_top_k_settings_clip_to_the_depth_and_run_once():
    exp = parse_config({"name": "x", "model": "m", "tasks": ["sst2"], "methods": [
        {"type": "fft", "name": "top1", "top_k_layers": 1}, {"type": "fft", "name": "top6", "top_k_layers": 6},
        {"type": "fft", "name": "top12", "top_k_layers": 12}, {"type": "fft", "name": "top24", "top_k_layers": 24},
        {"type": "fft"}, {"type": "lora"}]})
    kept, notices = drop_clipped_duplicates(exp, depth=6)
    assert [m.label for m in kept.methods] == ["top1", "top6", "fft", "lora"]
    assert len(notices) == 2 and all("clipped to the model's depth 6" in n for n in notices)
    assert "same setting as top6" in notices[0]
    kept, notices = drop_clipped_duplicates(exp, depth=8)
    assert [m.label for m in kept.methods] == ["top1", "top6", "top12", "fft", "lora"]
    assert notices == ["top12: top_k_layers 12 clipped to the model's depth 8",
                       "top24: top_k_layers 24 is clipped to the model's depth 8, the same setting as top12, "
                       "which runs once in its place"]


# ---------------------------------------------------------------- end to end


def write_squad_layout(root: Path) -> Path:
    def arts(prefix, n, offset=0):
        out = []
        for i in range(offset, offset + n):
            ctx = f"The {['red', 'blue', 'green'][i % 3]} box number {i} holds {i * 7} coins. It sits on shelf {i % 5}."
            out.append(article(f"T{i}", ctx, [{"id": f"{prefix}{i}", "question": f"How many coins does box {i} hold?",
                                               "answers": [{"text": f"{i * 7} coins",
                                                            "answer_start": ctx.index(f"{i * 7} coins")}]}]))
        return out

    (root / "squad").mkdir(parents=True)
    (root / "adversarial_squad").mkdir()
    (root / "squad" / "train-v1.1.reconstructed.json").write_text(json.dumps(squad_json(arts("t", 40))))
    dev = arts("d", 12, offset=100)
    (root / "squad" / "dev-v1.1.json").write_text(json.dumps(squad_json(dev)))
    adv = json.loads(json.dumps(dev[:6]))
    for a in adv:
        p = a["paragraphs"][0]
        q = p["qas"][0]
        p2 = {"context": p["context"] + " The box number 999 holds 5 coins.",
              "qas": [{**q, "id": q["id"] + "-high-conf-turk0"}]}
        a["paragraphs"].append(p2)
    for name in ("AddSent", "AddOneSent"):
        (root / "adversarial_squad" / f"{name}.json").write_text(json.dumps(squad_json(adv)))
    return root


@pytest.mark.integration
def test_tiny_qa_sweep_end_to_end(tmp_path, tiny_qa_dir, monkeypatch):
    data = write_squad_layout(tmp_path / "data")
    cfg = {"name": "tiny_qa", "model": str(tiny_qa_dir), "tasks": ["squad"], "seeds": [0],
           "training": {"epochs": 1, "batch_size": 8, "lr": 1e-3, "max_seq_length": 64, "doc_stride": 16,
                        "precision": "fp32"},
           "data": {"max_validation_examples": 6, "attack": {"candidates": 3, "max_passes": 1, "max_queries": 6}},
           "methods": [{"type": "fft"}, {"type": "lora", "r": 4, "alpha": 8}]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    monkeypatch.setenv("PEFTEVAL_CACHE_DIR", str(tmp_path / "cache"))
    proc = run_cli("run", tmp_path / "c.yaml", "--out", out, "--data-dir", data)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SQuAD (extractive QA)" in proc.stdout
    assert "| fft |" in proc.stdout and "| lora |" in proc.stdout
    runs = sorted((out / "runs").iterdir())
    assert len(runs) == 2
    result = json.loads((runs[0] / "result.json").read_text())
    assert set(result["metrics"]) == {"validation", "test", "AddSent", "AddOneSent", "AddAny", "AddAnyExtend",
                                      "AddAnsCtx", "AddNegAns"}
    assert result["metrics"]["AddSent"]["groups"] == 6 and result["metrics"]["AddSent"]["n"] == 12
    assert result["metrics"]["test"]["n"] == 12
    preds = json.loads((runs[0] / "predictions.json").read_text())
    assert len(preds["test"]) == 12 and len(preds["AddSent"]) == 12
    assert (out / "report.md").is_file()
    # AddAny against the saved model through the generate command
    target = tmp_path / "addany.json"
    proc = run_cli("adversarial", "generate", "squad", "--attack", "AddAny", "--out", target, "--model", runs[0],
                   "--max-examples", "3", "--data-dir", data)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    written = read_squad_json(target)
    assert len(written) == 6 and sum("AddAny" in x.id for x in written) == 3


def test_squad_from_the_hub(monkeypatch, tmp_path):
    """Without a data directory: rajpurkar/squad train/validation and stanfordnlp/squad_adversarial."""
    import datasets

    from pefteval.tasks import get_task

    def rows(prefix, n, suffix=""):
        out = []
        for i in range(n):
            ctx = f"Box {i} is kept in Paris. It holds {i + 3} coins."
            out.append({"id": f"{prefix}{i}{suffix}", "title": "Boxes", "context": ctx,
                        "question": f"How many coins does box {i} hold?",
                        "answers": {"text": [f"{i + 3} coins"], "answer_start": [ctx.index(f"{i + 3} coins")]}})
        return out

    calls = []

    def load_dataset(path, config=None, split=None):
        calls.append((path, config, split))
        if path == "rajpurkar/squad":
            return rows("t", 30) if split == "train" else rows("d", 10)
        if path == "stanfordnlp/squad_adversarial" and config == "AddSent":
            return rows("d", 4) + rows("d", 4, "-high-conf-turk0")
        raise ValueError(f"unexpected {path}/{config}")

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setenv("PEFTEVAL_CACHE_DIR", str(tmp_path))
    splits = get_task("squad").splits(None, DataConfig(validation_size=0.2, adversarial_sets=["AddSent", "AddAnsCtx"]))
    assert ("rajpurkar/squad", None, "train") in calls and ("rajpurkar/squad", None, "validation") in calls
    assert ("stanfordnlp/squad_adversarial", "AddSent", "validation") in calls
    assert len(splits.train) == 24 and len(splits.validation) == 6 and len(splits.test) == 10
    assert len(splits.adversarial["AddSent"]) == 8
    aac = splits.adversarial["AddAnsCtx"]
    assert [x.id for x in aac[:4]] == ["d0", "d1", "d2", "d3"] and aac[4].id == "d0-AddAnsCtx-0"
    assert aac[4].context.startswith(aac[0].context) and "3 coins" not in aac[4].context[len(aac[0].context):]
    bad = rows("t", 3)
    bad[1]["answers"] = {"text": ["nowhere"], "answer_start": [0]}
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: bad)
    with pytest.raises(DataError, match="row 1"):
        get_task("squad").splits(None, DataConfig())
