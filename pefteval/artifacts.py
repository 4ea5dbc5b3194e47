"""What a trial saves of its trained model, in the ecosystem's own formats, and how it is read back.

- a peft method (LoRA, AdaLoRA, Prefix, IA3, any ``peft_type``): ``adapter/``, written by peft's
  ``save_pretrained`` (``adapter_config.json`` and ``adapter_model.safetensors``; a new task head is
  one of peft's ``modules_to_save`` and is saved with it), which ``PeftModel.from_pretrained(base,
  path)``, lm-evaluation-harness' ``peft=`` and vLLM's LoRA loading read;
- FFT and top-k FFT: ``model/``, a whole model as ``save_pretrained`` writes it (``config.json`` with
  the task's ``id2label``, safetensors weights, the tokenizer), which ``AutoModelFor...from_pretrained``
  reads;
- BitFit: ``bitfit/``: the tensors it trained (biases and the task head, under the model's own
  parameter names) in ``bitfit.safetensors`` and ``bitfit_config.json`` (the base model, the model
  config it was trained with); ``load_bitfit(path)`` gives the trained model back.

Results directories written before these formats hold ``trainable.safetensors`` (every trained
tensor under the names of the trial's model); everything that reads weights reads it when the new
entry is absent.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from pefteval.errors import OutputError, UserError
from pefteval.files import is_write_failure, write_error

ADAPTER = "adapter"
MODEL = "model"
BITFIT = "bitfit"
LEGACY = "trainable.safetensors"
# every entry of a run directory that holds trained weights, in the order they are looked for
WEIGHT_ENTRIES = (ADAPTER, MODEL, BITFIT, LEGACY)
BITFIT_WEIGHTS = "bitfit.safetensors"
BITFIT_CONFIG = "bitfit_config.json"
FORMAT_VERSION = 1


def entry_for(method_type: str) -> str:
    """The run-directory entry that holds a method's trained weights."""
    if method_type == "fft":
        return MODEL
    if method_type == "bitfit":
        return BITFIT
    return ADAPTER


def saved_entry(run_dir: Path) -> str | None:
    """The entry of ``run_dir`` that holds its trained weights (a new one before the legacy file)."""
    for name in WEIGHT_ENTRIES:
        path = run_dir / name
        if path.is_dir() if name != LEGACY else path.is_file():
            return name
    return None


def is_weight_file(relative: str) -> bool:
    """Whether a run-directory file (posix path relative to it) is part of the trained weights."""
    head = relative.split("/", 1)[0]
    return head in WEIGHT_ENTRIES


def save_dir(target: Path, write: Any) -> None:
    """Write a directory through a temporary name and rename it into place when whole; a failed
    write removes it and raises OutputError naming the directory."""
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        write(tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_write_failure(err) and not isinstance(err, OutputError):
            raise write_error(target, err) from None
        raise


def save_trained(model: Any, run_dir: Path, method_type: str, tokenizer: Any, source: Any) -> Path:
    """Save a trained model's weights in the entry its method uses; returns the entry's path.
    ``source`` is the trial's ``models.ModelSource`` (where the base model is)."""
    entry = entry_for(method_type)
    target = run_dir / entry
    if entry == ADAPTER:
        def write(path: Path) -> None:
            # save_embedding_layers=False: LoRA on embed_tokens trains low-rank factors only; the
            # base embeddings stay as they are and are not copied into the adapter
            model.save_pretrained(str(path), safe_serialization=True, save_embedding_layers=False)
            _point_at_base(path / "adapter_config.json", source)
    elif entry == MODEL:
        def write(path: Path) -> None:
            save_whole(model, path)
            if tokenizer is not None:
                tokenizer.save_pretrained(str(path))
    else:
        def write(path: Path) -> None:
            from safetensors.torch import save_file

            state = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}
            save_file(state, str(path / BITFIT_WEIGHTS), metadata={"format": "pt"})
            (path / BITFIT_CONFIG).write_text(json.dumps({
                "pefteval_format": FORMAT_VERSION,
                "method": "bitfit",
                "base_model_name_or_path": source.path,
                "gguf_file": source.gguf_file,
                "architecture": type(model).__name__,
                "trained_tensors": sorted(state),
                "model_config": model.config.to_dict(),
            }, indent=2, sort_keys=True) + "\n")
            if tokenizer is not None:
                tokenizer.save_pretrained(str(path))
    save_dir(target, write)
    return target


def save_whole(model: Any, path: Path) -> None:
    """``save_pretrained`` of a whole model in safetensors. A model loaded from a GGUF file and
    dequantized there (every weight a plain tensor, as pefteval trains it) is saved as the plain
    model it now is: transformers would refuse it as "quantized with gguf", and its config would
    send a loader back to the GGUF reader."""
    quantizer = getattr(model, "hf_quantizer", None)
    config = getattr(model, "config", None)
    gguf = quantizer is not None and type(quantizer).__name__ == "GgufHfQuantizer"
    if gguf and getattr(quantizer, "packed_modules", None):
        raise UserError("this model holds GGUF-packed weights, which transformers cannot save: load it dequantized "
                        "(pefteval does, to train it)")
    saved_config = getattr(config, "quantization_config", None) if gguf else None
    if gguf:
        model.hf_quantizer = None
        if saved_config is not None:
            del config.quantization_config
    try:
        model.save_pretrained(str(path), safe_serialization=True)
    finally:
        if gguf:
            model.hf_quantizer = quantizer
            if saved_config is not None:
                config.quantization_config = saved_config


def _point_at_base(config_path: Path, source: Any) -> None:
    """adapter_config.json names the base model where a loader finds it: the hub id, or the local
    directory (a packaged model's directory in site-packages); a GGUF base is named by its file."""
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = source.path
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def load_state_into(model: Any, run_dir: Path) -> Any:
    """Put a finished trial's saved weights into ``model`` (the trial's base, built and with its
    method applied as the trial built it); returns the model."""
    from safetensors.torch import load_file

    entry = saved_entry(run_dir)
    if entry is None:
        raise UserError(missing_weights_message(run_dir))
    if entry == LEGACY:
        _copy_in(model, load_file(str(run_dir / LEGACY)), run_dir / LEGACY)
        return model
    if entry == BITFIT:
        _copy_in(model, load_file(str(run_dir / BITFIT / BITFIT_WEIGHTS)), run_dir / BITFIT)
        return model
    if entry == MODEL:
        _copy_in(model, _read_model_dir(run_dir / MODEL), run_dir / MODEL, whole=True)
        return model
    return load_adapter_into(model, run_dir)


def load_adapter_into(model: Any, run_dir: Path) -> Any:
    """Load a peft trial's saved adapter into ``model``, the trial's base with its method applied as
    the trial applied it (so the same tensors train as in the trial: peft's own from_pretrained
    would not make a prompt-learning adapter trainable). AdaLoRA's saved ranks (``rank_pattern``)
    shrink the fresh adapter to them first, as peft does when it loads one."""
    from peft import load_peft_weights, set_peft_model_state_dict

    path = run_dir / ADAPTER
    saved = json.loads((path / "adapter_config.json").read_text())
    config = model.peft_config["default"]
    if saved.get("rank_pattern"):
        config.rank_pattern = saved["rank_pattern"]
    result = set_peft_model_state_dict(model, load_peft_weights(str(path), device="cpu"))
    # peft loads a prompt-learning adapter's prompt_embeddings itself, and still lists them as unexpected
    unexpected = [k for k in getattr(result, "unexpected_keys", []) or []
                  if not (config.is_prompt_learning and k == "prompt_embeddings")]
    if unexpected:
        raise UserError(f"{path} holds tensors the trial's model does not have ({', '.join(unexpected[:3])}): it "
                        "was not saved by this trial")
    return model


def _read_model_dir(path: Path) -> dict[str, Any]:
    """Every tensor of a save_pretrained directory's safetensors weights (whole or sharded)."""
    from safetensors.torch import load_file

    index = path / "model.safetensors.index.json"
    if index.is_file():
        state: dict[str, Any] = {}
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            state.update(load_file(str(path / shard)))
        return state
    return load_file(str(path / "model.safetensors"))


def _copy_in(model: Any, state: dict[str, Any], source: Path, whole: bool = False) -> None:
    """Copy saved tensors into the model's parameters of the same names. ``whole``: a complete
    model's weights, where tied parameters were saved once (transformers drops the tied copy)."""
    params = dict(model.named_parameters())
    unknown = sorted(set(state) - set(params))
    if unknown:
        raise UserError(f"{source} holds tensors the trial's model does not have ({', '.join(unknown[:3])}"
                        f"{'...' if len(unknown) > 3 else ''}): it was not saved by this trial")
    for name, value in state.items():
        params[name].data.copy_(value.to(params[name].dtype))
    if whole:
        missing = [n for n in params if n not in state]
        untied = [n for n in missing if not _is_tied(model, n)]
        if untied:
            raise UserError(f"{source} lacks {', '.join(untied[:3])}: not a whole model saved by this trial")


def _is_tied(model: Any, name: str) -> bool:
    """Whether a parameter shares its tensor with another one (the LM head tied to the embeddings)."""
    params = dict(model.named_parameters(remove_duplicate=False))
    target = params[name]
    return any(p is target for n, p in params.items() if n != name)


def missing_weights_message(run_dir: Path) -> str:
    result = run_dir / "result.json"
    removed = False
    if result.is_file():
        try:
            removed = bool(json.loads(result.read_text()).get("weights_removed"))
        except ValueError:
            removed = False
    if removed:
        return (f"{run_dir}: this trial's weights were removed under save_weights: selected (it is not at its "
                "method and task's validation-selected grid point); its increments and probe are kept. To keep "
                "every trial's weights, run the experiment into a new --out with save_weights: all")
    return (f"{run_dir} holds no trained weights ({', '.join(WEIGHT_ENTRIES)}): not a finished trial's run "
            "directory, or one run with save_weights: none (complete trials are not retrained in place: run into "
            "a new --out with save_weights: all or selected)")


def remove_weights(run_dir: Path) -> list[str]:
    """Delete a run directory's trained weights (every entry); returns what was removed."""
    removed = []
    for name in WEIGHT_ENTRIES:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
            removed.append(name + "/")
        elif path.is_file():
            path.unlink()
            removed.append(name)
    return removed


def load_bitfit(path: str | Path, base: str | None = None, **from_pretrained: Any) -> Any:
    """A BitFit trial's trained model from its ``bitfit/`` directory (or an export of it): the base
    model loaded with transformers (``base``, default the one it was trained from), its trained
    biases and task head put in. ``from_pretrained`` goes to transformers' ``from_pretrained``
    (``dtype``, ``device_map``, ...)."""
    import transformers
    from safetensors.torch import load_file

    path = Path(path)
    config_path = path / BITFIT_CONFIG
    if not config_path.is_file():
        raise UserError(f"{path} has no {BITFIT_CONFIG}: not a BitFit trial's bitfit/ directory")
    saved = json.loads(config_path.read_text())
    model_config = dict(saved["model_config"])
    architecture = saved["architecture"]
    cls = getattr(transformers, architecture, None)
    if cls is None:
        raise UserError(f"{path}: transformers {transformers.__version__} has no {architecture}")
    config = transformers.AutoConfig.for_model(model_config.pop("model_type"), **model_config)
    base = base or saved["base_model_name_or_path"]
    gguf = saved.get("gguf_file") if base == saved["base_model_name_or_path"] else None
    options: dict[str, Any] = {"trust_remote_code": False, "ignore_mismatched_sizes": True, **from_pretrained}
    if gguf:
        options["gguf_file"] = gguf
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the head is reported as newly initialised: it is replaced below
    try:
        model = cls.from_pretrained(base, config=config, **options)
    finally:
        hf_logging.set_verbosity(verbosity)
    state = load_file(str(path / BITFIT_WEIGHTS))
    _copy_in(model, state, path)
    model.eval()
    return model


def saved_tensors(run_dir: Path) -> dict[str, Any]:
    """Every tensor a trial saved of its trained model, under the names its entry stores them
    (peft's adapter names, the model's own parameter names, or the legacy file's)."""
    from safetensors.torch import load_file

    entry = saved_entry(run_dir)
    if entry is None:
        raise UserError(missing_weights_message(run_dir))
    if entry == ADAPTER:
        return load_file(str(run_dir / ADAPTER / "adapter_model.safetensors"))
    if entry == MODEL:
        return _read_model_dir(run_dir / MODEL)
    if entry == BITFIT:
        return load_file(str(run_dir / BITFIT / BITFIT_WEIGHTS))
    return load_file(str(run_dir / LEGACY))
