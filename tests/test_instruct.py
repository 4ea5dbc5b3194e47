"""Instruction tuning on Alpaca, answered on MT-Bench (the paper's Table 2): the data, the prompts,
the per-category temperatures, the two-turn conversations, FastChat's answer format, and a whole
sweep with a tiny decoder through answers, judging and the Table-2-shaped report."""

from __future__ import annotations

import json

import pytest
import yaml

from pefteval.config import DataConfig
from pefteval.errors import DataError
from pefteval.tasks.alpaca import (
    HEADER_INPUT,
    HEADER_NO_INPUT,
    InstructExample,
    alpaca_prompt,
    alpaca_splits,
    capped_questions,
    rouge_l,
    score_alpaca,
)
from pefteval.tasks.mt_bench import (
    CATEGORIES,
    MTBenchQuestion,
    answer_row,
    judge_prompt_name,
    read_answers,
    read_questions,
    write_answers,
)
from tests.conftest import run_cli


def test_alpaca_splits_from_the_release_file(data_dir):
    cfg = DataConfig(max_train_examples=100, validation_size=20, max_validation_examples=20)
    splits = alpaca_splits(data_dir, cfg)
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (100, 20, 80)
    assert not {x.id for x in splits.train} & {x.id for x in splits.validation}
    assert all(isinstance(x, InstructExample) and x.output.strip() for x in splits.train + splits.validation)
    again = alpaca_splits(data_dir, cfg)
    assert [x.id for x in again.train] == [x.id for x in splits.train]  # fixed by split_seed
    other = alpaca_splits(data_dir, cfg.model_copy(update={"split_seed": 1}))
    assert [x.id for x in other.train] != [x.id for x in splits.train]
    # every record is read: 52,002 in the file, 28 of them with an empty response (left out)
    full = alpaca_splits(data_dir, DataConfig(validation_size=2, max_validation_examples=2))
    assert len(full.train) + len(full.validation) == 52_002 - 28


def test_malformed_alpaca_records_are_named(tmp_path):
    (tmp_path / "alpaca").mkdir()
    (tmp_path / "alpaca" / "alpaca_data.json").write_text(json.dumps([{"instruction": "a", "input": "", "output": "b"},
                                                                      {"instruction": "c", "output": 3}]))
    with pytest.raises(DataError, match=r"record 1: 'output' must be a string"):
        alpaca_splits(tmp_path, DataConfig())
    (tmp_path / "alpaca" / "alpaca_data.json").unlink()
    with pytest.raises(DataError, match="Alpaca file not found"):
        alpaca_splits(tmp_path, DataConfig())


def test_alpaca_template_one_and_two_turns():
    one = alpaca_prompt(["Name a color."], [])
    assert one == HEADER_NO_INPUT + "### Instruction:\nName a color.\n\n### Response:\n"
    with_input = alpaca_prompt(["Translate."], [], first_input="Bonjour")
    assert with_input == HEADER_INPUT + "### Instruction:\nTranslate.\n\n### Input:\nBonjour\n\n### Response:\n"
    two = alpaca_prompt(["Name a color.", "Another one?"], ["Blue."])
    assert two == one + "Blue.\n\n### Instruction:\nAnother one?\n\n### Response:\n"
    with pytest.raises(ValueError, match="need 1 earlier answers"):
        alpaca_prompt(["a", "b"], [])


def test_fastchat_temperatures_and_judge_prompts_per_category(data_dir):
    questions = read_questions(data_dir)
    assert len(questions) == 80 and [q.question_id for q in questions[:2]] == [81, 82]
    assert {c: sum(q.category == c for q in questions) for c in CATEGORIES} == dict.fromkeys(CATEGORIES, 10)
    temps = {q.category: q.temperature for q in questions}
    assert temps == {"writing": 0.7, "roleplay": 0.7, "extraction": 0.0, "math": 0.0, "coding": 0.0,
                     "reasoning": 0.0, "stem": 0.1, "humanities": 0.1}
    assert MTBenchQuestion(1, "writing", ("a", "b"), required_temperature=0.0).temperature == 0.0
    assert all(len(q.turns) == 2 for q in questions)
    assert [judge_prompt_name(c, t) for c in ("math", "writing") for t in (1, 2)] == [
        "single-math-v1", "single-math-v1-multi-turn", "single-v1", "single-v1-multi-turn"]
    assert judge_prompt_name("reasoning", 1) == judge_prompt_name("coding", 1) == "single-math-v1"


def test_capped_questions_keep_every_category(data_dir):
    questions = read_questions(data_dir)
    eight = capped_questions(questions, 8)
    assert sorted(q.category for q in eight) == sorted(CATEGORIES)
    assert capped_questions(questions, None) == questions == capped_questions(questions, 500)
    assert [q.question_id for q in eight] == sorted(q.question_id for q in eight)


def test_rouge_l_selects_and_mt_bench_answers_are_counted():
    assert rouge_l("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(1.0)
    # LCS "the cat on the mat" (5 of 6 and of 7 tokens): F = 2·(5/6)(5/7)/((5/6)+(5/7))
    assert rouge_l("the cat sat on the mat", "the cat lay down on the mat") == pytest.approx(
        2 * (5 / 6) * (5 / 7) / (5 / 6 + 5 / 7))
    assert rouge_l("", "anything") == 0.0
    examples = [InstructExample("a", "i", "", "the cat sat"), InstructExample("b", "i", "", "a dog")]
    scored = score_alpaca(["the cat sat", "no"], examples)
    assert scored.metrics["rougeL"] == pytest.approx(0.5) and scored.per_example == [pytest.approx(1.0), 0.0]
    questions = [MTBenchQuestion(81, "writing", ("x", "y")), MTBenchQuestion(82, "math", ("x", "y"))]
    scored = score_alpaca([["one two", ""], ["three", "four five six"]], questions)
    assert scored.metrics["answered_turns"] == 4 and scored.metrics["empty_turns"] == 1
    assert scored.metrics["mean_answer_words"] == pytest.approx(6 / 4)
    assert scored.per_example == [None, None]


def test_answer_file_has_fastchats_keys_and_types(tmp_path):
    path = tmp_path / "model_answer" / "m.jsonl"
    write_answers(path, [answer_row(82, "m", ["b1", "b2"]), answer_row(81, "m", ["a1", "a2"])])
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [row["question_id"] for row in lines] == [81, 82]  # sorted, as reorg_answer_file leaves them
    for row in lines:  # what fastchat/llm_judge/common.py load_model_answers and run_judge_single read
        assert set(row) == {"question_id", "answer_id", "model_id", "choices", "tstamp"}
        assert isinstance(row["question_id"], int) and isinstance(row["answer_id"], str)
        assert isinstance(row["tstamp"], float) and row["model_id"] == "m"
        assert row["choices"] == [{"index": 0, "turns": row["choices"][0]["turns"]}]
        assert all(isinstance(t, str) for t in row["choices"][0]["turns"])
    assert read_answers(path)[81]["choices"][0]["turns"] == ["a1", "a2"]
    path.write_text('{"question_id": "81", "model_id": "m", "choices": []}\n')
    with pytest.raises(DataError, match="line 1: 'question_id' must be an integer"):
        read_answers(path)


def test_two_turn_conversation_in_the_chat_template():
    from pefteval.kinds.instruct import conversation_prompt
    from pefteval.models import load_tokenizer, resolve_model

    try:
        tok = load_tokenizer(resolve_model("smollm2-135m"))
    except Exception as err:  # noqa: BLE001 - the packaged model is an optional extra
        pytest.skip(f"smollm2-135m is not installed: {err}")
    first = conversation_prompt(tok, ["Write a haiku."], [])
    second = conversation_prompt(tok, ["Write a haiku.", "Now a limerick."], ["Leaves fall softly"])
    assert first.endswith("<|im_start|>assistant\n") and second.endswith("<|im_start|>assistant\n")
    # turn 2 holds turn 1 and its answer, as an assistant message, then the new user turn
    assert second.startswith(first)
    assert "Leaves fall softly<|im_end|>" in second and second.index("Leaves") < second.index("Now a limerick.")
    with_input = conversation_prompt(tok, ["Translate."], [], first_input="Bonjour")
    assert "Translate.\n\nBonjour<|im_end|>" in with_input


def test_sampled_answers_are_seeded(tiny_llama_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pefteval.kinds.generative import generate_answers

    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir))
    tok = AutoTokenizer.from_pretrained(str(tiny_llama_dir))
    prompts = ["write a poem about the sea", "tell a story", "describe a city"]
    runs = [generate_answers(model, tok, prompts, 2, 12, "fp32", temperature=0.7, seed=s) for s in (3, 3, 4)]
    assert runs[0] == runs[1] and runs[0] != runs[2]
    counts: list[int] = []
    greedy = generate_answers(model, tok, prompts, 2, 12, "fp32", counts=counts)
    assert greedy == generate_answers(model, tok, prompts, 3, 12, "fp32") and all(1 <= n <= 12 for n in counts)


@pytest.mark.integration
def test_alpaca_sweep_answers_judges_and_reports(tmp_path, data_dir, tiny_llama_dir):
    cfg = {"name": "tiny_instruct", "model": str(tiny_llama_dir), "tasks": ["alpaca"], "seeds": [0],
           "training": {"epochs": 1, "batch_size": 4, "lr": 1e-3, "max_seq_length": 192, "max_new_tokens": 4,
                        "eval_batch_size": 8, "precision": "fp32"},
           "data": {"max_train_examples": 8, "validation_size": 4, "max_validation_examples": 4,
                    "max_eval_examples": 8, "mt_bench_max_new_tokens": 5},
           "methods": [{"type": "fft"}, {"type": "lora", "r": 2, "alpha": 4, "target_modules": ["q_proj", "v_proj"]}],
           "judge": {"backend": "local", "model": str(tiny_llama_dir), "max_new_tokens": 3, "sanity_questions": 2,
                     "precision": "fp32"}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    proc = run_cli("run", tmp_path / "c.yaml", "--out", out, "--data-dir", data_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runs = sorted((out / "runs").iterdir())
    assert len(runs) == 2
    for run in runs:
        record = json.loads((run / "result.json").read_text())
        assert record["task_kind"] == "instruct" and record["selection_metric"] == "rougeL"
        assert 0.0 <= record["metrics"]["validation"]["rougeL"] <= 1.0
        info = record["mt_bench"]
        assert info["model_id"] == run.name and info["questions"] == 8 and info["turns"] == 16
        assert info["max_new_tokens"] == 5 and info["answers_per_second"] > 0
        answers = read_answers(run / "mt_bench_answers.jsonl")
        assert len(answers) == 8 and all(len(a["choices"][0]["turns"]) == 2 for a in answers.values())
        # FastChat's judging layout: each model's answers under OUT/mt_bench/model_answer/<model_id>.jsonl
        assert read_answers(out / "mt_bench" / "model_answer" / f"{run.name}.jsonl").keys() == answers.keys()
    judgments = [json.loads(line) for f in (out / "mt_bench" / "model_judgment").glob("*_single.jsonl")
                 for line in f.read_text().splitlines()]
    assert len(judgments) == 2 * 16 and {j["turn"] for j in judgments} == {1, 2}
    assert {j["model"] for j in judgments} == {r.name for r in runs}
    report = (out / "report.md").read_text()
    assert "### MT-Bench (Table 2 shape), judge:" in report
    header = next(line for line in report.splitlines() if line.startswith("| Method | Writing"))
    assert header.split("|")[2:-1] == [" Writing ", " Roleplay ", " Reasoning ", " Math ", " Coding ", " Extraction ",
                                       " Stem ", " Humanities ", " Turn 1 ", " Turn 2 ", " Average ", " Unrated "]
    assert "Sanity check" in report and "8 of the 80 questions were answered" in report
    assert (out / "mt_bench" / "judge_check").is_dir()
    again = run_cli("judge", out, "--data-dir", data_dir)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "judged 0 answer turn(s)" in again.stdout and "32 already judged" in again.stdout
