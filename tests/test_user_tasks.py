"""Tasks of one's own from YAML definitions (--include-path, include_path:): a classification task from
a CSV of real SST-2 sentences trained with FFT and LoRA through the CLI, a generation task from JSON Lines
on the tiny decoder, every file format read to the same examples, hub splits, k-shot few-shot, and each
user error (exit 2, naming the file, the line and the key)."""

from __future__ import annotations

import csv
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pefteval.config import DataConfig, TrialConfig, load_config
from pefteval.errors import ConfigError, DataError, UserError
from pefteval.metrics import rouge_l
from pefteval.plan import plan_trials
from pefteval.tasks import TASKS, track_data_reads
from pefteval.tasks.fewshot import build_prompt
from pefteval.tasks.generation import GenExample
from pefteval.tasks.user import USER_TASKS, generation_scorer, label_id, register_include_paths

from .conftest import REPO_ROOT, cli_env, run_cli

# the definition of the task brief, exactly; the data paths are filled in
REVIEWS = """task: my_reviews
kind: classification
data_files: {{train: {train}, test: {test}}}
text_field: review
label_field: stars
label_names: [bad, good]
"""


@pytest.fixture(autouse=True)
def _forget_user_tasks():
    """Each test registers its own: none stays in the registry for the next."""
    yield
    for name in USER_TASKS:
        TASKS.pop(name, None)
    USER_TASKS.clear()


def sst2_rows(data_dir: Path, n: int, skip: int = 0) -> list[tuple[str, int]]:
    """Real SST-2 training sentences and their labels (0 negative, 1 positive)."""
    lines = (data_dir / "glue" / "SST-2" / "train.tsv").read_text(encoding="utf-8").splitlines()[1 + skip:1 + skip + n]
    return [(s.strip(), int(y)) for s, y in (line.split("\t") for line in lines)]


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def stars(i: int, label: int) -> str:
    """The label column as a user may hold it: a label name on even rows, its index on odd ones."""
    return ["bad", "good"][label] if i % 2 == 0 else str(label)


@pytest.fixture
def reviews(tmp_path, data_dir) -> Path:
    """tasks/my_reviews.yaml (the brief's definition) over train.csv (96 rows) and test.csv (40 rows)."""
    folder = tmp_path / "tasks"
    folder.mkdir()
    train = write_csv(folder / "train.csv", ["review", "stars"],
                      [[s, stars(i, y)] for i, (s, y) in enumerate(sst2_rows(data_dir, 96))])
    test = write_csv(folder / "test.csv", ["review", "stars"],
                     [[s, stars(i, y)] for i, (s, y) in enumerate(sst2_rows(data_dir, 40, skip=96))])
    (folder / "my_reviews.yaml").write_text(REVIEWS.format(train=train, test=test))
    return folder


def store_records(out: Path) -> list[dict]:
    with sqlite3.connect(out / "results.sqlite") as conn:
        return [json.loads(r) for (r,) in conn.execute("SELECT record FROM trials ORDER BY rowid")]


def assert_exit_2(proc, *needles: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr)


# ---------------------------------------------------------------- end to end through the CLI


@pytest.mark.integration
def test_the_reviews_task_trains_fft_and_lora_through_the_cli(tmp_path, reviews, tiny_bert_dir):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(yaml.safe_dump({
        "name": "mine", "model": str(tiny_bert_dir), "tasks": ["my_reviews"], "seeds": [0],
        "training": {"epochs": 1, "batch_size": 16, "lr": 1e-3, "max_seq_length": 32, "precision": "fp32"},
        "analyses": {"capture": False},
        "methods": [{"type": "fft"}, {"type": "lora", "r": 4, "alpha": 8}]}))
    out = tmp_path / "out"
    listed = run_cli("list", "--include-path", reviews)
    assert listed.returncode == 0, listed.stderr
    line = next(x for x in listed.stdout.splitlines() if x.startswith("  my_reviews "))
    assert f"labels: bad, good; from {reviews}" in line
    assert listed.stdout.index("  sst2 ") < listed.stdout.index("  my_reviews ") < listed.stdout.index("Methods:")

    proc = run_cli("run", cfg, "--out", out, "--include-path", reviews)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "| fft |" in proc.stdout and "| lora |" in proc.stdout and "my_reviews" in proc.stdout
    recs = store_records(out)
    assert sorted(r["config"]["method_label"] for r in recs) == ["fft", "lora"]
    for rec in recs:
        assert rec["status"] == "complete" and rec["task_kind"] == "classification", rec.get("error")
        # 96 rows: validation_size 0.1 holds out int(9.6) = 9 of the shuffled pool, as for GLUE
        assert rec["train_examples"] == 87
        assert rec["metrics"]["validation"]["n"] == 9 and rec["metrics"]["test"]["n"] == 40
        assert 0.0 <= rec["metrics"]["test"]["accuracy"] <= 1.0
        assert "include_path" not in rec["config"]  # a runtime setting, never the trial's identity
        # the trial process read the data and the definition itself through the tracked readers
        assert {str(reviews / n) for n in ("train.csv", "test.csv", "my_reviews.yaml")} <= set(rec["data_fingerprint"])
        written = json.loads((out / rec["run_dir"] / "trial.json").read_text())
        assert written["include_path"] == [str(reviews)]
        predictions = json.loads((out / rec["run_dir"] / "predictions.json").read_text())
        assert {p["target"] for p in predictions["test"]} == {"bad", "good"}

    report = run_cli("report", out, "--include-path", reviews)
    assert report.returncode == 0, report.stderr
    assert "my_reviews" in report.stdout and "| lora |" in report.stdout
    assert_exit_2(run_cli("report", out), "my_reviews", "--include-path", str(reviews))
    # this run named the folder on the command line only: status needs it too
    status = run_cli("status", out, "--include-path", reviews)
    assert status.returncode == 0 and "complete  2" in status.stdout, status.stdout + status.stderr
    assert_exit_2(run_cli("status", out), "unknown task 'my_reviews'", "--include-path")


@pytest.mark.integration
def test_a_generation_task_from_jsonl_on_the_tiny_decoder(tmp_path, tiny_llama_dir):
    folder = tmp_path / "exp" / "tasks"
    folder.mkdir(parents=True)
    lines = [json.dumps({"question": f"What is {i} plus {i}?", "answer": f"{i} plus {i} is {2 * i}"})
             for i in range(30)]
    (folder / "train.jsonl").write_text("\n".join(lines[:24]) + "\n")
    (folder / "test.jsonl").write_text("\n".join(lines[24:]) + "\n")
    (folder / "sums.yaml").write_text(
        "task: sums\nkind: generation\ndata_files: {train: train.jsonl, test: test.jsonl}\n"
        "prompt: 'Question: {question}'\ntarget_field: answer\nmetric: final_number\n")
    cfg = tmp_path / "exp" / "exp.yaml"
    cfg.write_text(yaml.safe_dump({
        "name": "gen", "model": str(tiny_llama_dir), "tasks": ["sums"], "seeds": [0], "include_path": "tasks",
        "training": {"epochs": 1, "batch_size": 8, "lr": 1e-3, "max_seq_length": 64, "max_new_tokens": 4,
                     "precision": "fp32"},
        "data": {"validation_size": 4}, "analyses": {"capture": False}, "methods": [{"type": "fft"}]}))
    out = tmp_path / "out"
    proc = run_cli("run", cfg, "--out", out)  # the folder comes from the config's include_path
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "| Method | sums | Average |" in proc.stdout and "sums: final-number accuracy" in proc.stdout
    (rec,) = store_records(out)
    assert rec["status"] == "complete" and rec["task_kind"] == "generative", rec.get("error")
    assert rec["selection_metric"] == "accuracy" and rec["train_examples"] == 20
    assert rec["metrics"]["validation"]["n"] == 4 and rec["metrics"]["test"]["n"] == 6
    assert "validation_number_accuracy" in rec["curve"][0]
    predictions = json.loads((out / rec["run_dir"] / "predictions.json").read_text())
    assert [p["target"] for p in predictions["test"]] == [f"{i} plus {i} is {2 * i}" for i in range(24, 30)]
    # experiment.yaml keeps the folder absolute: status finds the task without --include-path
    assert yaml.safe_load((out / "experiment.yaml").read_text())["include_path"] == [str(folder)]
    status = run_cli("status", out)
    assert status.returncode == 0 and "complete  1" in status.stdout, status.stdout + status.stderr


# ---------------------------------------------------------------- data: formats, hub, labels


FORMAT_ROWS = [("a film, \"quoted\" and long", "good", "x"), ("plain words", "0", "y"), ("tab\tinside", "1", "z"),
               ("ünïcode — text", "bad", "w")]


def write_format(folder: Path, fmt: str, rows: list[tuple[str, str, str]], name: str) -> Path:
    path = folder / f"{name}.{fmt}"
    # the label as a file of that format holds it: ints in JSON and Parquet where it is an index
    typed = [{"review": r, "stars": int(s) if s.isdigit() else s, "other": o} for r, s, o in rows]
    if fmt in ("csv", "tsv"):
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, delimiter="," if fmt == "csv" else "\t")
            writer.writerow(["review", "stars", "other"])
            writer.writerows(rows)
    elif fmt == "json":
        path.write_text(json.dumps(typed, ensure_ascii=False), encoding="utf-8")
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in typed), encoding="utf-8")
    else:
        pq.write_table(pa.Table.from_pylist([{**row, "stars": str(row["stars"])} for row in typed]), path)
    return path


def define(folder: Path, name: str, **fields) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"task": name, **fields}, sort_keys=False))
    return path


def classification(**extra) -> dict:
    return {"kind": "classification", "text_field": "review", "label_field": "stars", "label_names": ["bad", "good"],
            **extra}


def test_every_file_format_reads_to_the_same_examples(tmp_path):
    folder = tmp_path / "tasks"
    folder.mkdir()
    for fmt in ("csv", "tsv", "json", "jsonl", "parquet"):
        files = {split: write_format(folder, fmt, FORMAT_ROWS, f"{split}_{fmt}").name for split in ("train", "test")}
        define(folder, f"t_{fmt}", **classification(data_files=files))
    assert sorted(register_include_paths([folder])) == ["t_csv", "t_json", "t_jsonl", "t_parquet", "t_tsv"]
    cfg = DataConfig(validation_size=1)
    seen = {}
    for fmt in ("csv", "tsv", "json", "jsonl", "parquet"):
        with track_data_reads() as reads:
            splits = TASKS[f"t_{fmt}"].splits(None, cfg, 0)
        seen[fmt] = (splits.train, splits.validation, splits.test)
        assert {Path(p).name for p in reads} == {f"train_{fmt}.{fmt}", f"test_{fmt}.{fmt}", f"t_{fmt}.yaml"}
    assert all(v == seen["csv"] for v in seen.values())
    test = seen["csv"][2]
    assert [(x.text_a, x.label) for x in test] == [(r, {"good": 1, "0": 0, "1": 1, "bad": 0}[s])
                                                  for r, s, _ in FORMAT_ROWS]
    assert len(seen["csv"][0]) == 3 and len(seen["csv"][1]) == 1  # validation_size 1: one held out


def test_a_validation_file_is_used_and_pairs_read_both_fields(tmp_path):
    folder = tmp_path / "tasks"
    folder.mkdir()
    rows = [[f"premise {i}", f"hypothesis {i}", ["yes", "no"][i % 2]] for i in range(12)]
    for split, part in (("train", rows[:8]), ("validation", rows[8:10]), ("test", rows[10:])):
        write_csv(folder / f"{split}.csv", ["p", "h", "y"], part)
    define(folder, "pairs", kind="classification", text_fields=["p", "h"], label_field="y", label_names=["yes", "no"],
           data_files={"train": "train.csv", "validation": "validation.csv", "test": "test.csv"})
    register_include_paths([folder])
    splits = TASKS["pairs"].splits(None, DataConfig(max_train_examples=5), 0)
    assert len(splits.train) == 5 and len(splits.validation) == 2 and len(splits.test) == 2
    assert {(x.text_a, x.text_b) for x in splits.validation} == {("premise 8", "hypothesis 8"),
                                                                 ("premise 9", "hypothesis 9")}
    assert [x.label for x in splits.test] == [0, 1]


def test_a_hub_dataset_reads_the_named_splits(tmp_path, monkeypatch):
    import datasets

    tables = {"train": [{"sentence": f"s{i}", "label": i % 2} for i in range(20)],
              "validation": [{"sentence": "v", "label": 1}], "test": [{"sentence": "t", "label": "neg"}]}
    asked = []

    def load_dataset(path, name=None, split=None):
        asked.append((path, name, split))
        return datasets.Dataset.from_list(tables[{"tr": "train", "dev": "validation", "te": "test"}[split]])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    folder = tmp_path / "tasks"
    folder.mkdir()
    define(folder, "hubbed", kind="classification", text_field="sentence", label_field="label",
           label_names=["neg", "pos"], dataset="someone/reviews", dataset_config="en",
           splits={"train": "tr", "validation": "dev", "test": "te"})
    register_include_paths([folder])
    with track_data_reads() as reads:
        splits = TASKS["hubbed"].splits(None, DataConfig(), 0)
    assert asked == [("someone/reviews", "en", "tr"), ("someone/reviews", "en", "dev"), ("someone/reviews", "en", "te")]
    assert len(splits.train) == 20 and [x.label for x in splits.validation + splits.test] == [1, 0]
    assert {"hub:someone/reviews/en:tr", "hub:someone/reviews/en:dev", "hub:someone/reviews/en:te"} <= set(reads)


def test_a_label_is_a_name_else_an_index():
    assert [label_id(v, ["bad", "good"]) for v in ("good", " bad ", "1", 0, 1.0)] == [1, 0, 1, 0, 1]
    assert [label_id(v, ["bad", "good"]) for v in ("2", 2, "1.5", True, None, "great", -1)] == [None] * 7
    # names win over indexes: star ratings named 1..5 map by name
    assert [label_id(v, ["1", "2", "3", "4", "5"]) for v in ("1", 5, "5.0")] == [0, 4, 4]


def test_k_shot_samples_through_the_few_shot_machinery(tmp_path, data_dir):
    folder = tmp_path / "tasks"
    folder.mkdir()
    write_csv(folder / "train.csv", ["review", "stars"], [[s, y] for s, y in sst2_rows(data_dir, 60)])
    write_csv(folder / "test.csv", ["review", "stars"], [[s, y] for s, y in sst2_rows(data_dir, 30, skip=60)])
    define(folder, "fs", **classification(data_files={"train": "train.csv", "test": "test.csv"},
                                          fewshot={"pattern": "Review: {review} Sentiment: {label}",
                                                   "label_words": ["terrible", "great"]}))
    register_include_paths([folder])
    task = TASKS["fs"]
    splits = task.splits(None, DataConfig(k_shot=4, max_eval_examples=10), 3)
    assert sorted(x.label for x in splits.train) == [0] * 4 + [1] * 4
    assert sorted(x.label for x in splits.validation) == [0] * 4 + [1] * 4 and len(splits.test) == 10
    assert task.fewshot.pattern == "Review: {text} Sentiment: {label}"
    prompt = build_prompt(task.fewshot, splits.test[0], splits.train[:1])
    assert prompt.startswith(f"Review: {' '.join(splits.train[0].text_a.split())} Sentiment: "
                             f"{['terrible', 'great'][splits.train[0].label]}\nReview: ")
    assert prompt.endswith(" Sentiment:")


def test_a_k_shot_trial_scores_the_label_words_on_the_tiny_decoder(tmp_path, data_dir, tiny_llama_dir):
    from pefteval.config import parse_config
    from pefteval.trial import run_trial

    folder = tmp_path / "tasks"
    folder.mkdir()
    write_csv(folder / "train.csv", ["review", "stars"], [[s, y] for s, y in sst2_rows(data_dir, 40)])
    write_csv(folder / "test.csv", ["review", "stars"], [[s, y] for s, y in sst2_rows(data_dir, 8, skip=40)])
    define(folder, "fs", **classification(data_files={"train": "train.csv", "test": "test.csv"},
                                          fewshot={"pattern": "Review: {review} Sentiment: {label}",
                                                   "label_words": ["terrible", "great"]}))
    register_include_paths([folder])
    exp = parse_config({"name": "k", "model": str(tiny_llama_dir), "tasks": ["fs"], "seeds": [0],
                        "training": {"epochs": 1, "batch_size": 4, "lr": 1e-3, "max_seq_length": 128,
                                     "precision": "fp32"},
                        "data": {"k_shot": 2}, "save_weights": False, "analyses": {"capture": False},
                        "methods": [{"type": "lora", "r": 2, "alpha": 4}]})
    (trial,) = plan_trials(exp, "local")
    (tmp_path / "run").mkdir()
    record = run_trial(trial.resolved, None, tmp_path / "run", trial.key)
    assert record["status"] == "complete" and record["task_kind"] == "label_words"
    assert record["train_examples"] == 4 and record["metrics"]["validation"]["n"] == 4
    assert record["metrics"]["test"]["n"] == 8 and 0.0 <= record["metrics"]["test"]["accuracy"] <= 1.0


# ---------------------------------------------------------------- generation scoring


def test_generation_metrics_score_each_prediction():
    examples = [GenExample("a", "p", "The answer is 42", {"gold": "42"}),
                GenExample("b", "p", "the cat sat", {"gold": "0"})]
    preds = ["answer:  42", "The cat sat on the mat"]
    exact = generation_scorer("exact_match")(["The  answer is 42", "cat"], examples, False)
    assert exact.metrics == {"accuracy": 0.5, "n": 2} and exact.per_example == [1.0, 0.0]
    number = generation_scorer("final_number")(preds, examples, False)
    assert number.per_example == [1.0, 0.0]
    rouge = generation_scorer("rouge_l")(preds, examples, False)
    assert rouge.per_example == pytest.approx([rouge_l(preds[0], "The answer is 42"), 2 * 0.5 / 1.5])
    squad = generation_scorer("squad_f1")(["The cat sat", "42"], list(reversed(examples)), False)
    assert squad.metrics["exact_match"] == 0.5 and squad.metrics["accuracy"] == pytest.approx((1 + 0.5) / 2)


def test_rouge_l_is_the_lcs_f_measure():
    assert rouge_l("the cat sat", "the cat sat on the mat") == pytest.approx(2 * 1 * 0.5 / 1.5)
    assert rouge_l("police kill the gunman", "police killed the gunman") == pytest.approx(0.75)
    assert rouge_l("a b c", "c b a") == pytest.approx(1 / 3)
    assert rouge_l("", "x") == 0.0 and rouge_l("Über Straße", "über straße") == 1.0


# ---------------------------------------------------------------- trials carry the folder


def test_trials_carry_the_include_path_outside_their_identity(reviews, tmp_path):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(yaml.safe_dump({"name": "x", "model": "m", "tasks": ["my_reviews", "sst2"], "seeds": [0],
                                   "include_path": str(reviews.relative_to(tmp_path)),
                                   "methods": [{"type": "fft"}]}))
    register_include_paths([], cfg)
    exp = load_config(cfg)
    assert exp.include_path == [str(reviews)]
    mine, builtin = plan_trials(exp, "local")
    assert mine.resolved.include_path == [str(reviews)] and builtin.resolved.include_path == []
    assert "include_path" not in mine.config
    written = json.loads(json.dumps({**mine.resolved.to_json(), "key": mine.key}))
    assert written["include_path"] == [str(reviews)]
    assert TrialConfig.from_json(written) == mine.resolved
    # registering the same folder again (the trial process does) is a no-op
    assert register_include_paths(written["include_path"]) == ["my_reviews"]


# ---------------------------------------------------------------- user errors


def bad_definition(folder: Path, text: str) -> Path:
    folder.mkdir(exist_ok=True)
    write_csv(folder / "train.csv", ["review", "stars"], [["good film", "good"], ["bad film", "bad"]])
    path = folder / "task.yaml"
    path.write_text(text)
    return path


BASE = "task: mine\nkind: classification\ndata_files: {train: train.csv, test: train.csv}\n"
ERRORS = {
    "unknown key": (BASE + "text_field: review\nlabel_feild: stars\nlabel_names: [bad, good]\n",
                    ["line 5, label_feild: unknown field 'label_feild' (did you mean 'label_field'?)",
                     "label_field: required field missing"]),
    "wrong type": (BASE + "text_field: review\nlabel_field: stars\nlabel_names: bad\n",
                   ["line 6, label_names: Input should be a valid list"]),
    "built-in name": (BASE.replace("mine", "sst2") + "text_field: review\nlabel_field: stars\nlabel_names: [a, b]\n",
                      ["line 1, task: 'sst2' is a built-in task", "task: my_sst2"]),
    "missing file": (BASE.replace("test: train.csv", "test: gone.csv") + "text_field: r\nlabel_field: s\n"
                     "label_names: [a, b]\n", ["line 3, data_files.test: data file not found:", "gone.csv",
                                               "relative paths are read from"]),
    "unknown kind": ("task: mine\nkind: regression\n", ["line 2, kind: unknown kind 'regression'"]),
    "two text keys": (BASE + "text_field: a\ntext_fields: [a, b]\nlabel_field: s\nlabel_names: [x, y]\n",
                      ["line 4, text_field: give the input as text_field", "not both"]),
    "bad pattern": (BASE + "text_field: review\nlabel_field: stars\nlabel_names: [bad, good]\n"
                    "fewshot: {pattern: '{label} is {review}'}\n",
                    ["line 7, fewshot.pattern:", "ends with ' {label}'"]),
    "prompt shows target": ("task: g\nkind: generation\ndataset: a/b\nprompt: '{q} {a}'\ntarget_field: a\n"
                            "metric: rouge_l\n", ["line 4, prompt: the prompt shows the target field {a}"]),
    "bad metric": ("task: g\nkind: generation\ndataset: a/b\nprompt: '{q}'\ntarget_field: a\nmetric: bleu\n",
                   ["line 6, metric: Input should be 'exact_match', 'final_number', 'squad_f1' or 'rouge_l'"]),
    "both sources": (BASE + "dataset: a/b\ntext_field: r\nlabel_field: s\nlabel_names: [a, b]\n",
                     ["line 4, dataset: give the data either as data_files", "not both"]),
}


@pytest.mark.parametrize("case", ERRORS)
def test_a_bad_definition_names_its_file_line_and_key(tmp_path, case):
    text, needles = ERRORS[case]
    path = bad_definition(tmp_path / "tasks", text)
    with pytest.raises(ConfigError) as info:
        register_include_paths([tmp_path / "tasks"])
    message = str(info.value)
    assert message.startswith(f"{path}: invalid task definition\n"), message
    for needle in needles:
        assert needle in message, (needle, message)
    assert not USER_TASKS and "mine" not in TASKS  # nothing of a folder with a bad definition is registered


def test_two_files_defining_one_task_name_both(tmp_path, reviews):
    other = tmp_path / "more"
    other.mkdir()
    (other / "again.yaml").write_text((reviews / "my_reviews.yaml").read_text())
    with pytest.raises(ConfigError, match=r"again\.yaml: invalid task definition\n  line 1, task: task 'my_reviews' "
                                          r"is also defined in .*my_reviews\.yaml \(line 1\)"):
        register_include_paths([reviews, other])
    (reviews / "copy.yaml").write_text((reviews / "my_reviews.yaml").read_text())
    with pytest.raises(ConfigError, match=r"my_reviews\.yaml: invalid task definition\n.*also defined in .*copy\.yaml"):
        register_include_paths([reviews])


def test_list_with_an_include_path_imports_no_torch(reviews):
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom pefteval.cli import app\n"
            f"result = CliRunner().invoke(app, ['list', '--include-path', {str(reviews)!r}])\n"
            "assert result.exit_code == 0 and '  my_reviews ' in result.output, result.output\n"
            "heavy = [m for m in ('torch', 'transformers', 'peft', 'datasets') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=cli_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_cli_refuses_bad_folders_and_definitions_with_exit_2(tmp_path, reviews):
    assert_exit_2(run_cli("list", "--include-path", tmp_path / "nowhere"), "nowhere does not exist",
                  "--include-path my_tasks/")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "exp.yaml").write_text("name: x\n")
    assert_exit_2(run_cli("list", "--include-path", tmp_path / "empty"), "no task definitions in it")
    (reviews / "my_reviews.yaml").write_text((reviews / "my_reviews.yaml").read_text() + "colour: blue\n")
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(yaml.safe_dump({"name": "x", "model": "minilm-l6", "tasks": ["my_reviews"],
                                   "methods": [{"type": "fft"}]}))
    assert_exit_2(run_cli("run", cfg, "--dry-run", "--include-path", reviews),
                  f"{reviews / 'my_reviews.yaml'}: invalid task definition", "line 7, colour: unknown field 'colour'")


@pytest.mark.parametrize(("rows", "needle"), [
    ([["fine", "good"], ["", "bad"]], "train.csv: row 2 (line 3): field 'review' (text field) is empty"),
    ([["fine", "good"], ["ok", "great"]], "train.csv: row 2 (line 3): field 'stars' (label_field) holds 'great', "
                                          "not a label: give one of the label_names (bad, good) or its index 0..1"),
    ([["fine", "good"], ["ok"]], "train.csv: row 2 (line 3): 1 comma-separated values, the header has 2"),
])
def test_a_malformed_row_names_file_row_and_field(tmp_path, rows, needle):
    folder = tmp_path / "tasks"
    folder.mkdir()
    write_csv(folder / "train.csv", ["review", "stars"], rows)
    write_csv(folder / "test.csv", ["review", "stars"], [["x", "good"]])
    define(folder, "rows", **classification(data_files={"train": "train.csv", "test": "test.csv"}))
    register_include_paths([folder])
    with pytest.raises(DataError) as info:
        TASKS["rows"].splits(None, DataConfig(), 0)
    assert needle in str(info.value) and str(folder / "train.csv") in str(info.value)


def test_a_missing_field_in_json_lines_names_row_and_field(tmp_path):
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "d.jsonl").write_text('{"q": "a", "a": "1"}\n\n{"q": "b"}\n')
    define(folder, "g", kind="generation", data_files={"train": "d.jsonl", "test": "d.jsonl"}, prompt="Q: {q}",
           target_field="a", metric="exact_match")
    register_include_paths([folder])
    with pytest.raises(DataError, match=r"d\.jsonl: row 2 \(line 3\): no field 'a' \(target_field\); found q"):
        TASKS["g"].splits(None, DataConfig(), 0)


def test_a_report_of_unknown_tasks_names_include_path(tmp_path):
    from pefteval.tasks.user import check_known_tasks

    (tmp_path / "runs" / "r1").mkdir(parents=True)
    (tmp_path / "runs" / "r1" / "trial.json").write_text(json.dumps({"include_path": ["/defs/here"]}))
    records = [{"config": {"task": "sst2"}, "run_dir": "runs/r0"}, {"config": {"task": "theirs"}, "run_dir": "runs/r1"}]
    with pytest.raises(UserError, match=r"task\(s\) theirs, .*pass --include-path DIR .*read their definitions from "
                                        r"/defs/here"):
        check_known_tasks(records, tmp_path)
    check_known_tasks(records[:1], tmp_path)  # built-in tasks need nothing
