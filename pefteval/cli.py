"""The ``pefteval`` command: run, report, analyze, list, adversarial."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
import yaml

from pefteval import __version__
from pefteval.cli_adversarial import adversarial_app
from pefteval.cli_common import CONTEXT_SETTINGS, _csv_list, user_errors
from pefteval.errors import UserError

if TYPE_CHECKING:
    from pefteval.config import ExperimentConfig
    from pefteval.plan import Trial

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  context_settings=CONTEXT_SETTINGS,
                  help="Compare full fine-tuning with parameter-efficient methods on real models and tasks.")


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"pefteval {__version__}")
        raise typer.Exit()


@app.callback()
def _app_options(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="print the version and exit"),
) -> None:
    pass


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


def plan_run(config: Path, data_dir: str | None = None, methods: str | None = None, seeds: str | None = None,
             max_train_examples: int | None = None, max_eval_examples: int | None = None,
             tasks: str | None = None, model: str | None = None, check_data: bool = True,
             device: str | None = None, check_devices: bool = True) -> Planned:
    """The trials of ``pefteval run CONFIG`` with its command-line options; `run` and `run --dry-run` both
    plan here, so their trials (and keys) are the same. ``check_data`` loads every task's data first
    (missing or malformed data is an error before anything trains); the dry run skips it."""
    # imported here, not at the top: keeps --help and list free of torch
    from pefteval.config import load_config, parse_config
    from pefteval.device import resolve_device
    from pefteval.models import check_model, model_depth
    from pefteval.plan import drop_clipped_duplicates, plan_trials
    from pefteval.tasks import resolve_data_dir

    exp = load_config(config)
    raw = exp.model_dump(exclude_unset=True, mode="json")
    if model:
        raw["model"] = model
    if tasks:
        raw["tasks"] = _csv_list(tasks, "--tasks")
    if seeds:  # validated as the config's seeds are: distinct, in range
        raw["seeds"] = _csv_list(seeds, "--seeds", int)
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
    exp = parse_config(raw, f"{config} (with command-line overrides)")
    data_path = resolve_data_dir(data_dir)
    check_model(exp.model)
    if any(getattr(m, "top_k_layers", None) for m in exp.methods):
        exp, notices = drop_clipped_duplicates(exp, model_depth(exp.model))
        for notice in notices:
            typer.echo(f"notice: {notice}", err=True)
    reads = _check_task_data(exp, data_path) if check_data else {}
    trials = plan_trials(exp, "local" if data_path else "hub", _csv_list(methods, "--methods"))
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


def _dry_run(planned: Planned, out: Path | None) -> None:
    """Print the planned trials and how many OUT already holds as complete; trains and writes nothing."""
    for trial in planned.trials:
        typer.echo(format_plan_line(trial))
    count = f"{len(planned.trials)} trial(s) planned"
    store_path = out / "results.sqlite" if out is not None else None
    if store_path is not None and store_path.is_file():
        from pefteval.store import ResultStore

        with ResultStore(store_path, read_only=True) as store:
            done = store.complete_keys()
        count += f", {sum(1 for t in planned.trials if t.key in done)} already complete in {out}"
    typer.echo(count)


@app.command()
@user_errors
def run(
    config: Path = typer.Argument(..., help="experiment YAML, e.g. configs/quickstart.yaml"),
    out: Optional[Path] = typer.Option(None, "--out", help="results directory (created; re-running resumes); "
                                       "required unless --dry-run"),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="local data directory; default "
                                           "$PEFTEVAL_DATA_DIR, else the Hugging Face hub"),
    methods: Optional[str] = typer.Option(None, "--methods", help="only these method names, e.g. fft,lora"),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="override the seeds, e.g. 0,42"),
    max_train_examples: Optional[int] = typer.Option(None, "--max-train-examples", min=1),
    max_eval_examples: Optional[int] = typer.Option(None, "--max-eval-examples", min=1),
    tasks: Optional[str] = typer.Option(None, "--tasks", help="override the tasks, e.g. sst2,rte"),
    model: Optional[str] = typer.Option(None, "--model", help="override the model (alias, directory or hub id)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the planned trials (key, task, method, seed, "
                                 "grid point) and how many OUT already holds; train, load and write nothing"),
    accept_data_change: bool = typer.Option(False, "--accept-data-change", help="retrain here, on the current "
                                            "data, the complete trials whose data files changed since they ran "
                                            "(their results are replaced); without it a change is an error"),
    device: Optional[str] = typer.Option(None, "--device", help="auto (CUDA when there is one, else CPU), cpu, "
                                         "cuda, cuda:N or mps; overrides training.device (not part of a trial's "
                                         "key: trials resume on another device)"),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads per trial (default: torch's, "
                                          "all cores unless OMP_NUM_THREADS says otherwise); recorded"),
    num_processes: int = typer.Option(1, "--num-processes", min=1, help="processes per trial, through accelerate "
                                      "launch (DDP: one per GPU; gloo on CPU); only the main one writes"),
    accelerate_config: Optional[Path] = typer.Option(None, "--accelerate-config", help="an accelerate config file "
                                                     "for each trial's launch (e.g. configs/accelerate/ddp.yaml)"),
    executor: str = typer.Option("local", "--executor", help="local (this machine's processes) or ray (every "
                                 "trial a Ray task; --out must be on storage every node sees)"),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="auto or HOST:PORT of a running Ray "
                                              "cluster; without it a local Ray is started for the run (loopback)"),
    jobs: int = typer.Option(1, "--jobs", min=1, help="trials at once on this machine, each in its own process: "
                             "with GPUs each sees resources.gpus_per_trial of them (default 1), on CPU the cores "
                             "are split between them (unless --threads)"),
) -> None:
    """Train and evaluate every trial of an experiment not already in OUT, then print the report."""
    if out is None and not dry_run:
        raise UserError("missing option --out DIR: the results directory (only --dry-run runs without it)")
    if out is not None and not dry_run:
        _check_out(out)
    settings = None
    if accelerate_config is not None:
        from pefteval.distributed import check_accelerate_config

        settings = check_accelerate_config(accelerate_config)
    planned = plan_run(config, data_dir, methods, seeds, max_train_examples, max_eval_examples, tasks, model,
                       check_data=not dry_run, device=device)
    if settings is not None and accelerate_config is not None:
        from pefteval.distributed import check_trials_for

        check_trials_for(settings, accelerate_config, [t.resolved for t in planned.trials])
    if dry_run:
        _dry_run(planned, out)
        return
    assert out is not None
    # imported here, not at the top: keeps --help and list free of torch
    from pefteval.files import atomic_write_text, check_writable, make_dir
    from pefteval.lock import ResultsLock
    from pefteval.store import ResultStore
    from pefteval.sweep import Launch, check_jobs, run_trials

    exp, data_path, trials = planned.exp, planned.data_path, planned.trials
    launch = Launch(num_processes, accelerate_config)
    if executor not in ("local", "ray"):
        raise UserError(f"--executor {executor!r}: choose local or ray")
    if ray_address is not None and executor != "ray":
        raise UserError("--ray-address needs --executor ray")
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
            typer.echo(lock.takeover_note(), err=True)
        atomic_write_text(out / "experiment.yaml", yaml.safe_dump(exp.model_dump(mode="json"), sort_keys=False))
        typer.echo(f"{exp.name}: {len(trials)} trial(s) planned ({exp.model}; tasks {', '.join(exp.tasks)}); "
                   f"results in {out}", err=True)
        summary = run_trials(trials, out, data_path, exp.name, analysis=exp.analyses.model_dump(),
                             data_reads=planned.data_reads, accept_data_change=accept_data_change,
                             threads=threads if threads is not None else (
                                 exp.resources.cpus_per_trial or (ray.cpus if ray is not None else None)),
                             launch=launch, jobs=jobs, gpus_per_trial=exp.resources.gpus_per_trial,
                             executor=ray)
        if ray is not None:
            ray.close()
        if summary.interrupted:  # one line: Ctrl-C means stop now, so no analyses and no report either
            typer.echo(f"interrupted: finished trials are saved ({summary.completed} in this run); run the same "
                       "command again to resume", err=True)
            raise typer.Exit(130)
        typer.echo(f"ran {summary.completed} trial(s), skipped {summary.skipped} already complete, "
                   f"{len(summary.failed)} failed", err=True)
        for trial, error in summary.failed:
            typer.echo(f"  failed: {trial.describe()}: {error}", err=True)
        _run_analyses(out, exp.analyses.run)
        try:
            _write_report(out, "markdown", echo=True)
            _write_report(out, "html")
        except UserError as err:  # nothing complete yet, or no space for the report: say so, keep the sweep's status
            typer.echo(f"no report: {err}", err=True)
        if summary.failed:
            raise typer.Exit(1)


@app.command()
@user_errors
def status(out: Path = typer.Argument(..., help="a results directory of `pefteval run`")) -> None:
    """Where the sweep in OUT stands: planned, complete, failed, running (which, where, for how long),
    remaining and the time left. Reads without the directory's lock, while a run goes on."""
    from pefteval.status import check_results_dir, sweep_status

    # planned as `run` plans (the same keys), on whatever device this machine has
    exp = plan_run(check_results_dir(out), check_data=False, check_devices=False).exp
    for line in sweep_status(out, exp).lines():
        typer.echo(line)


def _has_gpus() -> bool:
    from pefteval.sweep import visible_gpus

    return bool(visible_gpus())


def _check_out(out: Path) -> None:
    """--out must be a directory pefteval can create or write in; checked before anything is planned,
    without creating it (a run that stops on a user error leaves no directory behind)."""
    from pefteval.files import check_out_dir

    check_out_dir(out)


def _run_analyses(out: Path, names: list[str]) -> None:
    """The experiment's ``analyses``; one that cannot run says why and the others still run."""
    # imported here, not at the top: keeps --help and list free of torch
    from pefteval.analysis import run_analysis

    for name in names:
        try:
            result = run_analysis(name, out)
            typer.echo(f"analysis {name}: {out / 'analysis' / name}.md ({result.seconds:.1f} s)", err=True)
        except UserError as err:
            typer.echo(f"analysis {name} skipped: {err}", err=True)
        except Exception as err:  # noqa: BLE001 - the sweep's results and report must still be written
            typer.echo(f"analysis {name} failed ({type(err).__name__}: {err}); the results are unaffected, "
                       f"rerun it with `pefteval analyze {name} {out}`", err=True)


def _write_report(out: Path, fmt: str, echo: bool = False, echo_if_unsaved: bool = False) -> str:
    """Build the report of OUT in ``fmt`` and save it (report.md, .csv, .tex or .html, and the scaling
    figures). With ``echo`` the text is printed first, so that a directory that cannot take the files
    (read-only, full) still gets its report on stdout before the error says where it could not write;
    ``echo_if_unsaved`` prints it only then."""
    # imported here, not at the top: keeps --help and list free of torch
    from pefteval.errors import OutputError
    from pefteval.files import atomic_write_text
    from pefteval.report import build_table, render
    from pefteval.store import ResultStore

    path = out / "results.sqlite"
    with ResultStore(path, read_only=True) as store:
        records = list(store.records())
        failed = sum(1 for _ in store.records("failed"))
    if not records:
        raise UserError(f"{path} holds no complete trials yet")
    table = build_table(records, failed)
    if fmt == "html":
        from pefteval.report.html import render_html

        text = render_html(out, render(table, "markdown"), records)
    else:
        text = render(table, fmt)
    if echo:
        typer.echo(text, nl=False)
    suffix = {"markdown": "md", "csv": "csv", "latex": "tex", "html": "html"}[fmt]
    try:
        atomic_write_text(out / f"report.{suffix}", text)
        if table.scaling is not None:
            from pefteval.report.scaling import plot_scaling

            plot_scaling(table.scaling, out / "scaling.png")
        if table.data_scaling is not None:
            from pefteval.report.datascaling import plot_data_scaling

            plot_data_scaling(table.data_scaling, out / "data_scaling.png")
    except OutputError as err:
        if echo_if_unsaved and not echo:
            typer.echo(text, nl=False)
            echo = True
        where = "above" if echo else "not saved"
        raise OutputError(f"{err}; the report is {where}: pass a writable results directory to keep it "
                          "(or redirect the output to a file)") from None
    return text


@app.command()
@user_errors
def report(
    out: Path = typer.Argument(..., help="results directory of `pefteval run`"),
    fmt: str = typer.Option("markdown", "--format", help="markdown, csv, latex or html (one self-contained page "
                            "with the tables, the computed analyses and their figures)"),
) -> None:
    """Rebuild the comparison table from OUT/results.sqlite (no retraining)."""
    from pefteval.report import FORMATS

    if fmt not in (*FORMATS, "html"):
        raise UserError(f"--format {fmt!r}: choose one of {', '.join((*FORMATS, 'html'))}")
    if fmt == "html":
        text = _write_report(out, fmt, echo_if_unsaved=True)
        typer.echo(f"wrote {out / 'report.html'} ({len(text) / 1024:.0f} KiB, images embedded)")
    else:
        _write_report(out, fmt, echo=True)


@app.command()
@user_errors
def analyze(
    name: str = typer.Argument(..., help="increments, spectrum, bound or sensitivity"),
    out: Path = typer.Argument(..., help="results directory of `pefteval run`"),
    module: Optional[str] = typer.Option(None, "--module", help="increments: regular expression on module names "
                                         "(default: the last block's query projection)"),
    fmt: str = typer.Option("markdown", "--format", help="markdown or csv"),
) -> None:
    """Weight-space diagnostics of OUT's trained models (no retraining); figures and tables go to OUT/analysis/."""
    # imported here, not at the top: keeps --help and list free of torch
    from pefteval.analysis import run_analysis

    if fmt not in ("markdown", "csv"):
        raise UserError(f"--format {fmt!r}: choose markdown or csv")
    if module is not None and name != "increments":
        raise UserError("--module applies to `analyze increments` only")
    result = run_analysis(name, out, module)
    typer.echo(result.markdown() if fmt == "markdown" else result.csv(), nl=False)
    typer.echo(f"wrote {out / 'analysis' / name}.md, .csv" + "".join(f", {p}" for p in result.figures), err=True)


@app.command("list")
def list_all() -> None:
    """Model aliases, tasks (with adversarial splits) and methods."""
    # imported here, not at the top: keeps --help and list free of torch (the task registry and the
    # method help are torch-free)
    from pefteval.config import METHOD_HELP
    from pefteval.models import ALIASES
    from pefteval.tasks import TASKS

    typer.echo("Models (packaged aliases; any hub id or local directory also works):")
    for name, alias in ALIASES.items():
        typer.echo(f"  {name:<14} {alias.help}")
    typer.echo("\nTasks:")
    for name, task in TASKS.items():
        facts = [f"labels: {', '.join(task.label_names)}"] if task.label_names else []
        if task.adversarial:
            facts.append(f"adversarial: {', '.join(task.adversarial)}")
        if task.kind == "generation":
            facts.append("decoder generation")
        if task.fewshot is not None:
            facts.append("few-shot with data.k_shot")
        typer.echo(f"  {name:<14} {task.help}" + (f" [{'; '.join(facts)}]" if facts else ""))
    typer.echo("\nMethods:")
    for name, text in METHOD_HELP.items():
        typer.echo(f"  {name:<14} {text}")


app.add_typer(adversarial_app, name="adversarial")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:  # before or after the sweep (the sweep itself says its own line)
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
