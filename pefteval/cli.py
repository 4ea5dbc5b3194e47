"""The ``pefteval`` command: run, report, list."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import typer
import yaml

from pefteval.errors import UserError

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Compare full fine-tuning with parameter-efficient methods on real models and tasks.")


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """User errors print one clear message and exit with status 2, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2) from None

    return wrapper


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


@app.command()
@user_errors
def run(
    config: Path = typer.Argument(..., help="experiment YAML, e.g. configs/quickstart.yaml"),
    out: Path = typer.Option(..., "--out", help="results directory (created; re-running resumes)"),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="local data directory; default "
                                           "$PEFTEVAL_DATA_DIR, else the Hugging Face hub"),
    methods: Optional[str] = typer.Option(None, "--methods", help="only these method names, e.g. fft,lora"),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="override the seeds, e.g. 0,42"),
    max_train_examples: Optional[int] = typer.Option(None, "--max-train-examples", min=1),
    max_eval_examples: Optional[int] = typer.Option(None, "--max-eval-examples", min=1),
    tasks: Optional[str] = typer.Option(None, "--tasks", help="override the tasks, e.g. sst2,rte"),
    model: Optional[str] = typer.Option(None, "--model", help="override the model (alias, directory or hub id)"),
) -> None:
    """Train and evaluate every trial of an experiment not already in OUT, then print the report."""
    from pefteval.config import load_config, parse_config
    from pefteval.models import check_model, model_depth
    from pefteval.plan import drop_clipped_duplicates, plan_trials
    from pefteval.sweep import run_trials
    from pefteval.tasks import get_task, resolve_data_dir

    exp = load_config(config)
    raw = exp.model_dump(exclude_unset=True, mode="json")
    if model:
        raw["model"] = model
    if tasks:
        raw["tasks"] = _csv_list(tasks, "--tasks")
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
    for task in exp.tasks:  # surfaces missing or malformed data before any training starts
        splits = get_task(task).loader(data_path, exp.data_for(task))
        if len(splits.train) < 2:
            raise UserError(f"task {task}: only {len(splits.train)} training example(s); raise --max-train-examples")
    trials = plan_trials(exp, "local" if data_path else "hub", _csv_list(methods, "--methods"),
                         _csv_list(seeds, "--seeds", int))
    out.mkdir(parents=True, exist_ok=True)
    (out / "experiment.yaml").write_text(yaml.safe_dump(exp.model_dump(mode="json"), sort_keys=False))
    typer.echo(f"{exp.name}: {len(trials)} trial(s) planned ({exp.model}; tasks {', '.join(exp.tasks)}); "
               f"results in {out}", err=True)
    summary = run_trials(trials, out, data_path, exp.name, analysis=exp.analyses.model_dump())
    typer.echo(f"ran {summary.completed} trial(s), skipped {summary.skipped} already complete, "
               f"{len(summary.failed)} failed", err=True)
    for trial, error in summary.failed:
        typer.echo(f"  failed: {trial.describe()}: {error}", err=True)
    _run_analyses(out, exp.analyses.run)
    try:
        typer.echo(_write_report(out, "markdown"))
        _write_report(out, "html")
    except UserError as err:  # nothing complete yet: say so, but keep the sweep's own exit status
        typer.echo(f"no report: {err}", err=True)
    if summary.interrupted:
        typer.echo("interrupted: finished trials are saved; run the same command again to resume", err=True)
        raise typer.Exit(130)
    if summary.failed:
        raise typer.Exit(1)


def _run_analyses(out: Path, names: list[str]) -> None:
    """The experiment's ``analyses``; one that cannot run says why and the others still run."""
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


def _write_report(out: Path, fmt: str) -> str:
    from pefteval.report import build_table, render
    from pefteval.store import ResultStore, atomic_write_text

    path = out / "results.sqlite"
    if not path.is_file():
        raise UserError(f"no results store at {path}; run `pefteval run CONFIG --out {out}` first")
    with ResultStore(path) as store:
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
    suffix = {"markdown": "md", "csv": "csv", "latex": "tex", "html": "html"}[fmt]
    atomic_write_text(out / f"report.{suffix}", text)
    if table.scaling is not None:
        from pefteval.report.scaling import plot_scaling

        plot_scaling(table.scaling, out / "scaling.png")
    if table.data_scaling is not None:
        from pefteval.report.datascaling import plot_data_scaling

        plot_data_scaling(table.data_scaling, out / "data_scaling.png")
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
    text = _write_report(out, fmt)
    if fmt == "html":
        typer.echo(f"wrote {out / 'report.html'} ({len(text) / 1024:.0f} KiB, images embedded)")
    else:
        typer.echo(text, nl=False)


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
    from pefteval.methods import METHOD_HELP
    from pefteval.models import ALIASES
    from pefteval.tasks import TASKS

    typer.echo("Models (packaged aliases; any hub id or local directory also works):")
    for name, alias in ALIASES.items():
        typer.echo(f"  {name:<14} {alias.help}")
    typer.echo("\nTasks:")
    from pefteval.tasks.fewshot import SPECS

    for name, task in TASKS.items():
        facts = [f"labels: {', '.join(task.label_names)}"] if task.label_names else []
        if task.adversarial:
            facts.append(f"adversarial: {', '.join(task.adversarial)}")
        if task.kind == "generation":
            facts.append("decoder generation")
        if name in SPECS:
            facts.append("few-shot with data.k_shot")
        typer.echo(f"  {name:<14} {task.help}" + (f" [{'; '.join(facts)}]" if facts else ""))
    typer.echo("\nMethods:")
    for name, text in METHOD_HELP.items():
        typer.echo(f"  {name:<14} {text}")


from pefteval.cli_adversarial import adversarial_app  # noqa: E402  (it uses user_errors, defined above)

app.add_typer(adversarial_app, name="adversarial")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
