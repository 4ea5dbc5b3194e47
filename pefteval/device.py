"""Where a trial runs and in which number formats: the one place that knows about devices.

``resolve_device`` turns ``training.device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``) into a
``torch.device``; ``Placement`` carries it with the trial's precision (autocast dtype, and whether
fp16 needs a gradient scaler) and the dtype the weights are loaded and trained in. The model is
moved once, after loading; every batch follows the model (``to_model_device``), so the kinds'
predictors, the probe and the analyses run wherever the model is. Metrics that are plain Python
(SQL execution, SQuAD EM/F1) never see a tensor.
"""

from __future__ import annotations

import contextlib
import os
import platform
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pefteval.errors import UserError

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
MODEL_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def available_devices() -> list[str]:
    """The devices this process can use, in the form ``--device`` takes."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append("mps")
    return found


def resolve_device(spec: str) -> torch.device:
    """``auto`` is CUDA when there is one (the current device), else CPU; any other name must be a
    device that exists here, else a user error that lists the ones that do."""
    spec = spec.strip().lower()
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise UserError(f"device {spec!r}: not a device name; use auto, cpu, cuda, cuda:N or mps "
                        f"(here: {', '.join(available_devices())})") from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = device.index if device.index is not None else (torch.cuda.current_device() if count else 0)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and "LOCAL_RANK" in os.environ:
            index = int(os.environ["LOCAL_RANK"])  # one process per GPU under accelerate launch
        if index >= count:
            raise UserError(f"device {spec!r} is not here: this machine has "
                            f"{f'{count} CUDA device(s)' if count else 'no CUDA device'}; "
                            f"available: {', '.join(available_devices())}")
        return torch.device("cuda", index)
    if device.type == "mps":
        if "mps" not in available_devices():
            raise UserError(f"device 'mps' is not here; available: {', '.join(available_devices())}")
        return torch.device("mps")
    raise UserError(f"device {spec!r}: pefteval runs on cpu, cuda and mps; available: "
                    f"{', '.join(available_devices())}")


@dataclass(frozen=True)
class Placement:
    """A trial's device and number formats: ``precision`` is the autocast dtype (``fp32``: none),
    ``model_dtype`` the dtype of the weights (and so of the optimizer's master copy)."""

    device: torch.device
    precision: str = "bf16"
    model_dtype: str = "fp32"

    @classmethod
    def of(cls, hp: Any) -> Placement:
        return cls(resolve_device(hp.device), hp.precision, hp.model_dtype)

    @property
    def dtype(self) -> torch.dtype:
        return MODEL_DTYPES[self.model_dtype]

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        return autocast(self.precision, self.device.type)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """Loss scaling for fp16 (its range is too small for small gradients); a no-op otherwise."""
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def describe(self) -> dict[str, Any]:
        """What the record says of where and how the trial ran."""
        return {"device": describe_device(self.device), "device_type": self.device.type,
                "model_dtype": str(self.dtype).removeprefix("torch."),
                "autocast_dtype": str(AUTOCAST_DTYPES[self.precision]).removeprefix("torch.")
                if self.precision in AUTOCAST_DTYPES else None}


def autocast(precision: str, device_type: str = "cpu") -> contextlib.AbstractContextManager[Any]:
    """bf16 or fp16 autocast on the device type (the weights keep their own dtype), else a no-op."""
    dtype = AUTOCAST_DTYPES.get(precision)
    if dtype is None or device_type == "mps" and dtype is torch.bfloat16 and not _mps_bf16():
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype)


def _mps_bf16() -> bool:
    return hasattr(torch.backends, "mps") and torch.backends.mps.is_macos_or_newer(14, 0)


def model_device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def to_model_device(batch: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    """A batch of CPU tensors where ``model`` is; non-tensors as they are."""
    device = model_device(model)
    if device.type == "cpu":
        return batch
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"cuda:{device.index} ({props.name}, {props.total_memory / 2**30:.0f} GiB)"
    if device.type == "mps":
        return f"mps ({platform.machine()})"
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


def set_threads(threads: int | None) -> int:
    """CPU threads for intra-op parallelism: ``threads``, or all cores when None; returns the count."""
    count = threads if threads is not None else (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                                  else os.cpu_count() or 1)
    torch.set_num_threads(count)
    return count


def reset_peak_memory(device: torch.device) -> None:
    """Start counting the device's peak memory from now (the trial's start)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> dict[str, float]:
    """Peak device memory since ``reset_peak_memory``, allocated and reserved by PyTorch's caching
    allocator (MB); empty off CUDA (on CPU the record's peak RSS is the measure)."""
    if device.type != "cuda":
        return {}
    torch.cuda.synchronize(device)
    return {"peak_device_allocated_mb": torch.cuda.max_memory_allocated(device) / 2**20,
            "peak_device_reserved_mb": torch.cuda.max_memory_reserved(device) / 2**20}
