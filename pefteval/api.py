"""pefteval's Python API; the CLI (pefteval/cli.py) is a thin layer over it.

    import pefteval
    summary = pefteval.run("configs/quickstart.yaml", "out/quickstart", seeds=[0], jobs=2)
    df = pefteval.load_results("out/quickstart")        # one row per trial
    print(pefteval.report("out/quickstart", "markdown"))
    pefteval.judge("out/quick_instruct", backend="openai", model="gpt-4", base_url="https://api.openai.com/v1")

``run`` does what ``pefteval run`` does (plan, sweep, analyses, MT-Bench judging, report) and returns a
``RunSummary``; ``judge`` (re-)judges the MT-Bench answers a run saved;
``load_results`` reads a results directory into a pandas DataFrame; ``report`` renders (and saves)
the comparison; ``export`` writes a trial's model for use without pefteval. Heavy libraries are
imported inside the functions, so that importing this module stays cheap.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import yaml

from pefteval.errors import UserError

if TYPE_CHECKING:
    import pandas

    from pefteval.config import ExperimentConfig
    from pefteval.plan import Trial



@dataclass
class Planned:
    """An experiment as `run` would sweep it: the resolved config, the data directory (None: the hub)
    and its trials."""

    exp: ExperimentConfig
    data_path: Path | None
    trials: list[Trial]
    # the data files (content hashes) and hub datasets (fingerprints) the tasks read, as
    # tasks.base.track_data_reads records them; empty for a dry run, which reads no data
    data_reads: dict[str, str] = field(default_factory=dict)


@dataclass
class RunSummary:
    """What ``run`` did. ``failed``: (trial description, error) per failed trial; ``report``: the
    markdown report (None when nothing is complete yet, or for a dry run: ``report_error`` says
    why); ``plan``: a dry run's planned trials, one line each."""

    out: Path | None
    experiment: str
    planned: int
    completed: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    interrupted: bool = False
    pruned: list[str] = field(default_factory=list)
    report: str | None = None
    report_error: str | None = None
    dry_run: bool = False
    plan: list[str] = field(default_factory=list)
    already_complete: int = 0
    judging: Any = None  # the MT-Bench judging's JudgeSummary (instruction-tuning tasks), None when none ran

    @property
    def ok(self) -> bool:
        """Every planned trial is complete (none failed, not interrupted)."""
        return not self.failed and not self.interrupted


def _say_to(stream: TextIO | None) -> Callable[[str], None]:
    def say(text: str) -> None:
        print(text, file=stream or sys.stderr, flush=True)

    return say


def _csv_list(value: str | None, what: str, cast: Callable[[str], Any] = str) -> list[Any] | None:
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise UserError(f"{what}: give a comma-separated list")
    try:
        return [cast(v) for v in items]
    except ValueError:
        raise UserError(f"{what}: {value!r} is not a comma-separated list of {cast.__name__}s") from None


def _as_list(value: Any, what: str, cast: Callable[[str], Any] = str) -> list[Any] | None:
    """An override given as a list (Python) or a comma-separated string (the CLI)."""
    if value is None:
        return None
    if isinstance(value, str):
        return _csv_list(value, what, cast)
    if isinstance(value, int) and cast is int:
        return [value]
    return [cast(v) if isinstance(v, str) else v for v in value]


def _experiment(config: Any) -> tuple[ExperimentConfig, str]:
    """The experiment of a YAML path, a mapping or an ExperimentConfig, and how errors name it."""
    from pefteval.config import ExperimentConfig, load_config, parse_config

    if isinstance(config, ExperimentConfig):
        return config, f"experiment {config.name}"
    if isinstance(config, Mapping):
        return parse_config(dict(config), "the experiment mapping"), "the experiment mapping"
    if isinstance(config, (str, Path)):
        return load_config(config), str(config)
    raise UserError(f"config: give the path of an experiment YAML, a mapping or an ExperimentConfig, not "
                    f"{type(config).__name__}")


def register_tasks(include_path: Iterable[str | Path] | str | Path | None, config: Any = None) -> list[str]:
    """Register tasks of one's own (docs/tasks.md): the folders of ``include_path`` and the config's
    ``include_path`` (a YAML path's relative to its folder, a mapping's relative to the working
    directory)."""
    from pefteval.config import resolve_include_paths
    from pefteval.tasks.user import register_include_paths

    paths = [include_path] if isinstance(include_path, (str, Path)) else list(include_path or [])
    if isinstance(config, Mapping) and "include_path" in config:
        resolved = resolve_include_paths(config["include_path"], Path.cwd())
        paths += resolved if isinstance(resolved, list) else []
        return register_include_paths(paths)
    return register_include_paths(paths, config if isinstance(config, (str, Path)) else None)


def plan_run(config: Any, data_dir: str | Path | None = None, methods: Any = None, seeds: Any = None,
             max_train_examples: int | None = None, max_eval_examples: int | None = None,
             tasks: Any = None, model: str | None = None, check_data: bool = True,
             device: str | None = None, check_devices: bool = True,
             say: Callable[[str], None] | None = None) -> Planned:
    """The trials of an experiment with these overrides; ``run`` (and `pefteval run`, with or without
    --dry-run, and `pefteval status`) plans here, so their trials (and keys) are the same.
    ``check_data`` loads every task's data first (missing or malformed data is an error before
    anything trains); the dry run skips it."""
    from pefteval.config import parse_config
    from pefteval.device import resolve_device
    from pefteval.models import check_model, model_depth
    from pefteval.plan import drop_clipped_duplicates, plan_trials
    from pefteval.tasks import resolve_data_dir

    say = say or _say_to(None)
    exp, source = _experiment(config)
    raw = exp.model_dump(exclude_unset=True, mode="json")
    if model:
        raw["model"] = model
    if tasks:
        raw["tasks"] = _as_list(tasks, "--tasks")
    if seeds is not None:  # validated as the config's seeds are: distinct, in range
        raw["seeds"] = _as_list(seeds, "--seeds", int)
    if device:  # on every method: a per-method training.device is overridden too
        raw.setdefault("training", {})["device"] = device
        for method in raw.get("methods", []):
            if isinstance(method.get("training"), dict):
                method["training"].pop("device", None)
    # command-line limits apply to every task, overriding per-task settings
    for section in [raw.setdefault("data", {}), *raw.get("task_data", {}).values()]:
        if max_train_examples:
            section["max_train_examples"] = max_train_examples
        if max_eval_examples:
            section["max_eval_examples"] = max_eval_examples
    exp = parse_config(raw, f"{source} (with command-line overrides)")
    data_path = resolve_data_dir(str(data_dir) if data_dir is not None else None)
    check_model(exp.model)
    if any(getattr(m, "top_k_layers", None) for m in exp.methods):
        exp, notices = drop_clipped_duplicates(exp, model_depth(exp.model))
        for notice in notices:
            say(f"notice: {notice}")
    reads = _check_task_data(exp, data_path) if check_data else {}
    trials = plan_trials(exp, "local" if data_path else "hub", _as_list(methods, "--methods"))
    for name in sorted({t.resolved.training.device for t in trials}) if check_devices else []:
        resolve_device(name)  # a device that is not here is an error before anything trains
    return Planned(exp, data_path, trials, reads)


def _check_task_data(exp: ExperimentConfig, data_path: Path | None) -> dict[str, str]:
    """Load every task's data, so that missing or malformed data is an error before any training
    starts; returns what was read (see Planned.data_reads)."""
    from pefteval.tasks import get_task
    from pefteval.tasks.base import track_data_reads

    with track_data_reads() as reads:
        for task in exp.tasks:
            # the task's full data (a k-shot sample is drawn from it per trial)
            splits = get_task(task).splits(data_path, exp.data_for(task).model_copy(update={"k_shot": None}), 0)
            if len(splits.train) < 2:
                raise UserError(f"task {task}: only {len(splits.train)} training example(s); "
                                "raise --max-train-examples")
    return dict(reads)


def format_plan_line(trial: Trial) -> str:
    """One line of ``run --dry-run``: key, task (``@k=N`` for a k-shot trial), method, seed, grid point."""
    hp = trial.config["training"]
    task = trial.task if trial.k_shot is None else f"{trial.task}@k={trial.k_shot}"
    return (f"{trial.key} {task} {trial.method} seed={trial.seed} "
            f"lr={hp['lr']:g} warmup_ratio={hp['warmup_ratio']:g} batch_size={hp['batch_size']}")


def _has_gpus() -> bool:
    from pefteval.sweep import visible_gpus

    return bool(visible_gpus())


def run(config: Any, out: str | Path | None = None, *, data_dir: str | Path | None = None, methods: Any = None,
        seeds: Any = None, max_train_examples: int | None = None, max_eval_examples: int | None = None,
        tasks: Any = None, model: str | None = None, include_path: Any = None, dry_run: bool = False,
        accept_data_change: bool = False, device: str | None = None, threads: int | None = None,
        num_processes: int = 1, accelerate_config: str | Path | None = None, executor: str = "local",
        ray_address: str | None = None, jobs: int = 1, track: Any = None, stream: TextIO | None = None,
        report: bool = True) -> RunSummary:
    """Train and evaluate every trial of an experiment not already complete in ``out``, run the
    experiment's analyses and write its report; what ``pefteval run CONFIG --out OUT`` does, with the
    same overrides as keyword arguments (``methods``, ``seeds``, ``tasks``, ``track``: lists or
    comma-separated strings). ``config``: an experiment YAML's path, a mapping of its fields, or an
    ``ExperimentConfig``. Progress and messages go to ``stream`` (default stderr). Bad input raises
    ``pefteval.errors.UserError`` (the CLI's exit 2) before anything is trained or written."""
    say = _say_to(stream)
    out = Path(out) if out is not None else None
    accelerate_config = Path(accelerate_config) if accelerate_config is not None else None
    if out is None and not dry_run:
        raise UserError("missing option --out DIR: the results directory (only --dry-run runs without it)")
    if out is not None and not dry_run:
        from pefteval.files import check_out_dir

        check_out_dir(out)  # writable, checked before planning and without creating it
    if executor not in ("local", "ray"):
        raise UserError(f"--executor {executor!r}: choose local or ray")
    if ray_address is not None and executor != "ray":
        raise UserError("--ray-address needs --executor ray")
    register_tasks(include_path, config)  # tasks of one's own, with the config's include_path
    settings = None
    if accelerate_config is not None:
        from pefteval.distributed import check_accelerate_config

        settings = check_accelerate_config(accelerate_config)
    from pefteval.tracking import parse_track, resolve_tracking  # torch-free

    chosen_trackers = parse_track(_as_list(track, "--track"))  # an unknown name is an error before planning
    planned = plan_run(config, data_dir, methods, seeds, max_train_examples, max_eval_examples, tasks, model,
                       check_data=not dry_run, device=device, say=say)
    # each tracker's library installed, before any trial runs (a dry run needs none of them)
    tracking = resolve_tracking(planned.exp.tracking, chosen_trackers, check=not dry_run)
    if settings is not None and accelerate_config is not None:
        from pefteval.distributed import check_trials_for

        check_trials_for(settings, accelerate_config, [t.resolved for t in planned.trials])
    exp, data_path, trials = planned.exp, planned.data_path, planned.trials
    summary = RunSummary(out, exp.name, len(trials), dry_run=dry_run)
    if dry_run:
        summary.plan = [format_plan_line(t) for t in trials]
        if out is not None and (out / "results.sqlite").is_file():
            from pefteval.store import ResultStore

            with ResultStore(out / "results.sqlite", read_only=True) as store:
                done = store.complete_keys()
            summary.already_complete = sum(1 for t in trials if t.key in done)
        return summary
    assert out is not None
    from pefteval.files import atomic_write_text, check_writable, make_dir
    from pefteval.lock import ResultsLock
    from pefteval.store import ResultStore
    from pefteval.sweep import Launch, check_jobs, run_trials

    launch = Launch(num_processes, accelerate_config)
    if executor == "local":
        check_jobs(jobs, launch, exp.resources.gpus_per_trial)  # enough GPUs, before anything is written
        ray = None
    else:
        from pefteval.ray_executor import RayExecutor

        resources = exp.resources
        gpus = resources.gpus_per_trial if resources.gpus_per_trial is not None else (
            (num_processes if launch.distributed else 1) if _has_gpus() else 0)
        ray = RayExecutor(ray_address, resources.cpus_per_trial or num_processes, gpus, resources.memory_gb_per_trial)
    if (out / "results.sqlite").exists():  # a corrupt store stops the run before anything is written
        ResultStore(out / "results.sqlite", read_only=True).close()
    make_dir(out)
    check_writable(out)
    # one sweep per results directory: held until this process exits, however it exits
    with ResultsLock(out) as lock:
        if lock.takeover_note():
            say(lock.takeover_note())
        atomic_write_text(out / "experiment.yaml", yaml.safe_dump(exp.model_dump(mode="json"), sort_keys=False))
        say(f"{exp.name}: {len(trials)} trial(s) planned ({exp.model}; tasks {', '.join(exp.tasks)}); "
            f"results in {out}")
        try:
            swept = run_trials(trials, out, data_path, exp.name, stream=stream, analysis=exp.analyses.model_dump(),
                               data_reads=planned.data_reads, accept_data_change=accept_data_change,
                               threads=threads if threads is not None else (
                                   exp.resources.cpus_per_trial or (ray.cpus if ray is not None else None)),
                               launch=launch, jobs=jobs, gpus_per_trial=exp.resources.gpus_per_trial,
                               executor=ray, save_weights=exp.save_weights, tracking=tracking)
        finally:
            if ray is not None:
                ray.close()
        summary.completed, summary.skipped = swept.completed, swept.skipped
        summary.failed = [(trial.describe(), error) for trial, error in swept.failed]
        summary.interrupted, summary.pruned = swept.interrupted, list(swept.pruned)
        if swept.interrupted:  # Ctrl-C means stop now, so no analyses and no report either
            return summary
        say(f"ran {summary.completed} trial(s), skipped {summary.skipped} already complete, "
            f"{len(summary.failed)} failed")
        for described, error in summary.failed:
            say(f"  failed: {described}: {error}")
        for line in summary.pruned:
            say(line)
        run_analyses(out, exp.analyses.run, say, data_path)
        from pefteval.tasks import TASKS

        if any(TASKS[t].kind == "instruct" for t in exp.tasks):
            summary.judging = run_judging(out, exp.judge, data_path, say)
        if report:
            from pefteval.reporting.save import UnsavedReport, write_report

            try:
                summary.report = write_report(out, "markdown")
                write_report(out, "html")
            except UnsavedReport as err:  # no space for the report: keep the sweep's status, and the text
                summary.report, summary.report_error = summary.report or err.text, str(err)
            except UserError as err:  # nothing complete yet
                summary.report_error = str(err)
    return summary


def run_analyses(out: Path, names: list[str], say: Callable[[str], None] | None = None,
                  data_dir: Path | None = None) -> None:
    """The experiment's ``analyses``; one that cannot run says why and the others still run."""
    from pefteval.analysis import run_analysis

    say = say or _say_to(None)
    for name in names:
        try:
            result = run_analysis(name, out, data_dir=data_dir)
            say(f"analysis {name}: {out / 'analysis' / name}.md ({result.seconds:.1f} s)")
        except UserError as err:
            say(f"analysis {name} skipped: {err}")
        except Exception as err:  # noqa: BLE001 - the sweep's results and report must still be written
            say(f"analysis {name} failed ({type(err).__name__}: {err}); the results are unaffected, "
                f"rerun it with `pefteval analyze {name} {out}`")


def run_judging(out: Path, judge: Any, data_dir: Path | None, say: Callable[[str], None]) -> Any:
    """MT-Bench judging after a sweep (instruction-tuning tasks), inside the run's lock; a judging
    that cannot run (an unreachable endpoint, a missing key) says why and leaves the sweep's results
    as they are: ``pefteval judge OUT`` judges them later."""
    from pefteval.judging.run import judge_run

    try:
        return judge_run(out, judge, data_dir, say)
    except UserError as err:
        say(f"judging skipped: {err}")
    except Exception as err:  # noqa: BLE001 - the sweep's results and report must still be written
        say(f"judging failed ({type(err).__name__}: {err}); the trials' answers are saved, judge them with "
            f"`pefteval judge {out}`")
    return None


def judge(out: str | Path, *, data_dir: str | Path | None = None, stream: TextIO | None = None,
          **settings: Any) -> Any:
    """Judge (or re-judge with another judge) the MT-Bench answers saved in ``out`` without retraining
    or regenerating: what ``pefteval judge OUT`` does. The judge is the experiment's ``judge:``
    section (OUT/experiment.yaml) with ``settings`` (fields of ``JudgeConfig``: backend, model,
    base_url, api_key_env, max_new_tokens, ...) replacing its fields. Judgments already made by the
    same judge are reused. Returns the ``JudgeSummary``; holds OUT's lock while it writes."""
    from pydantic import ValidationError

    from pefteval.config import JudgeConfig, format_validation_error
    from pefteval.errors import ConfigError
    from pefteval.judging.run import judge_run
    from pefteval.lock import ResultsLock
    from pefteval.status import check_results_dir
    from pefteval.tasks.base import resolve_data_dir

    out = Path(out)
    written = yaml.safe_load(check_results_dir(out).read_text(encoding="utf-8")) or {}
    base = (written.get("judge") if isinstance(written, dict) else None) or {}
    try:
        config = JudgeConfig(**{**base, **{k: v for k, v in settings.items() if v is not None}})
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, "judge settings")) from None
    with ResultsLock(out):
        return judge_run(out, config, resolve_data_dir(data_dir), _say_to(stream))


def report(out: str | Path, format: str = "markdown", save: bool = True,  # noqa: A002 - the CLI's --format
           include_path: Any = None) -> str:
    """The comparison report of a results directory as text: ``markdown``, ``csv``, ``latex`` or
    ``html`` (one self-contained page); saved in ``out`` as well unless ``save=False``.
    ``include_path``: the folders of the tasks of one's own that its trials ran."""
    from pefteval.reporting.save import write_report

    register_tasks(include_path)
    return write_report(out, format, save)


def claims(outs: Any, margin: float = 1.0, format: str = "markdown",  # noqa: A002 - the CLI's --format
           include_path: Any = None) -> str:
    """The paper's claims decided on one or more results directories (``outs``: a path or a list), as
    markdown, CSV or JSON text: per claim held / contradicted / inconclusive, the effect with its 95%
    interval, n and the test used, and the claims these results cannot test (pefteval/reporting/claims.py)."""
    from pefteval.reporting.claims import FORMATS, evaluate_claims, render

    if format not in FORMATS:
        raise UserError(f"format {format!r}: choose one of {', '.join(FORMATS)}")
    register_tasks(include_path)
    paths = [Path(outs)] if isinstance(outs, (str, Path)) else [Path(o) for o in outs]
    return render(evaluate_claims(paths, margin), format)


def export(out: str | Path, trial: str, to: str | Path, merge: bool = False) -> dict[str, Any]:
    """Write trial ``trial``'s (its key, or a unique prefix) trained model to ``to``: a peft adapter,
    or with ``merge`` (and always for FFT) a whole transformers model; see pefteval/export.py."""
    from pefteval.export import export_trial

    return export_trial(out, trial, to, merge)


# record fields load_results leaves out: per-file sizes and data hashes (provenance), the curve
# (its own column, as a list), and what is flattened under other names
_NESTED_KEEP_AS_IS = ("curve", "notes", "files", "data_fingerprint")


def _flatten(value: Mapping[str, Any], prefix: str, into: dict[str, Any]) -> None:
    for key, item in value.items():
        name = f"{prefix}{key}"
        if isinstance(item, Mapping) and item:
            _flatten(item, name + ".", into)
        else:
            into[name] = item


def load_results(out: str | Path, status: str | None = None) -> pandas.DataFrame:
    """One row per trial of a results directory (every status, or only ``status``: complete or
    failed), as a pandas DataFrame. Columns: ``key``, ``status``, ``error``; the resolved trial
    config flattened (``task``, ``method``, ``seed``, ``model``, ``method.type``, ``method.r``,
    ``training.lr``, ``data.max_train_examples``, ...); every metric per split (``test.accuracy``,
    ``validation.accuracy``, ``advglue.accuracy``, ``test.n``, ...); ``params.trainable``,
    ``params.total``, ...; times (``train_seconds``, ``eval_seconds``, ``wall_seconds``, ...); memory
    (``peak_rss_mb``, ``peak_device_*``); ``curve`` (the per-epoch list) and the other record fields."""
    import pandas as pd

    from pefteval.store import ResultStore

    out = Path(out)
    path = out / "results.sqlite"
    if status not in (None, "complete", "failed"):
        raise UserError(f"status {status!r}: choose complete, failed or None (every trial)")
    with ResultStore(path, read_only=True) as store:
        records = list(store.records(status))
    rows = []
    for rec in records:
        row: dict[str, Any] = {"key": rec["key"], "status": rec["status"], "error": rec.get("error")}
        config = dict(rec.get("config") or {})
        row["task"] = config.pop("task", None)
        row["method"] = config.pop("method_label", None)
        row["seed"] = config.pop("seed", None)
        row["model"] = config.pop("model", None)
        _flatten(config, "", row)
        for split, metrics in (rec.get("metrics") or {}).items():
            _flatten(metrics, f"{split}.", row)
        for name, value in rec.items():
            if name in ("key", "status", "error", "config", "metrics"):
                continue
            if name in _NESTED_KEEP_AS_IS or not isinstance(value, Mapping):
                row[name] = value
            else:
                _flatten(value, f"{name}.", row)
        rows.append(row)
    return pd.DataFrame(rows)
