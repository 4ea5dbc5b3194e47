"""Hostile inputs, end to end: every case of the "no silent damage" probe run through the real
command line, each printed as one JSON line (exit status, traceback or not, what it said).

The cases: a disk that fills during a trial (a 3 MB tmpfs) and the re-run once there is room; a
complete trial whose run directory was deleted; a data file that changed (refused, then
``--accept-data-change``); config and data files that are not UTF-8, a BOM, a directory where a
data file should be; ``--out`` that is a file, under a file, on a read-only file system, and
``report`` there; a corrupt and a truncated ``results.sqlite``; a seed of 2**64; a disk with no
space at all; ``lr: .inf``, ``lr: .nan``, ``epochs: true``, ``--seeds 0,0``; a model directory with
only pickle weights, one whose ``auto_map`` needs custom code; AdaLoRA with one optimiser step;
Ctrl-C 0.3 s and 1.5 s into the first trial (while the fork server imports); SIGKILL and what it
leaves in ``$TMPDIR``. (The SQL sandbox's bounds have their own figures:
``python tests/test_sql_bounds.py pefteval/tasks/sql/sandbox.py 5``.)

Needs root (tmpfs mounts), the packaged MiniLM tokenizer and a few minutes. ``--checkout DIR`` runs
another checkout's pefteval (e.g. ``git worktree add /tmp/old HEAD~5``) for a before/after table::

    sudo .venv/bin/python benchmarks/hostile_inputs.py --json after.json
    sudo .venv/bin/python benchmarks/hostile_inputs.py --checkout /tmp/old --json before.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
CLI_TIMEOUT_S = 600
SAYS_CHARS = 300  # how much of the message a case keeps
INTERRUPT_SAYS_CHARS = 200
TABLE_SAYS_CHARS = 100


@dataclass
class Case:
    """What one hostile input got from the command line."""

    rc: int | None
    traceback: bool
    stderr_lines: int
    says: str
    extra: str = ""

    @classmethod
    def of(cls, proc: subprocess.CompletedProcess[str], extra: str = "") -> Case:
        """Exit status, a traceback on either stream, the non-blank stderr lines and the first message in them
        (an ``error:``, a ``FAILED`` trial or ``interrupted``; else the last line)."""
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        first = next((line for line in lines if line.startswith(("error:", "interrupted")) or "FAILED" in line),
                     lines[-1] if lines else "")
        return cls(rc=proc.returncode, traceback="Traceback" in proc.stderr or "Traceback" in proc.stdout,
                   stderr_lines=len(lines), says=first[:SAYS_CHARS], extra=extra)


def lines_starting(text: str, *prefixes: str) -> str:
    """The lines of ``text`` that start with one of ``prefixes``, joined with `` | ``."""
    return " | ".join(line for line in text.splitlines() if line.startswith(prefixes))


def tiny_model(path: Path) -> Path:
    """A tiny random BERT with the packaged MiniLM tokenizer (FFT's weights: 4 MB)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from pefteval.models import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model("minilm-l6").path)
    config = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, type_vocab_size=2, num_labels=2,
                        pad_token_id=tok.pad_token_id)
    torch.manual_seed(1234)
    BertForSequenceClassification(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def store_rows(path: Path) -> list[str]:
    """``method|status`` of each trial in a results store, in insertion order."""
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT method, status FROM trials ORDER BY rowid")
        return [f"{method}|{status}" for method, status in rows]
    finally:
        conn.close()


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` (created if missing), unmounted however the block ends."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)])


def fill(disk: Path) -> None:
    """Write zeros to ``disk`` until the file system has no room left."""
    with open(disk / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass


def copy_of(src: Path, dst: Path) -> Path:
    """A copy of the tree ``src`` at ``dst``."""
    shutil.copytree(src, dst)
    return dst


class Probe:
    """The fixtures every case starts from (a tiny model, a small SST-2 layout, a base config and a finished
    run in ``done``), the pefteval command line of one checkout, and the cases recorded so far."""

    def __init__(self, checkout: Path, work: Path, write_sst2_layout: Callable[..., Path]) -> None:
        self.root = checkout
        self.work = work
        self.env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
                        OMP_NUM_THREADS="1", PYTHONPATH=str(checkout), TOKENIZERS_PARALLELISM="false")
        self.results: dict[str, Case] = {}
        self.tiny = tiny_model(work / "tiny_bert")
        self.data = write_sst2_layout(work / "data", n_train=64, n_dev=32, n_adv=16)
        self.base = self.config("base")
        self.done = work / "done"
        proc = self.cli("run", self.base, "--out", self.done, "--data-dir", self.data)
        if proc.returncode != 0:
            raise RuntimeError(f"the run every case starts from failed:\n{proc.stderr}")

    def config(self, name: str, **overrides: Any) -> Path:
        """The base config (on the tiny model) with ``overrides`` (dicts merged one level deep), as ``name.yaml``."""
        config: dict[str, Any] = {
            "name": "cases", "model": str(self.tiny), "tasks": ["sst2"], "seeds": [0],
            "training": {"epochs": 1, "batch_size": 16, "max_seq_length": 32, "lr": 1e-3, "precision": "fp32"},
            "methods": [{"type": "fft"}, {"type": "lora"}],
        }
        for key, value in overrides.items():
            merge = isinstance(value, dict) and isinstance(config.get(key), dict)
            config[key] = {**config[key], **value} if merge else value
        path = self.work / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def cli(self, *args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([PYTHON, "-m", "pefteval", *map(str, args)], cwd=self.root, env=env or self.env,
                              capture_output=True, text=True, timeout=CLI_TIMEOUT_S)

    def run(self, out: Path, *args: object) -> subprocess.CompletedProcess[str]:
        """``pefteval run`` of the base config on the base data into ``out``, with ``args`` added."""
        return self.cli("run", self.base, "--out", out, "--data-dir", self.data, *args)

    def record(self, name: str, case: Case) -> None:
        self.results[name] = case
        print(name, json.dumps(asdict(case)), flush=True)

    def start_run(self, out: Path, env: dict[str, str], stderr: Path) -> subprocess.Popen[bytes]:
        """``pefteval run`` on the base config in the background, in its own process group."""
        with open(stderr, "w") as err:
            return subprocess.Popen([PYTHON, "-m", "pefteval", "run", str(self.base), "--out", str(out),
                                     "--data-dir", str(self.data)], cwd=self.root, env=env,
                                    stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)


def wait_for(proc: subprocess.Popen[bytes], stderr: Path, text: str, poll_s: float) -> None:
    """Wait until the background run has printed ``text`` to ``stderr``."""
    while text not in stderr.read_text():
        if proc.poll() is not None and text not in stderr.read_text():
            raise RuntimeError(f"the run ended (exit {proc.returncode}) before printing {text!r}")
        time.sleep(poll_s)


def disk_full(probe: Probe) -> None:
    """A 3 MB disk that fills during a trial, the re-run once there is room, and a disk with no space at all."""
    with tmpfs(probe.work / "disk3m", "3m") as disk:
        out = disk / "out"
        proc = probe.run(out)
        fft = next((out / "runs").glob("sst2__fft__*"))
        probe.record("disk_full_during_trial", Case.of(
            proc, f"rows={store_rows(out / 'results.sqlite')}; fft files={sorted(x.name for x in fft.iterdir())}"))
        subprocess.run(["mount", "-o", "remount,size=20m", str(disk)])
        proc = probe.run(out)
        probe.record("disk_full_rerun_after_space", Case.of(proc, lines_starting(proc.stderr, "ran ")))

    with tmpfs(probe.work / "full", "12m") as disk:
        out = copy_of(probe.done, disk / "out")
        fill(disk)
        proc = probe.run(out, "--seeds", "3")
        tmps = [x.name for x in out.rglob("*") if ".tmp" in x.name]
        probe.record("disk_completely_full", Case.of(proc, f"tmp files left: {tmps}"))


def lost_files(probe: Probe) -> None:
    """A complete trial whose run directory was deleted."""
    out = copy_of(probe.done, probe.work / "lost")
    shutil.rmtree(next((out / "runs").glob("sst2__lora__*")))
    proc = probe.run(out)
    probe.record("complete_row_run_dir_deleted", Case.of(proc, lines_starting(proc.stderr, "ran ", "redoing")))


def changed_data(probe: Probe) -> None:
    """A training file that changed after the run: refused, then accepted with ``--accept-data-change``."""
    out = copy_of(probe.done, probe.work / "datachg")
    data = copy_of(probe.data, probe.work / "data2")
    with open(data / "glue/SST-2/train.tsv", "a") as f:
        f.write("an extra excellent row \t1\n")
    base = ("run", probe.base, "--out", out, "--data-dir", data)
    proc = probe.cli(*base)
    probe.record("data_file_changed", Case.of(proc, lines_starting(proc.stderr, "ran ")))
    proc = probe.cli(*base, "--accept-data-change")
    probe.record("data_file_changed_accepted", Case.of(proc, lines_starting(proc.stderr, "ran ")))


def encodings(probe: Probe) -> None:
    """Config and data files that are not UTF-8, a BOM, and a directory where a data file should be."""
    latin1 = probe.work / "latin1.yaml"
    latin1.write_bytes(probe.base.read_bytes().replace(b"name: cases", b"name: caf\xe9s"))
    probe.record("config_latin1_byte", Case.of(probe.cli("run", latin1, "--out", probe.work / "o1",
                                                         "--data-dir", probe.data)))
    garbage = probe.work / "garbage.yaml"
    garbage.write_bytes(os.urandom(300))
    probe.record("config_binary_garbage", Case.of(probe.cli("run", garbage, "--out", probe.work / "o2",
                                                            "--data-dir", probe.data)))

    def run_on(name: str, data: Path, out: str) -> None:
        probe.record(name, Case.of(probe.cli("run", probe.base, "--out", probe.work / out, "--data-dir", data)))

    data = copy_of(probe.data, probe.work / "data_latin1")
    train = data / "glue/SST-2/train.tsv"
    lines = train.read_bytes().split(b"\n")
    lines[5] = lines[5].replace(b"the", b"th\xe9", 1)
    train.write_bytes(b"\n".join(lines))
    run_on("tsv_latin1_byte", data, "o3")

    data = copy_of(probe.data, probe.work / "data_garbage")
    (data / "advglue/dev.json").write_bytes(os.urandom(500))
    run_on("json_binary_garbage", data, "o4")

    data = copy_of(probe.data, probe.work / "data_bom")
    train = data / "glue/SST-2/train.tsv"
    train.write_bytes(b"\xef\xbb\xbf" + train.read_bytes())
    run_on("tsv_utf8_bom", data, "o5")

    data = copy_of(probe.data, probe.work / "data_dir")
    (data / "glue/SST-2/dev.tsv").unlink()
    (data / "glue/SST-2/dev.tsv").mkdir()
    run_on("directory_instead_of_data_file", data, "o6")


def out_dirs(probe: Probe) -> None:
    """``--out`` that is a file, under a file, on a read-only file system (new and existing), and ``report``
    there."""
    afile = probe.work / "afile"
    afile.write_text("x")
    probe.record("out_is_a_file", Case.of(probe.run(afile)))
    probe.record("out_under_a_file", Case.of(probe.run(afile / "sub")))
    with tmpfs(probe.work / "ro", "20m") as ro:
        shutil.copytree(probe.done, ro / "out")
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        probe.record("out_on_read_only_fs_new", Case.of(probe.run(ro / "new")))
        probe.record("out_on_read_only_fs_existing", Case.of(probe.run(ro / "out", "--seeds", "5")))
        proc = probe.cli("report", ro / "out")
        probe.record("report_on_read_only_dir", Case.of(proc, f"stdout has table: {'| fft' in proc.stdout}"))


def corrupt_stores(probe: Probe) -> None:
    """``run`` and ``report`` on a ``results.sqlite`` overwritten with random bytes, and on one cut in half;
    each records whether the store was left byte for byte as it was."""
    for kind in ("garbage", "truncated"):
        out = copy_of(probe.done, probe.work / f"corrupt_{kind}")
        store = out / "results.sqlite"
        if kind == "garbage":
            store.write_bytes(os.urandom(8192))
        else:
            raw = store.read_bytes()
            store.write_bytes(raw[: len(raw) // 2])
        before = store.read_bytes()
        proc = probe.run(out)
        probe.record(f"store_{kind}_run", Case.of(proc, f"store unchanged: {store.read_bytes() == before}"))
        proc = probe.cli("report", out)
        probe.record(f"store_{kind}_report", Case.of(proc, f"store unchanged: {store.read_bytes() == before}"))


def validation(probe: Probe) -> None:
    """Values the config must refuse (a seed of 2**64, ``lr: .inf``/``.nan``, ``epochs: true``, ``--seeds 0,0``),
    model directories with only pickle weights or with an ``auto_map``, and AdaLoRA with one optimiser step."""
    work, data = probe.work, probe.data
    probe.record("seed_2_pow_64", Case.of(probe.cli("run", probe.config("bigseed", seeds=[2**64]),
                                                    "--out", work / "o7", "--data-dir", data)))

    def lora_case(name: str, config: Path, out: str) -> None:
        proc = probe.cli("run", config, "--out", work / out, "--data-dir", data, "--methods", "lora")
        probe.record(name, Case.of(proc))

    lora_case("lr_inf", probe.config("inf", training={"lr": float("inf")}), "o8")
    lora_case("lr_nan", probe.config("nan", training={"lr": float("nan")}), "o9")
    lora_case("epochs_true", probe.config("booleans", training={"epochs": True}), "o10")
    proc = probe.run(work / "o11", "--seeds", "0,0", "--methods", "lora")
    ran = [line for line in proc.stderr.splitlines() if line.startswith("ran ")]
    probe.record("seeds_0_0", Case.of(proc, f"trials run: {ran}"))

    import torch
    from safetensors.torch import load_file

    pickled = copy_of(probe.tiny, work / "pickle_model")
    torch.save(load_file(pickled / "model.safetensors"), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    lora_case("model_dir_pickle_only", probe.config("pickle", model=str(pickled)), "o12")

    automap = copy_of(probe.tiny, work / "automap_model")
    config = json.loads((automap / "config.json").read_text())
    config.update(model_type="mybert", auto_map={"AutoConfig": "configuration_mybert.MyBertConfig",
                                                 "AutoModelForSequenceClassification": "modeling_mybert.MyBert"})
    (automap / "config.json").write_text(json.dumps(config))
    lora_case("model_dir_auto_map", probe.config("automap", model=str(automap)), "o13")

    ada = probe.config("ada1", methods=[{"type": "adalora"}], training={"batch_size": 64})
    proc = probe.cli("run", ada, "--out", work / "o14", "--data-dir", data, "--max-train-examples", "16")
    probe.record("adalora_one_step", Case.of(proc))


def interrupts(probe: Probe) -> None:
    """Ctrl-C 0.3 s and 1.5 s after the first trial's line (while the fork server imports): what is printed after
    that line; then SIGKILL after the first epoch, and what it leaves in ``$TMPDIR``."""
    stderr = probe.work / "int.err"
    for delay in (0.3, 1.5):
        proc = probe.start_run(probe.work / f"int{delay}", probe.env, stderr)
        wait_for(proc, stderr, "[trial 1/", poll_s=0.02)
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGINT)
        rc = proc.wait()
        time.sleep(0.5)
        text = stderr.read_text()
        after = text.split("[trial 1/2]", 1)[1].splitlines()[1:]
        probe.record(f"ctrl_c_{delay}s_after_first_trial_line", Case(
            rc=rc, traceback="Traceback" in text, stderr_lines=len(after),
            says=(after[-1] if after else "")[:INTERRUPT_SAYS_CHARS], extra=f"leaked warnings: {'leaked' in text}"))

    tmpdir = probe.work / "tmpdir"
    tmpdir.mkdir()
    env = dict(probe.env, TMPDIR=str(tmpdir))

    def left() -> list[str]:
        return sorted(x.name for x in tmpdir.iterdir() if not x.name.startswith("torchinductor"))

    out = probe.work / "killed"
    proc = probe.start_run(out, env, stderr)
    wait_for(proc, stderr, "epoch 1/1 done", poll_s=0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(0.5)
    after_kill = left()
    probe.cli("run", probe.base, "--out", out, "--data-dir", probe.data, env=env)
    probe.record("sigkill_tmpdir", Case(rc=None, traceback=False, stderr_lines=0, says="",
                                        extra=f"after SIGKILL: {after_kill}; after the next run: {left()}"))


def print_table(results: dict[str, Case]) -> None:
    """One row per case: exit status, traceback or not, and the first message (else the extra figure), cut."""
    width = max(len(name) for name in results)
    print(f"\n{'case':{width}}  {'rc':>4}  {'traceback':9}  first message")
    for name, case in results.items():
        message = case.says or case.extra
        if len(message) > TABLE_SAYS_CHARS:
            message = message[: TABLE_SAYS_CHARS - 3] + "..."
        rc = "-" if case.rc is None else str(case.rc)
        print(f"{name:{width}}  {rc:>4}  {'yes' if case.traceback else 'no':9}  {message}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", type=Path, default=REPO_ROOT, metavar="DIR",
                        help="the pefteval checkout to probe (default: this one)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    sys.path.insert(0, str(REPO_ROOT))
    from tests.conftest import write_sst2_layout  # sets the offline and one-thread environment, as the tests do

    work = Path(tempfile.mkdtemp(prefix="hostile-", dir="/tmp"))
    try:
        probe = Probe(args.checkout.resolve(), work, write_sst2_layout)
        for group in (disk_full, lost_files, changed_data, encodings, out_dirs, corrupt_stores, validation,
                      interrupts):
            group(probe)
        if args.json:
            args.json.write_text(json.dumps({name: asdict(case) for name, case in probe.results.items()}, indent=1))
        print_table(probe.results)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
