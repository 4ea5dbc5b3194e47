"""The ``pefteval`` command: run, status, export, judge, report, analyze, list, adversarial."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import typer

from pefteval import __version__
from pefteval.cli_adversarial import adversarial_app
from pefteval.cli_common import CONTEXT_SETTINGS, user_errors
from pefteval.errors import UserError
from pefteval.interrupts import stop_on_interrupt

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


def _include_path_option() -> Any:
    return typer.Option(None, "--include-path", help="a folder of task definitions of your own (YAML files; "
                        "docs/tasks.md); repeat it for several folders")


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
    include_path: Optional[list[Path]] = _include_path_option(),
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
    track: Optional[list[str]] = typer.Option(None, "--track", help="experiment trackers, replacing the config's "
                                              "tracking.trackers: tensorboard, mlflow, wandb (repeat the option "
                                              "or separate by commas; none: no tracker); see docs/tracking.md"),
) -> None:
    """Train and evaluate every trial of an experiment not already in OUT, then print the report."""
    from pefteval.api import run as run_experiment

    stop_on_interrupt()  # Ctrl-C stops the sweep, even where SIGINT was inherited ignored
    summary = run_experiment(config, out, data_dir=data_dir, methods=methods, seeds=seeds,
                             max_train_examples=max_train_examples, max_eval_examples=max_eval_examples,
                             tasks=tasks, model=model, include_path=include_path, dry_run=dry_run,
                             accept_data_change=accept_data_change, device=device, threads=threads,
                             num_processes=num_processes, accelerate_config=accelerate_config, executor=executor,
                             ray_address=ray_address, jobs=jobs, track=track)
    if summary.dry_run:
        for line in summary.plan:
            typer.echo(line)
        done = f", {summary.already_complete} already complete in {out}" if out is not None and (
            out / "results.sqlite").is_file() else ""
        typer.echo(f"{summary.planned} trial(s) planned{done}")
        return
    if summary.interrupted:  # one line: Ctrl-C means stop now, so no analyses and no report either
        typer.echo(f"interrupted: finished trials are saved ({summary.completed} in this run); run the same "
                   "command again to resume", err=True)
        raise typer.Exit(130)
    if summary.report is not None:
        typer.echo(summary.report, nl=False)
    if summary.report_error is not None:  # nothing complete yet, or no space for the report: keep the status
        saved = " (it is above)" if summary.report is not None else ""
        typer.echo(f"no report: {summary.report_error}{saved}", err=True)
    if summary.failed:
        raise typer.Exit(1)


@app.command()
@user_errors
def status(out: Path = typer.Argument(..., help="a results directory of `pefteval run`"),
           include_path: Optional[list[Path]] = _include_path_option()) -> None:
    """Where the sweep in OUT stands: planned, complete, failed, running (which, where, for how long),
    remaining and the time left. Reads without the directory's lock, while a run goes on."""
    from pefteval.api import plan_run, register_tasks
    from pefteval.status import check_results_dir, sweep_status

    register_tasks(include_path, check_results_dir(out))  # and experiment.yaml's include_path

    # planned as `run` plans (the same keys), on whatever device this machine has
    exp = plan_run(check_results_dir(out), check_data=False, check_devices=False).exp
    for line in sweep_status(out, exp).lines():
        typer.echo(line)


@app.command()
@user_errors
def export(
    out: Path = typer.Argument(..., help="a results directory of `pefteval run`"),
    trial: str = typer.Option(..., "--trial", help="the trial's key (or a unique prefix of it), as "
                              "`pefteval status` and runs/<...>__KEY name it"),
    to: Path = typer.Option(..., "--to", help="the directory to write (absent or empty)"),
    merge: bool = typer.Option(False, "--merge", help="write a whole model: the adapter merged into the base "
                               "weights (BitFit's biases put in); without it a peft trial's adapter is exported "
                               "as an adapter"),
) -> None:
    """Write a finished trial's trained model to DIR, loadable without pefteval: a peft adapter
    (PeftModel.from_pretrained), or a whole model (AutoModelFor...from_pretrained) with --merge or for
    FFT trials."""
    from pefteval.export import export_trial

    written = export_trial(out, trial, to, merge)
    typer.echo(f"exported trial {written['key']} as a {written['format']} to {written['path']} "
               f"({len(written['files'])} files)")


@app.command()
@user_errors
def judge(
    out: Path = typer.Argument(..., help="a results directory of `pefteval run` with instruction-tuning trials"),
    backend: Optional[str] = typer.Option(None, "--backend", help="local (a model run here) or openai (any "
                                          "OpenAI-compatible endpoint); default: the experiment's judge"),
    model: Optional[str] = typer.Option(None, "--model", help="the judge model: alias, directory or hub id "
                                        "(local), or the model name the endpoint serves (openai)"),
    base_url: Optional[str] = typer.Option(None, "--base-url", help="the endpoint, e.g. http://127.0.0.1:8000/v1"),
    api_key_env: Optional[str] = typer.Option(None, "--api-key-env", help="the environment variable that holds "
                                              "the API key (default OPENAI_API_KEY); the key is never written"),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", min=1, help="the judge's output cap"),
    max_concurrency: Optional[int] = typer.Option(None, "--max-concurrency", min=1, help="requests in flight"),
    max_retries: Optional[int] = typer.Option(None, "--max-retries", min=0, help="retries of a request that "
                                              "failed transiently (openai)"),
    timeout_s: Optional[float] = typer.Option(None, "--timeout-s", min=0.001, help="seconds one request may "
                                              "take (openai)"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="judgments generated at once "
                                             "(local)"),
    device: Optional[str] = typer.Option(None, "--device", help="where a local judge runs (auto, cpu, cuda:N)"),
    precision: Optional[str] = typer.Option(None, "--precision", help="bf16, fp16 or fp32 (local)"),
    sanity_questions: Optional[int] = typer.Option(None, "--sanity-questions", min=1, help="questions of the "
                                                   "judge's sanity check"),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="the folder holding mt_bench/ (FastChat's "
                                           "files); default $PEFTEVAL_DATA_DIR, else the Hugging Face hub"),
) -> None:
    """Judge the MT-Bench answers saved in OUT (no retraining, no regenerating), with the experiment's
    judge or another one; judgments already made by the same judge are reused. Writes
    OUT/mt_bench/model_judgment/<judge>_single.jsonl (FastChat's format) and the judge's sanity check."""
    from pefteval.api import judge as judge_answers

    if base_url is not None and backend is None:
        backend = "openai"  # an endpoint is what --base-url names
    summary = judge_answers(out, data_dir=data_dir, backend=backend, model=model, base_url=base_url,
                            api_key_env=api_key_env, max_new_tokens=max_new_tokens, max_concurrency=max_concurrency,
                            max_retries=max_retries, timeout_s=timeout_s, batch_size=batch_size, device=device,
                            precision=precision, sanity_questions=sanity_questions)
    rate = f", {summary.judgments_per_s:.3f} judgments/s" if summary.judgments_per_s else ""
    typer.echo(f"judged {summary.judged} answer turn(s) with {summary.slug} ({summary.cached} already judged, "
               f"{summary.unrated} unrated, {summary.missing} without an answer{rate}); sanity check: "
               f"{summary.verdict}; {summary.judgment_file}")
    if summary.verdict != "can tell":
        typer.echo(f"warning: the judge's sanity check says '{summary.verdict}': it did not rate reference answers "
                   "clearly above bad ones, so its scores should not be trusted", err=True)


@app.command()
@user_errors
def report(
    out: Path = typer.Argument(..., help="results directory of `pefteval run`"),
    fmt: str = typer.Option("markdown", "--format", help="markdown, csv, latex or html (one self-contained page "
                            "with the tables, the computed analyses and their figures)"),
    include_path: Optional[list[Path]] = _include_path_option(),
) -> None:
    """Rebuild the comparison table from OUT/results.sqlite (no retraining)."""
    from pefteval.api import register_tasks
    from pefteval.errors import OutputError
    from pefteval.reporting.save import REPORT_FORMATS, UnsavedReport, write_report

    if fmt not in REPORT_FORMATS:
        raise UserError(f"--format {fmt!r}: choose one of {', '.join(REPORT_FORMATS)}")
    register_tasks(include_path)
    # the text is printed before it is saved, so that a directory that cannot take the file (read-only,
    # full) still gets its report on stdout; an HTML page is printed only when it could not be saved
    try:
        text = write_report(out, fmt, save=False)
        if fmt != "html":
            typer.echo(text, nl=False)
        write_report(out, fmt)
    except UnsavedReport as err:
        if fmt == "html":
            typer.echo(err.text, nl=False)
        raise OutputError(f"{err}; the report is above: pass a writable results directory to keep it (or "
                          "redirect the output to a file)") from None
    if fmt == "html":
        typer.echo(f"wrote {out / 'report.html'} ({len(text) / 1024:.0f} KiB, images embedded)")


@app.command()
@user_errors
def analyze(
    name: str = typer.Argument(..., help="increments, spectrum, bound, sensitivity, intruders, forgetting or "
                               "similarity"),
    out: Path = typer.Argument(..., help="results directory of `pefteval run`"),
    module: Optional[str] = typer.Option(None, "--module", help="increments: regular expression on module names "
                                         "(default: the last block's query projection)"),
    fmt: str = typer.Option("markdown", "--format", help="markdown or csv"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="forgetting, similarity: where SQuAD's dev "
                                            "file is, for trials that saved no general-text probe (default: the "
                                            "hub)"),
    include_path: Optional[list[Path]] = _include_path_option(),
) -> None:
    """Weight-space diagnostics of OUT's trained models (no retraining); figures and tables go to OUT/analysis/."""
    # imported here, not at the top: keeps --help and list free of torch
    from pefteval.analysis import run_analysis
    from pefteval.tasks.user import register_include_paths

    register_include_paths(include_path or [])

    if fmt not in ("markdown", "csv"):
        raise UserError(f"--format {fmt!r}: choose markdown or csv")
    if module is not None and name != "increments":
        raise UserError("--module applies to `analyze increments` only")
    result = run_analysis(name, out, module, data_dir)
    typer.echo(result.markdown() if fmt == "markdown" else result.csv(), nl=False)
    typer.echo(f"wrote {out / 'analysis' / name}.md, .csv" + "".join(f", {p}" for p in result.figures), err=True)


@app.command()
@user_errors
def claims(
    outs: list[Path] = typer.Argument(..., help="one or more results directories of `pefteval run`"),
    margin: float = typer.Option(1.0, "--margin", help="points of a 100-point scale (accuracy, F1) within which a "
                                 "difference counts as none (MT-Bench ratings: a tenth of it)"),
    fmt: str = typer.Option("markdown", "--format", help="markdown, csv or json"),
    include_path: Optional[list[Path]] = _include_path_option(),
) -> None:
    """Decide each of the paper's claims that OUT ... can test: held, contradicted or inconclusive, with the
    effect's 95% interval, n and the test (no retraining)."""
    from pefteval.api import claims as decide

    typer.echo(decide(outs, margin=margin, format=fmt, include_path=include_path), nl=False)


@app.command("list")
@user_errors
def list_all(include_path: Optional[list[Path]] = _include_path_option()) -> None:
    """Model aliases, tasks (with adversarial splits; with --include-path, those of your own) and methods."""
    # imported here, not at the top: keeps --help and list free of torch (the task registry and the
    # method help are torch-free)
    from pefteval.config import METHOD_HELP
    from pefteval.models import ALIASES
    from pefteval.tasks import TASKS
    from pefteval.tasks.user import USER_TASKS, register_include_paths

    register_include_paths(include_path or [])

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
        if name in USER_TASKS:
            facts.append(f"from {USER_TASKS[name].directory}")
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
