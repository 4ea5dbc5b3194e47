"""The `pefteval` command line: `list`, `run --dry-run`, `--version`, `-h`, `python -m pefteval`, and
every user error exits 2 with one clear message and no traceback (nothing is trained in any of these tests)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import REPO_ROOT, cli_env, write_sst2_layout

QUICKSTART = REPO_ROOT / "configs" / "quickstart.yaml"
LINE = re.compile(r"^[0-9a-f]{16} \S+ \S+ seed=-?\d+ lr=\S+ warmup_ratio=\S+ batch_size=\d+$")


def config(tmp_path: Path, **overrides) -> Path:
    cfg = {"name": "cli", "model": "minilm-l6", "tasks": ["sst2"], "seeds": [0],
           "training": {"epochs": 1, "max_seq_length": 32}, "methods": [{"type": "fft"}, {"type": "lora"}]}
    cfg.update(overrides)
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def assert_user_error(proc, *needles: str) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    assert proc.stderr.startswith("error: ") or "Usage:" in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr)
    return proc.stderr


@pytest.fixture
def small_data(tmp_path) -> Path:
    return write_sst2_layout(tmp_path / "data", n_train=40, n_dev=10, n_adv=5)


def test_list_prints_aliases_tasks_methods(cli):
    proc = cli("list")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for alias in ("minilm-l6", "smollm2-135m"):
        assert f"  {alias} " in out
    for task in ("sst2", "qqp", "mnli", "mnli-mm", "qnli", "rte"):
        assert f"\n  {task} " in out
    for method in ("fft", "bitfit", "lora", "adalora", "prefix", "ia3", "peft"):
        assert f"\n  {method} " in out
    assert "adversarial: advglue" in out
    assert out.index("Models") < out.index("Tasks:") < out.index("Methods:")


def test_no_args_shows_help(cli):
    proc = cli()
    assert "run" in proc.stdout + proc.stderr and "report" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


def test_missing_config_file(cli, tmp_path):
    assert_user_error(cli("run", tmp_path / "nope.yaml", "--out", tmp_path / "out"),
                      "config file not found", "nope.yaml")
    assert not (tmp_path / "out").exists()


def test_invalid_yaml(cli, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: [unclosed\n")
    assert_user_error(cli("run", path, "--out", tmp_path / "out"), "not valid YAML", "bad.yaml")


def test_unknown_model(cli, tmp_path):
    assert_user_error(cli("run", config(tmp_path, model="no-such-model-xyz"), "--out", tmp_path / "out"),
                      "unknown model 'no-such-model-xyz'", "minilm-l6")
    assert not (tmp_path / "out").exists()


def test_unknown_model_directory(cli, tmp_path):
    assert_user_error(cli("run", config(tmp_path), "--out", tmp_path / "out", "--model", str(tmp_path / "gone")),
                      "no such directory")
    (tmp_path / "empty_model").mkdir()
    assert_user_error(cli("run", config(tmp_path), "--out", tmp_path / "out", "--model",
                          str(tmp_path / "empty_model")), "no config.json")


def test_unknown_task(cli, tmp_path):
    assert_user_error(cli("run", config(tmp_path, tasks=["sst3"]), "--out", tmp_path / "out"),
                      "tasks", "unknown task 'sst3'", "did you mean 'sst2'?")
    # the same check applies to a --tasks override
    assert_user_error(cli("run", config(tmp_path), "--out", tmp_path / "out", "--tasks", "sst2,rtee"),
                      "command-line overrides", "unknown task 'rtee'")


def test_unknown_method_type(cli, tmp_path):
    assert_user_error(cli("run", config(tmp_path, methods=[{"type": "loraa"}]), "--out", tmp_path / "out"),
                      "methods[0].type", "unknown method type 'loraa'")


def test_misspelt_config_field(cli, tmp_path):
    stderr = assert_user_error(
        cli("run", config(tmp_path, methods=[{"type": "fft"}, {"type": "lora", "alhpa": 16}]), "--out", tmp_path / "o"),
        "methods[1].alhpa", "did you mean 'alpha'?")
    assert "exp.yaml" in stderr


def test_missing_data_dir(cli, tmp_path):
    assert_user_error(cli("run", config(tmp_path), "--out", tmp_path / "out", "--data-dir", tmp_path / "no_data"),
                      "data directory not found", "no_data")


def test_offline_without_data_dir(cli, tmp_path, tiny_bert_dir):
    # no --data-dir and no PEFTEVAL_DATA_DIR: the hub is tried, and offline that is a clear user error
    proc = cli("run", config(tmp_path, model=str(tiny_bert_dir)), "--out", tmp_path / "out")
    assert_user_error(proc, "could not load nyu-mll/glue", "--data-dir")
    assert not (tmp_path / "out").exists()


def test_malformed_data_row(cli, tmp_path, tiny_bert_dir):
    rows = "".join(f"sentence {i}\t{i % 2}\n" for i in range(5))
    data = write_sst2_layout(tmp_path / "data", train_text="sentence\tlabel\n" + rows + "broken row without label\n")
    proc = cli("run", config(tmp_path, model=str(tiny_bert_dir)), "--out", tmp_path / "out", "--data-dir", data)
    assert_user_error(proc, str(data / "glue" / "SST-2" / "train.tsv") + ":7:", "expected 2 tab-separated columns")
    assert not (tmp_path / "out").exists()


def test_missing_data_file(cli, tmp_path, tiny_bert_dir, small_data):
    (small_data / "advglue" / "dev.json").unlink()
    proc = cli("run", config(tmp_path, model=str(tiny_bert_dir)), "--out", tmp_path / "out", "--data-dir", small_data)
    assert_user_error(proc, "AdvGLUE dev.json not found", str(small_data / "advglue" / "dev.json"))


def test_unknown_methods_filter(cli, tmp_path, tiny_bert_dir, small_data):
    proc = cli("run", config(tmp_path, model=str(tiny_bert_dir)), "--out", tmp_path / "out",
               "--data-dir", small_data, "--methods", "fft,lorra")
    assert_user_error(proc, "--methods", "lorra", "fft, lora")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("seeds", ["0,x", ",", "1.5"])
def test_bad_seeds(cli, tmp_path, tiny_bert_dir, small_data, seeds):
    proc = cli("run", config(tmp_path, model=str(tiny_bert_dir)), "--out", tmp_path / "out",
               "--data-dir", small_data, "--seeds", seeds)
    assert_user_error(proc, "--seeds")
    assert not (tmp_path / "out").exists()


def test_too_few_training_examples(cli, tmp_path, tiny_bert_dir, small_data):
    proc = cli("run", config(tmp_path, model=str(tiny_bert_dir)), "--out", tmp_path / "out",
               "--data-dir", small_data, "--max-train-examples", "1")
    assert_user_error(proc, "only 1 training example(s)")


def test_usage_error_exits_2(cli, tmp_path):
    proc = cli("run", config(tmp_path))  # --out is required without --dry-run
    assert proc.returncode == 2 and "--out" in proc.stderr and "Traceback" not in proc.stderr
    proc = cli("run", config(tmp_path), "--out", tmp_path / "o", "--max-train-examples", "0")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_report_errors(cli, tmp_path):
    assert_user_error(cli("report", tmp_path), "no results store", "pefteval run")
    assert_user_error(cli("report", tmp_path, "--format", "xml"), "--format 'xml'", "markdown, csv, latex")
    from pefteval.store import ResultStore

    ResultStore(tmp_path / "results.sqlite").close()
    assert_user_error(cli("report", tmp_path), "holds no complete trials")


def test_run_without_out_is_a_user_error(cli, tmp_path):
    proc = cli("run", config(tmp_path), "--seeds", "0")
    assert_user_error(proc, "--out", "--dry-run")
    assert proc.stdout == ""
    assert list(tmp_path.iterdir()) == [tmp_path / "exp.yaml"]


def dry_run_lines(proc) -> tuple[list[str], str]:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    *lines, last = proc.stdout.splitlines()
    for line in lines:
        assert LINE.match(line), line
    return lines, last


def test_dry_run_quickstart_matches_plan_trials(cli, tmp_path):
    from pefteval.api import format_plan_line
    from pefteval.config import load_config
    from pefteval.plan import plan_trials

    (tmp_path / "data").mkdir()  # local data source; the dry run never reads it, so an empty folder does
    lines, last = dry_run_lines(cli("run", QUICKSTART, "--dry-run", "--data-dir", tmp_path / "data"))
    trials = plan_trials(load_config(QUICKSTART), "local")
    assert len(trials) == 36 and len(lines) == 36
    assert last == "36 trial(s) planned"
    assert [line.split(" ")[0] for line in lines] == [t.key for t in trials]
    assert lines == [format_plan_line(t) for t in trials]
    first = trials[0]
    assert lines[0] == f"{first.key} sst2 fft seed=0 lr=0.0001 warmup_ratio=0.06 batch_size=16"
    assert {line.split(" ")[2] for line in lines} == {"fft", "lora", "adalora", "prefix", "ia3", "bitfit"}
    assert {line.split(" ")[1] for line in lines} == {"sst2", "rte"}
    # without a data directory the trials are the hub's: other keys, as `run` would use
    hub_lines, _ = dry_run_lines(cli("run", QUICKSTART, "--dry-run"))
    assert [line.split(" ")[0] for line in hub_lines] == [t.key for t in plan_trials(load_config(QUICKSTART), "hub")]
    assert set(hub_lines).isdisjoint(lines)


def test_dry_run_subset_and_overrides(cli, tmp_path):
    from pefteval.config import load_config, parse_config
    from pefteval.plan import plan_trials

    (tmp_path / "data").mkdir()
    lines, last = dry_run_lines(cli("run", QUICKSTART, "--dry-run", "--data-dir", tmp_path / "data",
                                    "--seeds", "0", "--methods", "fft,lora"))
    assert last == "4 trial(s) planned" and len(lines) == 4
    assert [(line.split(" ")[1], line.split(" ")[2], line.split(" ")[3]) for line in lines] == [
        ("sst2", "fft", "seed=0"), ("sst2", "lora", "seed=0"), ("rte", "fft", "seed=0"), ("rte", "lora", "seed=0")]
    full = {t.key for t in plan_trials(load_config(QUICKSTART), "local")}
    assert {line.split(" ")[0] for line in lines} <= full
    # --tasks and --max-train-examples change the resolved trials, hence their keys, exactly as in `run`
    lines, last = dry_run_lines(cli("run", QUICKSTART, "--dry-run", "--data-dir", tmp_path / "data",
                                    "--tasks", "rte", "--max-train-examples", "50", "--seeds", "0"))
    assert last == "6 trial(s) planned"
    raw = load_config(QUICKSTART).model_dump(exclude_unset=True, mode="json")
    raw["tasks"] = ["rte"]
    for section in [raw["data"], *raw["task_data"].values()]:
        section["max_train_examples"] = 50
    expected = plan_trials(parse_config(raw, "test"), "local", seeds=[0])
    assert [line.split(" ")[0] for line in lines] == [t.key for t in expected]
    assert not {t.key for t in expected} & full


def test_dry_run_shows_k_shot(cli, tmp_path):
    path = config(tmp_path, tasks=["sst2", "rte"], data={"k_shot": [4, 8]},
                  training={"epochs": 1, "lr": [1.0e-4, 3.0e-4], "batch_size": 8})
    lines, last = dry_run_lines(cli("run", path, "--dry-run"))
    assert last == "16 trial(s) planned"
    assert [line.split(" ")[1] for line in lines][::4] == ["sst2@k=4", "sst2@k=8", "rte@k=4", "rte@k=8"]
    assert lines[0].endswith(" sst2@k=4 fft seed=0 lr=0.0001 warmup_ratio=0.06 batch_size=8")
    assert lines[1].endswith(" sst2@k=4 fft seed=0 lr=0.0003 warmup_ratio=0.06 batch_size=8")
    # a config without k_shot shows the bare task
    lines, _ = dry_run_lines(cli("run", config(tmp_path), "--dry-run"))
    assert [line.split(" ")[1] for line in lines] == ["sst2", "sst2"]


def test_format_plan_line(tmp_path):
    from pefteval.api import format_plan_line
    from pefteval.config import load_config
    from pefteval.plan import plan_trials

    path = config(tmp_path, seeds=[42], data={"k_shot": 16}, methods=[{"type": "lora", "name": "lora_r8", "r": 8}],
                  training={"epochs": 1, "lr": 2.0e-5, "warmup_ratio": 0.0, "batch_size": 32})
    (trial,) = plan_trials(load_config(path), "hub")
    assert format_plan_line(trial) == f"{trial.key} sst2@k=16 lora_r8 seed=42 lr=2e-05 warmup_ratio=0 batch_size=32"
    path = config(tmp_path, training={"epochs": 1, "lr": 1.0e-3, "warmup_ratio": 0.1, "batch_size": 4})
    fft, lora = plan_trials(load_config(path), "local")
    assert format_plan_line(fft) == f"{fft.key} sst2 fft seed=0 lr=0.001 warmup_ratio=0.1 batch_size=4"
    assert format_plan_line(lora) == f"{lora.key} sst2 lora seed=0 lr=0.001 warmup_ratio=0.1 batch_size=4"


def test_dry_run_clips_top_k_like_run(cli, tmp_path):
    from pefteval.config import load_config
    from pefteval.models import model_depth
    from pefteval.plan import drop_clipped_duplicates, plan_trials

    path = config(tmp_path, methods=[{"type": "fft", "name": "top3", "top_k_layers": 3},
                                     {"type": "fft", "name": "top6", "top_k_layers": 6},
                                     {"type": "fft", "name": "top24", "top_k_layers": 24}])
    proc = cli("run", path, "--dry-run")
    lines, last = dry_run_lines(proc)
    assert [line.split(" ")[2] for line in lines] == ["top3", "top6"]  # MiniLM has 6 blocks: top24 is top6
    assert "notice: top24: top_k_layers 24 is clipped" in proc.stderr
    exp, _ = drop_clipped_duplicates(load_config(path), model_depth("minilm-l6"))
    assert [line.split(" ")[0] for line in lines] == [t.key for t in plan_trials(exp, "hub")]


def test_dry_run_writes_nothing_and_counts_complete(cli, tmp_path):
    from pefteval.config import load_config
    from pefteval.plan import plan_trials
    from pefteval.store import ResultStore

    out = tmp_path / "out"
    lines, last = dry_run_lines(cli("run", QUICKSTART, "--dry-run", "--out", out))
    assert last == "36 trial(s) planned" and len(lines) == 36
    assert not out.exists()
    out.mkdir()
    lines, last = dry_run_lines(cli("run", QUICKSTART, "--dry-run", "--out", out))
    assert last == "36 trial(s) planned" and list(out.iterdir()) == []
    # a store holding some of the planned trials: complete ones are counted, failed ones and others are not
    trials = plan_trials(load_config(QUICKSTART), "hub")
    with ResultStore(out / "results.sqlite") as store:
        for trial in trials[:3]:
            store.put({"key": trial.key, "config": trial.config, "status": "complete", "metrics": {}})
        store.put({"key": trials[3].key, "config": trials[3].config, "status": "failed", "error": "nan"})
        other = {**trials[4].config, "seed": 7}
        store.put({"key": "ffffffffffffffff", "config": other, "status": "complete", "metrics": {}})
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    lines, last = dry_run_lines(cli("run", QUICKSTART, "--dry-run", "--out", out))
    assert last == f"36 trial(s) planned, 3 already complete in {out}"
    assert len(lines) == 36
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    lines, last = dry_run_lines(cli("run", QUICKSTART, "--dry-run", "--out", out, "--seeds", "0"))
    assert last == f"12 trial(s) planned, 1 already complete in {out}"


def test_dry_run_user_errors(cli, tmp_path):
    # the dry run plans through the same checks as `run`: the same messages, exit 2, nothing written
    assert_user_error(cli("run", config(tmp_path, model="no-such-model-xyz"), "--dry-run", "--out", tmp_path / "o"),
                      "unknown model 'no-such-model-xyz'")
    assert_user_error(cli("run", config(tmp_path), "--dry-run", "--methods", "fft,lorra"), "--methods", "lorra")
    assert_user_error(cli("run", config(tmp_path), "--dry-run", "--seeds", "0,x"), "--seeds")
    assert_user_error(cli("run", config(tmp_path), "--dry-run", "--data-dir", tmp_path / "no_data"),
                      "data directory not found")
    assert not (tmp_path / "o").exists()


def test_version(cli):
    from pefteval import __version__

    proc = cli("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"pefteval {__version__}\n"


@pytest.mark.parametrize("args", [(), ("run",), ("report",), ("analyze",), ("list",), ("adversarial",),
                                  ("adversarial", "generate")])
def test_short_help(cli, args):
    short, long = cli(*args, "-h"), cli(*args, "--help")
    assert short.returncode == 0, short.stdout + short.stderr
    assert "Usage:" in short.stdout and "Traceback" not in short.stderr
    assert short.stdout == long.stdout


def test_help_lists_the_new_options(cli):
    assert "--version" in cli("-h").stdout
    assert "--dry-run" in cli("run", "-h").stdout


def test_python_m_pefteval(tmp_path):
    from pefteval import __version__

    def module(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pefteval", *map(str, args)], cwd=REPO_ROOT, env=cli_env(),
                              capture_output=True, text=True, timeout=300)

    proc = module("--version")
    assert proc.returncode == 0 and proc.stdout == f"pefteval {__version__}\n", proc.stderr
    proc = module("list")
    assert proc.returncode == 0 and "Methods:" in proc.stdout, proc.stderr
    proc = module("run", config(tmp_path), "--dry-run")
    assert proc.returncode == 0 and proc.stdout.splitlines()[-1] == "2 trial(s) planned", proc.stderr
    proc = module("run", config(tmp_path))
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "--out" in proc.stderr


def test_help_does_not_import_torch():
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from pefteval.cli import app\n"
        "for args in (['--help'], ['-h'], ['run', '--help'], ['adversarial', 'generate', '--help'], ['--version']):\n"
        "    result = CliRunner().invoke(app, args)\n"
        "    assert result.exit_code == 0, result.output\n"
        "    assert 'Usage' in result.output or 'pefteval ' in result.output, result.output\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'peft', 'datasets', 'pefteval.sweep', 'pefteval.trial')\n"
        "               if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=cli_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_adversarial_cli_does_not_import_cli():
    # pefteval.cli imports pefteval.cli_adversarial to register it, never the other way round
    code = "import sys, pefteval.cli_adversarial; assert 'pefteval.cli' not in sys.modules, sorted(sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=cli_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
