"""Experiment trackers (pefteval/tracking.py) on real sweeps of the tiny BERT: what TensorBoard's event
files, the MLflow store and W&B's offline run files hold, read back with each library's own reader,
is what the results store holds; a resumed sweep opens no run for a complete trial; no secret from
the environment reaches a file; an unknown or uninstalled tracker is exit 2 naming the fix."""

from __future__ import annotations

import json
import math
import os
import sqlite3
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import REPO_ROOT, cli_env, run_cli, write_sst2_layout

TRAINING = {"epochs": 2, "batch_size": 8, "max_seq_length": 32, "lr": 1e-3, "precision": "fp32"}
BROKEN = {"type": "peft", "name": "broken", "peft_type": "LOHA", "kwargs": {"no_such_option": 1}}
SECRETS = {"WANDB_API_KEY": "wandb-secret-7f3a91", "MLFLOW_TRACKING_TOKEN": "mlflow-token-5c2e08",
           "MLFLOW_TRACKING_PASSWORD": "mlflow-password-9d4b17"}


def write_config(path: Path, model: Path, **cfg: Any) -> Path:
    full = {"name": "tracked", "model": str(model), "tasks": ["sst2"], "seeds": [0], "training": TRAINING,
            "methods": [{"type": "lora"}, BROKEN], **cfg}
    path.write_text(yaml.safe_dump(full, sort_keys=False))
    return path


def store_records(out: Path) -> dict[str, dict[str, Any]]:
    """method label -> its record in results.sqlite"""
    conn = sqlite3.connect(out / "results.sqlite")
    try:
        return {m: json.loads(r) for m, r in conn.execute("SELECT method, record FROM trials")}
    finally:
        conn.close()


def flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        return {k: v for key, item in value.items()
                for k, v in flat(item, f"{prefix}.{key}" if prefix else key).items()}
    return {prefix: value}


def run_name(record: dict[str, Any]) -> str:
    return Path(record["run_dir"]).name  # runs/<task>__<method>__seed<seed>__<key>


def expected_steps(record: dict[str, Any]) -> int:
    return math.ceil(record["train_features"] / TRAINING["batch_size"]) * TRAINING["epochs"]


def final_of(record: dict[str, Any]) -> dict[str, float]:
    out = {f"{split}/{name}": v for split, m in record["metrics"].items() for name, v in m.items()}
    out.update({"params/trainable": record["params"]["trainable"], "params/total": record["params"]["total"],
                "time/train_seconds": record["train_seconds"], "time/eval_seconds": record["eval_seconds"],
                "memory/peak_rss_mb": record["peak_rss_mb"]})
    return out


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, tiny_bert_dir):
    """One sweep with all three trackers, two trials at once: a LoRA trial (2 epochs) and a trial
    that fails (bad peft kwargs), with secrets in the environment; then the complete trial again,
    with --track mlflow."""
    root = tmp_path_factory.mktemp("tracked")
    data = write_sst2_layout(root / "data", n_train=32, n_dev=16, n_adv=8)
    cfg = write_config(root / "exp.yaml", tiny_bert_dir, tracking={"trackers": ["tensorboard", "mlflow", "wandb"]})
    out = root / "out"
    with pytest.MonkeyPatch.context() as patch:
        for name, secret in SECRETS.items():  # run_cli passes this process's environment on
            patch.setenv(name, secret)
        first = run_cli("run", cfg, "--out", out, "--data-dir", data, "--threads", "1", "--jobs", "2")
        records = store_records(out)
        tensorboard_files = sorted(p.name for p in (out / "tensorboard").rglob("events.out.tfevents.*"))
        again = run_cli("run", cfg, "--out", out, "--data-dir", data, "--threads", "1", "--methods", "lora",
                        "--track", "mlflow")
    return {"out": out, "first": first, "again": again, "records": records, "tensorboard_files": tensorboard_files}


@pytest.mark.integration
def test_sweep_runs_with_every_tracker(sweep):
    first = sweep["first"]
    assert first.returncode == 1, first.stderr[-3000:]  # one trial failed
    assert "ran 1 trial(s), skipped 0 already complete, 1 failed" in first.stderr
    assert f"tracking: tensorboard in {sweep['out'] / 'tensorboard'}" in first.stderr
    assert "tracking: " in first.stderr and "failed (" not in first.stderr  # no tracker was disabled
    records = sweep["records"]
    assert records["lora"]["status"] == "complete" and records["broken"]["status"] == "failed"


@pytest.mark.integration
def test_tensorboard_event_files_hold_the_records(sweep):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    out, records = sweep["out"], sweep["records"]
    lora = records["lora"]
    acc = EventAccumulator(str(out / "tensorboard" / run_name(lora)), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    losses = acc.Scalars("train/loss")
    steps = expected_steps(lora)
    assert [e.step for e in losses] == list(range(1, steps + 1))
    assert all(math.isfinite(e.value) and e.value > 0 for e in losses)
    # validation per epoch is the record's curve, at each epoch's last step
    assert [e.value for e in acc.Scalars("epoch/validation_accuracy")] == pytest.approx(
        [c["validation_accuracy"] for c in lora["curve"]], abs=1e-6)
    assert [e.value for e in acc.Scalars("epoch/train_loss")] == pytest.approx(
        [c["train_loss"] for c in lora["curve"]], rel=1e-5)
    assert [e.step for e in acc.Scalars("epoch/train_loss")] == [steps // 2, steps]
    # the epoch's running mean at its last step is the epoch's train loss
    running = {e.step: e.value for e in acc.Scalars("train/loss_running_mean")}
    assert [running[steps // 2], running[steps]] == pytest.approx([c["train_loss"] for c in lora["curve"]], rel=1e-5)
    for name, value in final_of(lora).items():
        (event,) = acc.Scalars(name)
        assert event.value == pytest.approx(value, rel=1e-6), name
        assert event.step == steps
    # the config as the hparams plugin's session, and the session's end status
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["key"].string_value == lora["key"]
    assert start.hparams["training.lr"].number_value == pytest.approx(TRAINING["lr"])
    assert start.hparams["method_label"].string_value == "lora"
    assert start.hparams["method.r"].number_value == lora["config"]["method"]["r"]
    assert start.hparams["seed"].number_value == 0
    end = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_end_info"]).session_end_info
    assert end.status == api_pb2.STATUS_SUCCESS
    # the failed trial: its run says so, with the error
    broken = records["broken"]
    acc = EventAccumulator(str(out / "tensorboard" / run_name(broken)))
    acc.Reload()
    (status,) = acc.Tensors("status/text_summary")
    assert status.tensor_proto.string_val[0].decode() == f"failed: {broken['error']}"
    end = plugin_data_pb2.HParamsPluginData.FromString(
        acc.PluginTagToContent("hparams")["_hparams_/session_end_info"]).session_end_info
    assert end.status == api_pb2.STATUS_FAILURE
    assert "train/loss" not in acc.Tags()["scalars"]


@pytest.mark.integration
def test_mlflow_runs_hold_the_records(sweep):
    import mlflow
    from mlflow import MlflowClient

    out, records = sweep["out"], sweep["records"]
    uri = f"sqlite:///{out.resolve() / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["tracked"], output_format="list")
    by_name: dict[str, list[Any]] = {}
    for run in runs:
        by_name.setdefault(run.info.run_name, []).append(run)
    lora, broken = records["lora"], records["broken"]
    assert sorted((name, len(r)) for name, r in by_name.items()) == sorted(
        [(run_name(lora), 1), (run_name(broken), 1)])
    (run,) = by_name[run_name(lora)]
    assert run.info.status == "FINISHED"
    expected = {k: str(v) for k, v in flat(lora["config"]).items() if v is not None and not isinstance(v, list)}
    assert expected.items() <= run.data.params.items()
    assert run.data.params["key"] == lora["key"]
    assert run.data.tags["task"] == "sst2" and run.data.tags["method"] == "lora" and run.data.tags["seed"] == "0"
    assert run.data.tags["status"] == "complete"
    for name, value in final_of(lora).items():
        assert run.data.metrics[name] == pytest.approx(value, rel=1e-6), name
    client = MlflowClient(uri)
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert sorted(m.step for m in history) == list(range(1, expected_steps(lora) + 1))
    validation = sorted(client.get_metric_history(run.info.run_id, "epoch/validation_accuracy"), key=lambda m: m.step)
    assert [m.value for m in validation] == pytest.approx([c["validation_accuracy"] for c in lora["curve"]])
    (run,) = by_name[run_name(broken)]
    assert run.info.status == "FAILED" and run.data.tags["status"] == "failed"
    assert run.data.tags["error"] == broken["error"]
    assert "train/loss" not in run.data.metrics


@pytest.mark.integration
def test_resumed_sweep_opens_no_run_for_complete_trials(sweep):
    again, out = sweep["again"], sweep["out"]
    assert again.returncode == 0, again.stderr[-3000:]
    assert "ran 0 trial(s), skipped 1 already complete, 0 failed" in again.stderr
    assert "tracking:" not in again.stderr  # nothing to run: no tracker was opened
    # (test_mlflow_runs_hold_the_records: still one run per trial)
    assert sorted(p.name for p in (out / "tensorboard").rglob("events.out.tfevents.*")) == sweep["tensorboard_files"]
    assert len(list((out / "wandb").glob("offline-run-*"))) == 2


def wandb_records(path: Path) -> list[Any]:
    """The records of a W&B run's transaction log (run-<id>.wandb: LevelDB's log format, 32 KiB blocks
    of CRC-checked chunks), as wandb's own protobuf Record. wandb 0.31 ships no reader of it."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert struct.unpack("<4sHB", data[:7]) == (b":W&B", 0xBEE1, 0)
    records, pos, pending = [], 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF == crc
        pos += 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def wandb_run(run_dir: Path) -> dict[str, Any]:
    records = wandb_records(next(run_dir.glob("run-*.wandb")))
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    summary: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    for r in records:
        kind = r.WhichOneof("record_type")
        if kind == "summary":
            for item in r.summary.update:
                summary["/".join(item.nested_key) or item.key] = json.loads(item.value_json)
        elif kind == "history":
            history.append({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in r.history.item})
    exit_code = next(r.exit.exit_code for r in records if r.WhichOneof("record_type") == "exit")
    config = {u.key: json.loads(u.value_json) for u in run.config.update if u.key != "_wandb"}
    return {"run": run, "config": config, "summary": summary, "history": history, "exit_code": exit_code}


@pytest.mark.integration
def test_wandb_offline_runs_hold_the_records(sweep):
    out, records = sweep["out"], sweep["records"]
    runs = {r["run"].display_name: r for r in map(wandb_run, (out / "wandb").glob("offline-run-*"))}
    lora, broken = records["lora"], records["broken"]
    assert set(runs) == {run_name(lora), run_name(broken)}
    run = runs[run_name(lora)]
    assert run["run"].project == "tracked" and run["run"].run_group == "tracked"
    assert list(run["run"].tags) == ["sst2", "lora", "seed0"]
    expected = {k: v for k, v in flat(lora["config"]).items() if v is not None and not isinstance(v, list)}
    assert expected.items() <= run["config"].items()
    assert run["config"]["key"] == lora["key"]
    for name, value in final_of(lora).items():
        assert run["summary"][name] == pytest.approx(value, rel=1e-6), name
    assert run["summary"]["status"] == "complete" and run["exit_code"] == 0
    losses = [h for h in run["history"] if "train/loss" in h]
    assert [h["_step"] for h in losses] == list(range(1, expected_steps(lora) + 1))
    validation = [h["epoch/validation_accuracy"] for h in run["history"] if "epoch/validation_accuracy" in h]
    assert validation == pytest.approx([c["validation_accuracy"] for c in lora["curve"]])
    failed = runs[run_name(broken)]
    assert failed["summary"]["status"] == "failed" and failed["summary"]["error"] == broken["error"]
    assert failed["exit_code"] == 1


@pytest.mark.integration
def test_no_secret_reaches_a_file(sweep):
    out = sweep["out"]
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in files) and (out / "mlflow.db").is_file()
    for path in files:
        data = path.read_bytes()
        for name, secret in SECRETS.items():
            assert secret.encode() not in data, f"{name} written to {path}"
    for proc in (sweep["first"], sweep["again"]):
        for secret in SECRETS.values():
            assert secret not in proc.stdout + proc.stderr


# ---------------------------------------------------------------- refused before any trial runs


def test_unknown_track_name_is_exit_2(tmp_path, tiny_bert_dir):
    cfg = write_config(tmp_path / "exp.yaml", tiny_bert_dir)
    proc = run_cli("run", cfg, "--out", tmp_path / "out", "--track", "tensorboard,tensorbord")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "--track tensorbord: unknown tracker (did you mean tensorboard?); choose from tensorboard, mlflow, wandb" \
        in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()


def test_uninstalled_tracker_is_exit_2_naming_the_extra(tmp_path, tiny_bert_dir):
    # a wandb that cannot be imported shadows the installed one (as in an environment without it)
    shim = tmp_path / "shim" / "wandb"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('No module named wandb')\n")
    data = write_sst2_layout(tmp_path / "data", n_train=16, n_dev=8, n_adv=4)
    cfg = write_config(tmp_path / "exp.yaml", tiny_bert_dir, tracking=["tensorboard"])
    env = cli_env()
    env["PYTHONPATH"] = str(tmp_path / "shim") + os.pathsep + env["PYTHONPATH"]
    proc = subprocess.run([sys.executable, "-m", "pefteval.cli", "run", str(cfg), "--out", str(tmp_path / "out"),
                           "--data-dir", str(data), "--track", "tensorboard", "--track", "wandb"],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "tracker wandb: wandb cannot be imported (No module named wandb): pip install 'pefteval[wandb]'" \
        in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "runs").exists()  # no trial ran
    assert not list((tmp_path / "out").rglob("events.out.tfevents.*"))  # the tracker opened first was closed unused


def test_missing_library_is_named_with_its_extra(monkeypatch):
    import importlib.util

    from pefteval import tracking
    from pefteval.errors import UserError

    real = importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name: None if name == "alembic" else real(name))
    tracking.check_installed(["tensorboard", "wandb"])
    with pytest.raises(UserError, match=r"tracker mlflow needs alembic, which is not installed here: "
                                        r"pip install 'pefteval\[mlflow\]'"):
        tracking.check_installed(["tensorboard", "mlflow"])


def test_track_option_parsing():
    from pefteval.errors import UserError
    from pefteval.tracking import parse_track

    assert parse_track(None) is None
    assert parse_track(["mlflow"]) == ["mlflow"]
    assert parse_track(["tensorboard,wandb", "mlflow", "wandb"]) == ["tensorboard", "wandb", "mlflow"]
    assert parse_track(["none"]) == []
    with pytest.raises(UserError, match="--track ml: unknown tracker"):
        parse_track(["ml"])


# ---------------------------------------------------------------- the config section


def _exp(**cfg: Any) -> dict[str, Any]:
    return {"name": "t", "model": "minilm-l6", "tasks": ["sst2"], "methods": [{"type": "lora"}], **cfg}


def test_tracking_config_forms_and_errors():
    from pefteval.config import parse_config
    from pefteval.errors import ConfigError

    assert parse_config(_exp()).tracking.trackers == []
    assert parse_config(_exp(tracking=["tensorboard", "wandb"])).tracking.trackers == ["tensorboard", "wandb"]
    assert parse_config(_exp(tracking="mlflow")).tracking.trackers == ["mlflow"]
    full = parse_config(_exp(tracking={"trackers": "wandb", "log_every_steps": 5, "wandb": {"mode": "online"},
                                       "mlflow": {"tracking_uri": "http://127.0.0.1:5000"}})).tracking
    assert (full.trackers, full.log_every_steps, full.wandb.mode, full.mlflow.tracking_uri) == (
        ["wandb"], 5, "online", "http://127.0.0.1:5000")
    for tracking, needle in [
        ({"trackers": ["tensorbord"]}, "tracking.trackers[0]: Input should be 'tensorboard', 'mlflow' or 'wandb'"),
        (["mlflow", "mlflow"], "tracking.trackers: each tracker once"),
        ({"log_every_steps": 0}, "tracking.log_every_steps: Input should be greater than or equal to 1"),
        ({"mlflow": {"uri": "x"}}, "tracking.mlflow.uri: unknown field 'uri'; allowed fields here: tracking_uri, "
                                   "experiment_name"),
        ({"wandb": {"mode": "disabled"}}, "tracking.wandb.mode: Input should be 'offline' or 'online'"),
        ({"mlflow": {"tracking_uri": "https://me:hunter2@mlflow.example"}},
         "tracking.mlflow.tracking_uri: the tracking URI holds a password"),
    ]:
        with pytest.raises(ConfigError) as err:
            parse_config(_exp(tracking=tracking), "exp.yaml")
        assert needle in str(err.value), str(err.value)
        assert "hunter2" not in str(err.value).split("(got")[0]


def test_tracking_is_not_part_of_any_key():
    from pefteval.config import parse_config
    from pefteval.plan import plan_trials

    plain = plan_trials(parse_config(_exp(seeds=[0, 1])), "local")
    tracked = plan_trials(parse_config(_exp(seeds=[0, 1], tracking={"trackers": ["tensorboard", "mlflow"],
                                                                     "log_every_steps": 3})), "local")
    assert [t.key for t in tracked] == [t.key for t in plain] and len(plain) == 2


# ---------------------------------------------------------------- events to metrics, and a tracker that fails


class _Recorded:
    def __init__(self):
        self.calls: list[tuple[str, Any]] = []


def _recording_tracker(every: int):
    from pefteval.tracking import RunTracker

    class Recording(RunTracker):
        name = "recording"

        def __init__(self):
            super().__init__(every)
            self.logged: list[tuple[int, dict[str, float]]] = []
            self.ended: list[tuple[str, dict[str, float], int]] = []

        def open_run(self, trial, params):
            return params

        def log(self, handle, metrics, step):
            self.logged.append((step, metrics))

        def end_run(self, handle, record, metrics, step):
            self.ended.append((record["status"], metrics, step))

        def abort_run(self, handle):
            self.ended.append(("aborted", {}, -1))

    return Recording()


def _trial():
    from pefteval.config import parse_config
    from pefteval.plan import plan_trials

    return plan_trials(parse_config(_exp(seeds=[0])), "local")[0]


def _steps(epochs: int, per_epoch: int) -> list[dict[str, Any]]:
    events, step = [], 0
    for epoch in range(1, epochs + 1):
        for _ in range(per_epoch):
            step += 1
            events.append({"event": "step", "epoch": epoch, "epochs": epochs, "step": step,
                           "total_steps": epochs * per_epoch, "loss": 1.0 / step, "step_loss": 2.0 / step})
        events.append({"event": "epoch", "epoch": epoch, "epochs": epochs, "train_loss": 0.5 / epoch,
                       "validation": 0.25 * epoch, "metric": "accuracy"})
    return events


def test_events_become_metrics_every_n_steps():
    tracker = _recording_tracker(every=2)
    trial = _trial()
    tracker.start(3, trial)
    for event in [*_steps(epochs=2, per_epoch=3), {"event": "evaluate"}]:
        tracker.event(3, event)
    losses = [(s, m["train/loss"]) for s, m in tracker.logged if "train/loss" in m]
    assert losses == [(2, 1.0), (4, 0.5), (6, 2.0 / 6)]
    epochs = [(s, m) for s, m in tracker.logged if "epoch" in m]
    assert epochs == [(3, {"epoch/train_loss": 0.5, "epoch/validation_accuracy": 0.25, "epoch": 1.0}),
                      (6, {"epoch/train_loss": 0.25, "epoch/validation_accuracy": 0.5, "epoch": 2.0})]
    record = {"status": "complete", "metrics": {"test": {"accuracy": 0.75, "n": 8}, "advglue": {"accuracy": 0.5}},
              "params": {"trainable": 10, "total": 100}, "train_seconds": 1.5, "eval_seconds": 0.5,
              "peak_rss_mb": 300.0, "peak_device_allocated_mb": 12.0, "best_epoch": 2, "notes": ["x"]}
    tracker.finish(3, record)
    ((status, final, step),) = tracker.ended
    assert (status, step) == ("complete", 6)
    assert final == {"test/accuracy": 0.75, "test/n": 8.0, "advglue/accuracy": 0.5, "params/trainable": 10.0,
                     "params/total": 100.0, "time/train_seconds": 1.5, "time/eval_seconds": 0.5,
                     "memory/peak_rss_mb": 300.0, "memory/peak_device_allocated_mb": 12.0, "best_epoch": 2.0}
    # a trial still running when the sweep ends: its run is ended as aborted
    tracker.start(4, trial)
    tracker.close()
    assert tracker.ended[-1][0] == "aborted" and not tracker.runs


def test_trial_params_are_the_flattened_resolved_config():
    from pefteval.tracking import trial_params

    trial = _trial()
    params = trial_params(trial)
    assert params["key"] == trial.key and params["task"] == "sst2" and params["method_label"] == "lora"
    assert params["seed"] == 0 and params["model"] == "minilm-l6"
    assert params["training.lr"] == trial.resolved.training.lr and params["method.r"] == 8
    assert params["training.device"] == "auto"  # the full training settings, runtime ones too
    assert params["method.target_modules"] == "null" and params["data.attack.seed"] == 0
    assert all(isinstance(v, (bool, int, float, str)) for v in params.values())


def test_a_failing_tracker_is_reported_once_and_left_out(capsys):
    from pefteval.sweep import Progress
    from pefteval.tracking import TrackedProgress, Trackers

    class Failing(_Recorded):
        name = "failing"

        def start(self, index, trial):
            self.calls.append(("start", index))

        def event(self, index, event):
            raise OSError("disk full")

        def finish(self, index, record):
            self.calls.append(("finish", index))

        def close(self):
            self.calls.append(("close", None))

    good = _recording_tracker(every=1)
    bad = Failing()
    lines: list[str] = []
    progress = Progress(1, sys.stderr, 1)
    watched = TrackedProgress(progress, Trackers([bad, good], lines.append))
    trial = _trial()
    watched.start(1, trial)
    assert 1 in watched.running
    for event in _steps(epochs=1, per_epoch=2):
        watched.event(1, event)
    watched.finish(1, {"status": "failed", "error": "boom"})
    watched.close()
    err = capsys.readouterr().err
    assert err.count("tracking: failing failed (OSError: disk full); it is off for the rest of this sweep") == 1
    assert "[trial 1/1] FAILED: boom" in err  # the progress display got everything
    assert bad.calls == [("start", 1), ("close", None)]  # closed once, when it was left out
    assert len([m for _, m in good.logged if "train/loss" in m]) == 2 and good.ended[0][0] == "failed"
    assert lines == []  # TrackedProgress writes through the progress display
