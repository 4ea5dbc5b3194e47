"""``pefteval adversarial generate``: write a generated Adversarial SQuAD set to a SQuAD JSON file."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from pefteval.cli_common import CONTEXT_SETTINGS, user_errors
from pefteval.errors import DataError, UserError

adversarial_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                              context_settings=CONTEXT_SETTINGS,
                              help="Generate the adversarial evaluation sets that have no released files.")

DATASETS = ("squad",)


def _squad_sources(data_dir: str | None, max_examples: int | None) -> tuple[list[Any], list[Any], str]:
    """(the AddSent source questions from SQuAD dev, in AddSent's order, capped; all of dev; source key)."""
    from pefteval.tasks import resolve_data_dir, squad
    from pefteval.tasks.squad import data as squad_data

    path = resolve_data_dir(data_dir)
    if path is not None:
        dev = squad.read_squad_json(path / squad.DEV_FILE, "SQuAD dev file")
        addsent = squad.read_squad_json(path / squad.ADV_FILES["AddSent"], "Adversarial SQuAD AddSent file")
    else:
        dev = squad_data.hub_split(None, "validation")
        addsent = squad_data.hub_split("AddSent", "validation", squad_data.HUB_ADVERSARIAL)
    by_id = {x.id: x for x in dev}
    sources = [by_id[i] for i in squad.adversarial_sources(addsent) if i in by_id]
    if not sources:
        raise DataError("none of AddSent's source questions is in the SQuAD dev set; are both files SQuAD v1.1?")
    return sources[:max_examples] if max_examples else sources, dev, squad._source_key(path)


@adversarial_app.command()
@user_errors
def generate(
    dataset: str = typer.Argument(..., help="the dataset to attack: squad"),
    attack: str = typer.Option(..., "--attack", help="AddAnsCtx, AddNegAns, AddAny or AddAnyExtend"),
    out: Path = typer.Option(..., "--out", help="SQuAD v1.1 JSON to write: the source questions and their variants"),
    model: Optional[Path] = typer.Option(None, "--model", help="run directory of a finished SQuAD trial; "
                                         "needed by AddAny and AddAnyExtend, which search against it"),
    max_examples: Optional[int] = typer.Option(None, "--max-examples", min=1,
                                               help="attack only the first N of AddSent's 1,000 source questions"),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="local data directory; default "
                                           "$PEFTEVAL_DATA_DIR, else the Hugging Face hub"),
    seed: int = typer.Option(0, "--seed", help="seed of the per-question random choices"),
) -> None:
    """Generate an Adversarial SQuAD set (cached; an identical second run reads the cache)."""
    # imported here, not at the top: keeps --help and list free of torch
    from pefteval.config import AttackConfig
    from pefteval.tasks.squad.attacks import ATTACKS, MODEL_FREE, cache_path, generated_set, write_squad_json

    if dataset not in DATASETS:
        raise UserError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
    if attack not in ATTACKS:
        raise UserError(f"--attack {attack!r}: choose one of {', '.join(ATTACKS)}")
    if attack not in MODEL_FREE and model is None:
        raise UserError(f"{attack} searches against a trained model: pass --model RUN_DIR, the run directory of a "
                        "finished SQuAD trial whose weights were kept (save_weights: all, or selected)")
    scorer = None
    if attack not in MODEL_FREE:
        from pefteval.kinds import load_run_predictor

        scorer = load_run_predictor(model)
    elif model is not None:
        typer.echo(f"note: {attack} does not use a model; ignoring --model", err=True)
    sources, dev, source_key = _squad_sources(data_dir, max_examples)
    settings = AttackConfig(seed=seed)
    hit = cache_path(attack, sources, settings, scorer, source_key).is_file()
    items = generated_set(attack, sources, settings, pool=dev, model=scorer, source_key=source_key)
    write_squad_json(out, items)
    typer.echo(f"{attack}: {len(items) - len(sources)} variants of {len(sources)} source questions "
               f"({'cache hit' if hit else 'generated and cached'}); wrote {len(items)} questions to {out}")
