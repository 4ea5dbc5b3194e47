"""``pefteval export OUT --trial KEY --to DIR [--merge]``: a finished trial's model, standalone.

Without ``--merge`` the trial's own entry is copied (``adapter/``: a peft adapter, with the
tokenizer beside it; ``model/``: a whole model; ``bitfit/``: BitFit's tensors and config). With
``--merge`` the trained model is rebuilt and written whole with ``save_pretrained`` (config with
``id2label``, safetensors weights, tokenizer): an adapter merged into its base weights
(``merge_and_unload``), BitFit's biases put into the base. Prefix and prompt tuning add virtual
tokens rather than change weights, so they cannot be merged.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from pefteval.artifacts import (
    ADAPTER,
    BITFIT,
    LEGACY,
    MODEL,
    missing_weights_message,
    save_dir,
    save_whole,
    saved_entry,
)
from pefteval.errors import UserError
from pefteval.store import ResultStore

# peft methods whose trained part is not a change of the base weights
UNMERGEABLE = ("prefix", "prompt_tuning", "p_tuning", "PREFIX_TUNING", "PROMPT_TUNING", "P_TUNING",
               "MULTITASK_PROMPT_TUNING", "CPT")


def find_trial(out: Path, key: str) -> dict[str, Any]:
    """The complete record whose key is ``key`` or starts with it (a unique prefix)."""
    store_path = out / "results.sqlite"
    with ResultStore(store_path, read_only=True) as store:
        records = list(store.records())
    matches = [r for r in records if r["key"] == key] or [r for r in records if r["key"].startswith(key)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        shown = ", ".join(f"{r['key']} ({r['config']['task']} {r['config']['method_label']} seed "
                          f"{r['config']['seed']})" for r in records[:8])
        raise UserError(f"no complete trial in {out} has key {key!r}"
                        + (f"; complete trials: {shown}{' ...' if len(records) > 8 else ''}" if records else
                           "; it holds no complete trial") + " (`pefteval status OUT` lists them)")
    raise UserError(f"key prefix {key!r} matches {len(matches)} trials in {out} "
                    f"({', '.join(r['key'] for r in matches[:5])}): give more of the key")


def export_trial(out: str | Path, key: str, to: str | Path, merge: bool = False) -> dict[str, Any]:
    """Write trial ``key``'s trained model to ``to`` (which must be absent or empty); returns what
    was written (``{"key", "format", "path", "files"}``)."""
    out, to = Path(out), Path(to)
    record = find_trial(out, key)
    run_dir = out / record["run_dir"]
    entry = saved_entry(run_dir)
    if entry is None:
        raise UserError(missing_weights_message(run_dir))
    if to.exists() and (not to.is_dir() or any(to.iterdir())):
        raise UserError(f"{to} exists and is not an empty directory: choose a new --to directory")
    method = record["config"]["method"]
    method_type = method.get("type")
    if merge and (method_type == "prefix" or method.get("peft_type", "").upper() in UNMERGEABLE):
        raise UserError(f"trial {record['key']} trained {record['config']['method_label']} ({method_type}): "
                        "prefix and prompt tuning add virtual tokens instead of changing weights, so they cannot "
                        "be merged into the base model; export without --merge (a peft adapter)")
    if merge or entry == LEGACY:
        fmt = _export_merged(run_dir, to)
    else:
        _copy_entry(run_dir, entry, to)
        fmt = {ADAPTER: "peft-adapter", MODEL: "transformers-model", BITFIT: "bitfit"}[entry]
    return {"key": record["key"], "format": fmt, "path": str(to),
            "files": sorted(p.relative_to(to).as_posix() for p in to.rglob("*") if p.is_file())}


def _copy_entry(run_dir: Path, entry: str, to: Path) -> None:
    def write(path: Path) -> None:
        shutil.copytree(run_dir / entry, path, dirs_exist_ok=True)
        if entry == ADAPTER:  # the tokenizer the adapter was trained with, beside it
            _, kind, _ = _kind_of(run_dir)
            kind.tokenizer.save_pretrained(str(path))

    save_dir(to, write)


def _kind_of(run_dir: Path) -> tuple[Any, Any, Any]:
    """The trial's task, its kind (the tokenizer loaded) and its config."""
    from pefteval.kinds import prepare, read_trial
    from pefteval.models import load_tokenizer

    trial, _key = read_trial(run_dir)
    task, kind, source, _config = prepare(trial)
    kind.tokenizer = load_tokenizer(source)
    return task, kind, trial


def _export_merged(run_dir: Path, to: Path) -> str:
    """The trained model rebuilt, merged when it is a peft model, and saved whole."""
    from peft import PeftModel

    from pefteval.kinds import rebuild

    model, kind, _trial = rebuild(run_dir)
    if isinstance(model, PeftModel):
        model = model.merge_and_unload()
    model = model.to("cpu")

    def write(path: Path) -> None:
        save_whole(model, path)
        kind.tokenizer.save_pretrained(str(path))

    save_dir(to, write)
    return "transformers-model"

