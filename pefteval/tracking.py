"""Experiment trackers: TensorBoard, MLflow and Weights & Biases, one tracker run per trial.

The sweep's driver process is the only writer of the trackers, as it is of the results store: it
feeds them what its progress display gets (``sweep.run_trials``): each trial as it starts, the
events it sends (training steps, epochs), whether it runs forked, under ``accelerate launch`` or
as a Ray task, and its record once the store holds it. A tracker that fails while logging costs
no result: it is reported once and left out for the rest of the sweep. A tracker that cannot be
opened (a missing library, a store that cannot be reached) stops the sweep before any trial runs.

Each tracker's library is optional (``pip install 'pefteval[tensorboard]'``, ``[mlflow]``,
``[wandb]``) and imported only when its tracker opens. Secrets (WANDB_API_KEY,
MLFLOW_TRACKING_TOKEN, MLFLOW_TRACKING_PASSWORD) are read by those libraries from the
environment; nothing here reads, logs or writes them.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import json
import logging
import math
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pefteval.config import TRACKER_NAMES, TrackingConfig
from pefteval.errors import UserError
from pefteval.files import make_dir
from pefteval.plan import Trial

# the modules each tracker needs (its pip extra is named as the tracker); MLflow's local store is
# SQLite, which mlflow-skinny reads and writes through SQLAlchemy and Alembic
REQUIRED_MODULES = {"tensorboard": ("tensorboard",), "mlflow": ("mlflow", "sqlalchemy", "alembic"),
                    "wandb": ("wandb",)}
# MLflow's limits on one log_batch call, and on a tag's or a param's value
MLFLOW_BATCH = {"metrics": 1000, "params": 100, "tags": 100}
MLFLOW_VALUE_CHARS = 5000
MLFLOW_NAME_CHAR = re.compile(r"[^\w./\- :]")  # what MLflow refuses in a metric's or a param's name
# a run's step metrics are written to MLflow at most this often (one SQLite commit, ~30 ms, per batch,
# in the driver, which every trial's events wait on), and whenever an epoch or the trial ends
MLFLOW_FLUSH_SECONDS = 2.0


def install_hint(name: str) -> str:
    return f"pip install 'pefteval[{name}]'"


def parse_track(values: list[str] | None) -> list[str] | None:
    """``--track`` values (repeated, or comma-separated) as tracker names; None when not given (the
    config's list holds), [] for ``none``. An unknown name is a UserError naming the known ones."""
    if not values:
        return None
    names = [n.strip().lower() for v in values for n in v.split(",") if n.strip()]
    if names == ["none"]:
        return []
    for name in names:
        if name not in TRACKER_NAMES:
            close = difflib.get_close_matches(name, TRACKER_NAMES, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise UserError(f"--track {name}: unknown tracker{hint}; choose from {', '.join(TRACKER_NAMES)} "
                            "(repeat --track or separate names by commas; --track none turns tracking off)")
    return list(dict.fromkeys(names))


def check_installed(names: list[str]) -> None:
    """Each tracker's library can be imported; else a UserError naming the extra that installs it."""
    for name in names:
        missing = [m for m in REQUIRED_MODULES[name] if importlib.util.find_spec(m) is None]
        if missing:
            raise UserError(f"tracker {name} needs {', '.join(missing)}, which is not installed here: "
                            f"{install_hint(name)}")


def resolve_tracking(config: TrackingConfig, track: list[str] | None, check: bool = True) -> TrackingConfig:
    """The experiment's tracking settings with ``--track`` (parsed by ``parse_track``) replacing its
    trackers; with ``check``, each tracker's library is installed (before any trial runs)."""
    if track is not None:
        config = config.model_copy(update={"trackers": track})
    if check:
        check_installed(config.trackers)
    return config


def _import(name: str, module: str) -> Any:
    """A tracker's library: imported when its tracker opens (an optional dependency)."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise UserError(f"tracker {name}: {module} cannot be imported ({err}): {install_hint(name)}") from None


# ---------------------------------------------------------------- what a trial's run holds


def run_name(trial: Trial) -> str:
    """The trial's run name in every tracker: its run directory's name (task, method, seed, key)."""
    task = trial.task if trial.k_shot is None else f"{trial.task}-k{trial.k_shot}"
    return f"{task}__{trial.method}__seed{trial.seed}__{trial.key}"


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(item, f"{prefix}.{key}" if prefix else str(key), out)
    elif isinstance(value, (bool, int, float, str)):
        out[prefix] = value
    else:  # None, lists: as JSON text, which every tracker takes
        out[prefix] = json.dumps(value)


def trial_params(trial: Trial) -> dict[str, Any]:
    """The resolved trial config flattened (``training.lr``, ``method.r``, ``data.max_train_examples``,
    ...), with its key, task, method label, seed and model; ``training`` in full (its device too)."""
    out: dict[str, Any] = {}
    _flatten({**trial.config, "training": trial.resolved.training.model_dump(), "key": trial.key}, "", out)
    return out


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def final_metrics(record: dict[str, Any]) -> dict[str, float]:
    """What a trial's record says at its end: ``<split>/<metric>`` for each split's metrics, the
    parameter counts, the times and the peak memory (the fields a record has; a failed trial's few)."""
    out: dict[str, float] = {}
    for split, metrics in (record.get("metrics") or {}).items():
        for name, value in metrics.items():
            if _number(value):
                out[f"{split}/{name}"] = float(value)
    for name in ("trainable", "total"):
        if _number((record.get("params") or {}).get(name)):
            out[f"params/{name}"] = float(record["params"][name])
    for name in ("train_seconds", "eval_seconds", "attack_seconds", "analysis_seconds", "wall_seconds"):
        if _number(record.get(name)):
            out[f"time/{name}"] = float(record[name])
    for name in ("peak_rss_mb", "peak_device_allocated_mb", "peak_device_reserved_mb"):
        if _number(record.get(name)):
            out[f"memory/{name}"] = float(record[name])
    if _number(record.get("best_epoch")):
        out["best_epoch"] = float(record["best_epoch"])
    return out


# ---------------------------------------------------------------- the interface


class Tracker(ABC):
    """What the sweep feeds a tracker, as its progress display: ``start`` when trial ``index``
    starts, ``event`` for each event it sends, ``finish`` with its record (already in the store),
    ``close`` when the sweep ends (however it ends)."""

    name = "tracker"

    @abstractmethod
    def start(self, index: int, trial: Trial) -> None: ...

    @abstractmethod
    def event(self, index: int, event: dict[str, Any]) -> None: ...

    @abstractmethod
    def finish(self, index: int, record: dict[str, Any]) -> None: ...

    @abstractmethod
    def close(self) -> None: ...


@dataclass
class _Run:
    trial: Trial
    handle: Any
    step: int = 0  # the last optimiser step the trial reported


class RunTracker(Tracker):
    """One tracker run per trial. Subclasses open, log to and end a run; this turns the trial's
    events into metrics on one step axis (the optimiser step): ``train/loss`` (the step's own loss)
    and ``train/loss_running_mean`` (the epoch's mean so far) every ``log_every_steps`` steps;
    ``epoch/train_loss``, ``epoch/validation_<metric>`` (the record's curve) and ``epoch`` at each
    epoch's last step; the record's final metrics (``final_metrics``: ``validation/<metric>`` is the
    chosen epoch's) at the trial's last step."""

    def __init__(self, log_every_steps: int = 1):
        self.every = log_every_steps
        self.runs: dict[int, _Run] = {}

    def start(self, index: int, trial: Trial) -> None:
        self.runs[index] = _Run(trial, self.open_run(trial, trial_params(trial)))

    def event(self, index: int, event: dict[str, Any]) -> None:
        run = self.runs.get(index)
        if run is None:
            return
        kind = event.get("event")
        if kind == "step":
            run.step = int(event["step"])
            if run.step % self.every == 0:
                self.log(run.handle, {"train/loss": float(event.get("step_loss", event["loss"])),
                                      "train/loss_running_mean": float(event["loss"])}, run.step)
        elif kind == "epoch":
            self.log(run.handle, {"epoch/train_loss": float(event["train_loss"]),
                                  f"epoch/validation_{event['metric']}": float(event["validation"]),
                                  "epoch": float(event["epoch"])}, run.step)

    def finish(self, index: int, record: dict[str, Any]) -> None:
        run = self.runs.pop(index, None)
        if run is not None:
            self.end_run(run.handle, record, final_metrics(record), run.step)

    def close(self) -> None:
        """End the runs of trials that never finished (Ctrl-C, a sweep stopped by an error)."""
        while self.runs:
            _, run = self.runs.popitem()
            self.abort_run(run.handle)

    @abstractmethod
    def open_run(self, trial: Trial, params: dict[str, Any]) -> Any: ...

    @abstractmethod
    def log(self, handle: Any, metrics: dict[str, float], step: int) -> None: ...

    @abstractmethod
    def end_run(self, handle: Any, record: dict[str, Any], metrics: dict[str, float], step: int) -> None: ...

    @abstractmethod
    def abort_run(self, handle: Any) -> None: ...


def _tags(trial: Trial, experiment: str) -> dict[str, str]:
    tags = {"experiment": experiment, "task": trial.task, "method": trial.method, "seed": str(trial.seed),
            "key": trial.key, "description": trial.describe()}
    if trial.k_shot is not None:
        tags["k_shot"] = str(trial.k_shot)
    return tags


# ---------------------------------------------------------------- TensorBoard


class TensorBoardTracker(RunTracker):
    """Event files in ``ROOT/<run>/`` (``tensorboard --logdir ROOT``): scalars, the trial's config as
    a text table and as the hparams plugin's session (its status set at the end), and the status
    (with a failed trial's error) as text. A trial run again (a failed one redone) replaces its
    event files."""

    name = "tensorboard"

    def __init__(self, root: Path, log_every_steps: int = 1):
        super().__init__(log_every_steps)
        tb = _import(self.name, "torch.utils.tensorboard")
        self.summary = _import(self.name, "torch.utils.tensorboard.summary")
        self.plugin = _import(self.name, "tensorboard.plugins.hparams.plugin_data_pb2")
        self.api = _import(self.name, "tensorboard.plugins.hparams.api_pb2")
        self.writer_class = tb.SummaryWriter
        self.root = make_dir(root)

    def open_run(self, trial: Trial, params: dict[str, Any]) -> Any:
        log_dir = make_dir(self.root / run_name(trial))
        for old in log_dir.glob("events.out.tfevents.*"):
            old.unlink()
        writer = self.writer_class(log_dir=str(log_dir), flush_secs=10)
        rows = "".join(f"| {k} | {v} |\n" for k, v in params.items())
        writer.add_text("config", "| parameter | value |\n|---|---|\n" + rows, 0)
        _, session_start, _ = self.summary.hparams(params, {})
        writer.file_writer.add_summary(session_start, 0)
        return writer

    def log(self, handle: Any, metrics: dict[str, float], step: int) -> None:
        for name, value in metrics.items():
            handle.add_scalar(name, value, step)

    def end_run(self, handle: Any, record: dict[str, Any], metrics: dict[str, float], step: int) -> None:
        self.log(handle, metrics, step)
        status = record["status"]
        handle.add_text("status", status if status == "complete" else f"{status}: {record.get('error', '')}", step)
        self._session_end(handle, "STATUS_SUCCESS" if status == "complete" else "STATUS_FAILURE", step)
        handle.close()

    def abort_run(self, handle: Any) -> None:
        handle.add_text("status", "interrupted: the sweep stopped before this trial ended", 0)
        self._session_end(handle, "STATUS_UNKNOWN", 0)
        handle.close()

    def _session_end(self, writer: Any, status: str, step: int) -> None:
        # what torch's add_hparams writes at a session's end, with the trial's own status
        info = self.plugin.SessionEndInfo(status=self.api.Status.Value(status), end_time_secs=time.time())
        content = self.plugin.HParamsPluginData(session_end_info=info, version=0)
        metadata = self.summary.SummaryMetadata(plugin_data=self.summary.SummaryMetadata.PluginData(
            plugin_name="hparams", content=content.SerializeToString()))
        writer.file_writer.add_summary(self.summary.Summary(value=[self.summary.Summary.Value(
            tag="_hparams_/session_end_info", metadata=metadata)]), step)


# ---------------------------------------------------------------- MLflow


class MlflowTracker(RunTracker):
    """Runs in an MLflow tracking store (default ``sqlite:///OUT/mlflow.db``), in the experiment named
    ``experiment_name``, through ``MlflowClient`` with explicit run ids (several trials' runs are open
    at once under ``--jobs``): params, tags (task, method, seed, key, description), metrics per step
    (written in batches: ``MLFLOW_FLUSH_SECONDS``), the final metrics, and the status FINISHED or
    FAILED (the error as the ``error`` tag)."""

    name = "mlflow"

    def __init__(self, tracking_uri: str, experiment_name: str, experiment: str,
                 artifact_location: str | None = None, log_every_steps: int = 1):
        super().__init__(log_every_steps)
        mlflow = _import(self.name, "mlflow")
        for noisy in ("mlflow", "alembic"):  # "Creating initial MLflow database tables..." on every new store
            logging.getLogger(noisy).setLevel(logging.WARNING)
        self.entities = _import(self.name, "mlflow.entities")
        self.experiment = experiment
        self.uri = tracking_uri
        self.pending: dict[str, list[Any]] = {}  # run id -> metrics not yet written
        self.flushed: dict[str, float] = {}  # run id -> when its metrics were last written
        try:
            self.client = mlflow.MlflowClient(tracking_uri=tracking_uri)
            found = self.client.get_experiment_by_name(experiment_name)
            if found is None:
                self.experiment_id = self.client.create_experiment(
                    experiment_name, artifact_location=artifact_location, tags={"pefteval.experiment": experiment})
            elif found.lifecycle_stage == "deleted":
                raise UserError(f"tracker mlflow: experiment {experiment_name!r} is deleted in {tracking_uri}; "
                                "restore it (mlflow experiments restore) or set tracking.mlflow.experiment_name")
            else:
                self.experiment_id = found.experiment_id
        except UserError:
            raise
        except Exception as err:  # noqa: BLE001 - any failure to reach the store stops the sweep before a trial
            raise UserError(f"tracker mlflow: cannot use the tracking store {tracking_uri}: "
                            f"{type(err).__name__}: {err}") from None

    def open_run(self, trial: Trial, params: dict[str, Any]) -> Any:
        tags = {**_tags(trial, self.experiment), "mlflow.note.content": trial.describe()}
        run = self.client.create_run(self.experiment_id, run_name=run_name(trial), tags=tags)
        run_id = run.info.run_id
        self._batch(run_id, params=[self.entities.Param(_mlflow_name(k), str(v)[:MLFLOW_VALUE_CHARS])
                                    for k, v in params.items()])
        self.pending[run_id], self.flushed[run_id] = [], time.monotonic()
        return run_id

    def log(self, handle: Any, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        pending = self.pending.setdefault(handle, [])
        pending += [self.entities.Metric(_mlflow_name(k), v, now, step) for k, v in metrics.items()]
        if "epoch" in metrics or time.monotonic() - self.flushed.get(handle, 0.0) >= MLFLOW_FLUSH_SECONDS:
            self._flush(handle)

    def _flush(self, run_id: str) -> None:
        metrics, self.pending[run_id] = self.pending.get(run_id, []), []
        self.flushed[run_id] = time.monotonic()
        self._batch(run_id, metrics=metrics)

    def end_run(self, handle: Any, record: dict[str, Any], metrics: dict[str, float], step: int) -> None:
        self.log(handle, metrics, step)
        self._flush(handle)
        self.pending.pop(handle, None)
        complete = record["status"] == "complete"
        tags = [self.entities.RunTag("status", record["status"])]
        if not complete:
            tags.append(self.entities.RunTag("error", str(record.get("error", ""))[:MLFLOW_VALUE_CHARS]))
        self._batch(handle, tags=tags)
        self.client.set_terminated(handle, "FINISHED" if complete else "FAILED")

    def abort_run(self, handle: Any) -> None:
        self._flush(handle)
        self.pending.pop(handle, None)
        self.client.set_terminated(handle, "KILLED")

    def _batch(self, run_id: str, **items: list[Any]) -> None:
        for kind, values in items.items():
            size = MLFLOW_BATCH[kind]
            for i in range(0, len(values), size):
                self.client.log_batch(run_id, **{kind: values[i:i + size]})


def _mlflow_name(name: str) -> str:
    return MLFLOW_NAME_CHAR.sub("_", name)


# ---------------------------------------------------------------- Weights & Biases


class WandbTracker(RunTracker):
    """W&B runs (offline by default: ``OUT/wandb/offline-run-*``, uploaded later by ``wandb sync``),
    project and group the experiment, job type ``trial``, the trial's config, history per step, the
    final metrics, status and a failed trial's error in the summary, exit code 1 for a failed trial.
    Several runs are open at once (``reinit="create_new"``); the sweep's own output is not
    captured (``console="off"``), and no system metrics are sampled."""

    name = "wandb"

    def __init__(self, directory: Path, project: str, group: str, mode: str, entity: str | None = None,
                 log_every_steps: int = 1):
        super().__init__(log_every_steps)
        self.wandb = _import(self.name, "wandb")
        self.directory = make_dir(directory)
        self.project, self.group, self.mode, self.entity = project, group, mode, entity

    def open_run(self, trial: Trial, params: dict[str, Any]) -> Any:
        settings = self.wandb.Settings(console="off", silent=True, x_disable_stats=True, save_code=False)
        return self.wandb.init(project=self.project, entity=self.entity, group=self.group, job_type="trial",
                               name=run_name(trial), notes=trial.describe(), config=params,
                               tags=[trial.task, trial.method, f"seed{trial.seed}"], mode=self.mode,
                               dir=str(self.directory), reinit="create_new", settings=settings)

    def log(self, handle: Any, metrics: dict[str, float], step: int) -> None:
        handle.log(metrics, step=step)

    def end_run(self, handle: Any, record: dict[str, Any], metrics: dict[str, float], step: int) -> None:
        complete = record["status"] == "complete"
        summary: dict[str, Any] = {**metrics, "status": record["status"]}
        if not complete:
            summary["error"] = str(record.get("error", ""))
        handle.summary.update(summary)
        handle.finish(exit_code=0 if complete else 1)

    def abort_run(self, handle: Any) -> None:
        handle.summary.update({"status": "interrupted"})
        handle.finish(exit_code=130)

    def close(self) -> None:
        super().close()
        self.wandb.teardown()  # the wandb-core service this process started


# ---------------------------------------------------------------- the sweep's trackers


@dataclass
class Trackers(Tracker):
    """The trackers of one sweep, fed the same calls. A tracker that raises is reported once (through
    ``say``) and left out for the rest of the sweep: the record is in the store already, so only
    that tracker's view is incomplete."""

    trackers: list[Tracker]
    say: Callable[[str], None] = print
    failed: list[str] = field(default_factory=list)

    name = "trackers"

    def _each(self, call: str, *args: Any) -> None:
        for tracker in list(self.trackers):
            try:
                getattr(tracker, call)(*args)
            except Exception as err:  # noqa: BLE001 - a tracker never costs a trial or the sweep
                self._disable(tracker, err)

    def _disable(self, tracker: Tracker, err: Exception) -> None:
        self.trackers.remove(tracker)
        self.failed.append(tracker.name)
        self.say(f"tracking: {tracker.name} failed ({type(err).__name__}: {err}); it is off for the rest of "
                 "this sweep (the results store is unaffected)")
        try:
            tracker.close()
        except Exception:  # noqa: BLE001 - already reported; what it still holds is let go
            pass

    def start(self, index: int, trial: Trial) -> None:
        self._each("start", index, trial)

    def event(self, index: int, event: dict[str, Any]) -> None:
        self._each("event", index, event)

    def finish(self, index: int, record: dict[str, Any]) -> None:
        self._each("finish", index, record)

    def close(self) -> None:
        self._each("close")


def open_trackers(tracking: TrackingConfig, out_dir: Path, experiment: str,
                  say: Callable[[str], None] = print) -> Trackers | None:
    """The trackers ``tracking`` names, opened (None when it names none). Opening fails as a UserError
    (a library missing, a store that cannot be used) before any trial runs; the ones already opened
    are closed."""
    opened: list[Tracker] = []
    where: list[str] = []
    try:
        for name in tracking.trackers:
            tracker, place = _open_one(name, tracking, out_dir, experiment)
            opened.append(tracker)
            where.append(place)
    except BaseException:
        for tracker in opened:
            tracker.close()
        raise
    if not opened:
        return None
    say(f"tracking: {'; '.join(where)}")
    return Trackers(opened, say)


def _open_one(name: str, tracking: TrackingConfig, out_dir: Path, experiment: str) -> tuple[Tracker, str]:
    every = tracking.log_every_steps
    out_dir = out_dir.resolve()
    if name == "tensorboard":
        root = out_dir / (tracking.tensorboard.log_dir or "tensorboard")
        return TensorBoardTracker(root, every), f"tensorboard in {root}"
    if name == "mlflow":
        settings = tracking.mlflow
        uri = settings.tracking_uri or f"sqlite:///{out_dir / 'mlflow.db'}"
        # artifacts (none are logged) would go to ./mlruns of the current directory by default
        artifacts = (out_dir / "mlartifacts").as_uri() if settings.tracking_uri is None else None
        name_there = settings.experiment_name or experiment
        tracker = MlflowTracker(uri, name_there, experiment, artifacts, every)
        return tracker, f"mlflow experiment {name_there!r} in {uri}"
    settings = tracking.wandb
    project = settings.project or experiment
    tracker = WandbTracker(out_dir, project, experiment, settings.mode, settings.entity, every)
    return tracker, f"wandb {settings.mode}, project {project!r} in {out_dir / 'wandb'}"


class TrackedProgress:
    """The sweep's progress display and its trackers, fed the same calls (``run_trials`` and the
    jobs' ``poll`` call this as they call ``sweep.Progress``). The progress display is fed first;
    a tracker's failure is written through it, so a live block on a terminal stays whole."""

    def __init__(self, progress: Any, trackers: Trackers):
        self.progress, self.trackers = progress, trackers
        # the progress display owns the terminal: its _emit clears and redraws a live block around a line
        trackers.say = lambda text: progress._emit(text, final=True)

    @property
    def running(self) -> dict[int, Any]:
        return self.progress.running

    def start(self, index: int, trial: Trial, where: str = "") -> None:
        self.progress.start(index, trial, where)
        self.trackers.start(index, trial)

    def event(self, index: int, event: dict[str, Any]) -> None:
        self.progress.event(index, event)
        self.trackers.event(index, event)

    def finish(self, index: int, record: dict[str, Any]) -> None:
        self.progress.finish(index, record)
        self.trackers.finish(index, record)

    def close(self) -> None:
        try:
            self.trackers.close()
        finally:
            self.progress.close()


def with_trackers(progress: Any, tracking: TrackingConfig | None, out_dir: Path, experiment: str) -> Any:
    """``progress`` feeding the trackers ``tracking`` names too, opened now; ``progress`` itself when
    it names none or there is no trial to run (a resumed sweep that is complete opens no tracker)."""
    if tracking is None or not tracking.trackers or progress.total == 0:
        return progress
    trackers = open_trackers(tracking, out_dir, experiment, lambda text: progress._emit(text, final=True))
    return progress if trackers is None else TrackedProgress(progress, trackers)
