"""The openai judge backend against a real OpenAI-compatible server: ``transformers serve`` on a
loopback port, serving a tiny LLaMA trained here (seconds) to answer every chat-templated prompt
with exactly "Rating: [[7]]" and end of turn, so that every score is known. A loopback TCP proxy in
front of it drops the first connection (the client's retry must recover) and forwards every later
one byte for byte.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pefteval.config import JudgeConfig
from pefteval.errors import UserError
from pefteval.judging import judge_answers, judge_slug, load_checks, load_judgments
from pefteval.judging.output import FASTCHAT_KEYS, judgment_path
from pefteval.judging.prompts import answer_requests
from pefteval.tasks.mt_bench import (
    answer_row,
    read_judge_prompts,
    read_questions,
    read_reference_answers,
    write_answers,
)
from tests.test_judging import WORDS, chat, mt_bench_data, save_smollm_tokenizer, train_tiny_lm

REPLY = "Rating: [[7]]"
KEY_ENV = "PEFTEVAL_ENDPOINT_TEST_KEY"
KEY = "sk-endpoint-test-9QmZr41xV"  # distinctive: looked for in every file written
QUESTIONS = (81, 111)  # a writing question (single-v1) and a math one (single-math-v1, with references)
SERVER_START_S = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mt_data() -> Path:
    return mt_bench_data()


@pytest.fixture(scope="module")
def judge_dir(mt_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny judge, trained on MT-Bench's own judge prompts (any question, random answers) and on
    random chat messages, to reply "Rating: [[7]]" and end its turn."""
    questions, references = read_questions(mt_data), read_reference_answers(mt_data)
    prompts = read_judge_prompts(mt_data)

    def example(rng: random.Random, tokenizer: Any) -> tuple[str, list[int]]:
        target = tokenizer(REPLY + "<|im_end|>", add_special_tokens=False)["input_ids"]
        if rng.random() < 0.5:
            answer = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 40))) for _ in range(2)]
            question = rng.choice(questions)
            requests, _ = answer_requests("m", {question.question_id: answer}, [question], prompts, references,
                                          lambda name: {"prompt": name})
            request = rng.choice(requests)
            return chat(tokenizer, request.system, request.user), target
        user = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 200)))
        return chat(tokenizer, rng.choice(["You are a helpful assistant.", "judge"]), user), target

    tokenizer_dir = save_smollm_tokenizer(tmp_path_factory.mktemp("smollm2_tokenizer"))
    return train_tiny_lm(tokenizer_dir, tmp_path_factory.mktemp("tiny_judge"), example)


def _tail(path: Path, n: int = 3000) -> str:
    return path.read_text(encoding="utf-8", errors="replace")[-n:] if path.is_file() else ""


@pytest.fixture(scope="module")
def server(judge_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """``transformers serve JUDGE_DIR`` on a free loopback port (CPU), up once GET /health answers;
    always killed at teardown."""
    cli = Path(sys.executable).parent / "transformers"
    if not cli.is_file():
        pytest.skip("the transformers CLI is not installed beside this Python")
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    with open(log, "wb") as sink:
        proc = subprocess.Popen([str(cli), "serve", str(judge_dir), "--host", "127.0.0.1", "--port", str(port),
                                 "--device", "cpu"], stdout=sink, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"transformers serve exited with {proc.returncode}:\n{_tail(log)}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"transformers serve did not answer /health in {SERVER_START_S}s:\n{_tail(log)}")
            time.sleep(0.25)
        yield {"port": port, "model": str(judge_dir), "log": log}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


class DropFirstProxy:
    """A loopback TCP proxy to ``upstream``: it accepts the first connection and closes it at once
    (a server that vanished mid-request), and forwards every later one byte for byte."""

    def __init__(self, upstream: int):
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.dropped = 0
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            if self.connections == 1:
                self.dropped += 1
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (sink, source):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop = True
        self.listener.close()


@pytest.fixture
def proxy(server: dict[str, Any]) -> Iterator[DropFirstProxy]:
    p = DropFirstProxy(server["port"])
    yield p
    p.close()


def _judge(port: int, model: str, **kw: Any) -> JudgeConfig:
    settings = {"backend": "openai", "model": model, "base_url": f"http://127.0.0.1:{port}/v1", "api_key_env": KEY_ENV,
                "max_new_tokens": 16, "max_concurrency": 2, "max_retries": 3, "timeout_s": 60, "sanity_questions": 1}
    return JudgeConfig(**{**settings, **kw})


def _answers(path: Path) -> Path:
    write_answers(path, [answer_row(q, "trial-x", [f"An answer to {q}.", f"A follow-up on {q}."], tstamp=1.0)
                         for q in QUESTIONS])
    return path


def test_judging_through_transformers_serve(server: dict[str, Any], proxy: DropFirstProxy, mt_data: Path,
                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    judge = _judge(proxy.port, server["model"])
    out = tmp_path / "out"
    said: list[str] = []
    summary = judge_answers(out, [("trial-x", _answers(tmp_path / "answers.jsonl"))], judge, mt_data, said.append)

    assert (summary.judged, summary.cached, summary.unrated, summary.check_judged) == (4, 0, 0, 3)
    assert proxy.dropped == 1 and proxy.connections >= 2  # the first connection died; the retry got through
    lines = load_judgments(out)
    assert sorted((r["question_id"], r["turn"]) for r in lines) == [(q, t) for q in QUESTIONS for t in (1, 2)]
    for line in lines:
        assert set(FASTCHAT_KEYS) <= set(line)
        assert (line["judgment"], line["score"], line["attempts"]) == (REPLY, 7.0, 1)
        assert line["judge"] == [server["model"], line["judge_info"]["prompt"]]
        assert line["judge_info"]["host"] == f"127.0.0.1:{proxy.port}"
    assert {r["judge"][1] for r in lines} == {"single-v1", "single-v1-multi-turn", "single-math-v1",
                                              "single-math-v1-multi-turn"}
    check = load_checks(out)[judge_slug(judge)]
    # a judge that rates everything 7 cannot tell good answers from bad ones
    assert check["means"] == {"reference": 7.0, "empty": 7.0, "off_topic": 7.0}
    assert check["verdict"] == "cannot tell" and summary.verdict == "cannot tell"

    written = [p for p in out.rglob("*") if p.is_file()]
    assert judgment_path(out, judge_slug(judge)) in written
    for path in written:
        assert KEY.encode() not in path.read_bytes(), path
    assert KEY not in "\n".join(said) + json.dumps(summary.to_dict())

    seen = proxy.connections
    again = judge_answers(out, [("trial-x", tmp_path / "answers.jsonl")], judge, mt_data, said.append)
    assert (again.judged, again.cached, again.check_judged) == (0, 4, 0)
    assert proxy.connections == seen  # nothing new: not one request sent


def test_a_model_the_server_does_not_serve_is_a_user_error(server: dict[str, Any], mt_data: Path,
                                                          tmp_path: Path) -> None:
    judge = _judge(server["port"], "no-such-judge", max_retries=0)
    with pytest.raises(UserError) as err:
        judge_answers(tmp_path / "out", [("trial-x", _answers(tmp_path / "a.jsonl"))], judge, mt_data,
                      lambda text: None)
    assert f"127.0.0.1:{server['port']}" in str(err.value) and "'no-such-judge'" in str(err.value)


def test_an_unreachable_endpoint_is_a_user_error_naming_its_host(mt_data: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    port = free_port()  # bound and released: nothing listens there
    judge = _judge(port, "any-judge", max_retries=0, timeout_s=10)
    with pytest.raises(UserError, match=rf"cannot reach the judge endpoint 127\.0\.0\.1:{port} \(model 'any-judge'\)"
                       ) as err:
        judge_answers(tmp_path / "out", [("trial-x", _answers(tmp_path / "a.jsonl"))], judge, mt_data,
                      lambda text: None)
    assert KEY not in str(err.value)
    assert load_judgments(tmp_path / "out") == []
