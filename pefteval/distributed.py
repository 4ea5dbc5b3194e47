"""One trial on several processes, through 🤗 accelerate: DDP by default (gloo on CPU, NCCL on
CUDA), or what an ``accelerate`` config file says.

The sweep launches a distributed trial with ``accelerate launch`` (``launch_command``); every
rank runs the same recipe on the same data in the same order. ``train_model`` gives each rank its
share of every batch and lets DDP average the gradients, so an optimiser step sees the whole
batch, as one process would; every rank then evaluates the full splits with identical weights.
Only the main process writes records, run files and progress (``Dist.is_main``).
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import runpy
import signal
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pefteval.errors import UserError

# the accelerate distributed types a trial runs under: one process (NO), data parallel (DDP on GPUs
# or CPUs), and the sharded ones, where accelerate owns the optimizer's step (DeepSpeed ZeRO-2/3,
# on GPUs or, with the gloo backend, on CPUs; FSDP2, on GPUs only)
SUPPORTED_TYPES = ("MULTI_GPU", "MULTI_CPU", "NO", "DEEPSPEED", "FSDP")
SHARDED_TYPES = ("DEEPSPEED", "FSDP")


@dataclass
class Dist:
    """This process's place in a trial: rank and world size, and accelerate's ``Accelerator`` when
    there is more than one process. ``kind`` is accelerate's distributed type (``NO``, ``MULTI_CPU``,
    ``MULTI_GPU``, ``DEEPSPEED``, ``FSDP``); ``zero_stage`` is DeepSpeed's ZeRO stage."""

    rank: int = 0
    world: int = 1
    accelerator: Any = None
    kind: str = "NO"
    zero_stage: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        """accelerate owns the optimizer step (DeepSpeed, FSDP), not pefteval's loop."""
        return self.kind in SHARDED_TYPES

    @property
    def partitioned(self) -> bool:
        """Each process holds only its shard of the weights (FSDP, ZeRO-3): reading them is a collective."""
        return self.kind == "FSDP" or (self.kind == "DEEPSPEED" and self.zero_stage == 3)

    @property
    def parallelism(self) -> str:
        """What the record says of how the trial's processes shared the work."""
        if self.world == 1:
            return "none"
        return {"DEEPSPEED": f"deepspeed-zero{self.zero_stage}", "FSDP": "fsdp2-full-shard"}.get(self.kind, "ddp")

    def versions(self) -> dict[str, str]:
        from importlib.metadata import version

        names = ["accelerate"] + (["deepspeed"] if self.kind == "DEEPSPEED" else [])
        return {name: version(name) for name in names}

    @classmethod
    def from_env(cls, device_type: str) -> Dist:
        """This process under ``accelerate launch`` (WORLD_SIZE > 1), else a single process."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        from accelerate import Accelerator, PartialState

        deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
        if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and device_type != "cuda":
            raise UserError(f"FSDP runs on CUDA devices only (accelerate has no FSDP on {device_type}); on a CPU "
                            "use configs/accelerate/zero3.yaml (DeepSpeed ZeRO-3, gloo) or ddp.yaml")
        if deepspeed and device_type == "cpu":
            # accelerate picks no backend for DeepSpeed without a GPU: gloo, set before the Accelerator
            PartialState(backend="gloo")
        # cpu=True makes accelerate pick its multi-CPU (gloo) backend under torchrun's variables; it
        # would also turn DeepSpeed off
        accelerator = Accelerator(cpu=device_type == "cpu" and not deepspeed)
        kind = str(getattr(accelerator.distributed_type, "value", accelerator.distributed_type))
        stage = int(accelerator.state.deepspeed_plugin.zero_stage) if kind == "DEEPSPEED" else 0
        return cls(accelerator.process_index, accelerator.num_processes, accelerator, kind, stage)

    @contextlib.contextmanager
    def loading_whole(self, always: bool = False) -> Iterator[None]:
        """Models loaded inside are whole in this process. Under ZeRO-3 transformers otherwise builds
        every model partitioned over the processes (``deepspeed.zero.Init``, a collective); pefteval
        does that only when the config file's ``zero3_init_flag`` asks for it, and never for
        ``always`` (the main process's unsharded copy of the trained model)."""
        plugin = self.accelerator.state.deepspeed_plugin if self.kind == "DEEPSPEED" and self.zero_stage == 3 else None
        if plugin is None or (plugin.zero3_init_flag and not always):
            yield
            return
        from transformers.integrations import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()
        try:
            yield
        finally:
            plugin.set_deepspeed_weakref()  # generation then syncs the processes, as ZeRO-3 needs

    def prepare(self, model: Any, optimizer: Any, hp: Any) -> tuple[Any, Any]:
        """The model wrapped for training on several processes (DDP, or the config file's DeepSpeed
        engine or FSDP2 shards) and the optimizer that steps it; both themselves on one process."""
        if self.accelerator is None:
            return model, optimizer
        if not self.sharded:
            return self.accelerator.prepare_model(model, device_placement=False), optimizer
        if self.kind == "DEEPSPEED":
            self._configure_deepspeed(hp)
        return self.accelerator.prepare(model, optimizer)

    def _configure_deepspeed(self, hp: Any) -> None:
        """DeepSpeed's settings that pefteval's training config decides: the micro-batch (each
        process's share of a batch; accumulation is pefteval's, so DeepSpeed's own is 1), gradient
        clipping, and bf16 weights (``model_dtype: bf16``: DeepSpeed keeps fp32 master weights)."""
        config = self.accelerator.state.deepspeed_plugin.deepspeed_config
        micro = max(1, math.ceil(hp.batch_size / self.world / hp.gradient_accumulation_steps))
        # explicit values other than these were refused before launch (check_trials_for)
        config.update({"train_micro_batch_size_per_gpu": micro, "train_batch_size": micro * self.world,
                       "gradient_accumulation_steps": 1, "gradient_clipping": hp.max_grad_norm})
        for key, enabled in (("bf16", hp.model_dtype == "bf16"), ("fp16", False)):
            config[key] = {**(config.get(key) or {}), "enabled": enabled}
        # pefteval's own AdamW (as on one process), partitioned by ZeRO
        config["zero_allow_untested_optimizer"] = True

    def no_sync(self, wrapped: Any, last: bool) -> contextlib.AbstractContextManager[Any]:
        """DDP exchanges gradients at the last micro-batch's backward only; sharded runs reduce them
        at every micro-batch (DeepSpeed at its accumulation boundary, see ``backward``)."""
        if self.world > 1 and not self.sharded and not last:
            return wrapped.no_sync()
        return contextlib.nullcontext()

    def backward(self, loss: Any, last: bool, scaler: Any) -> None:
        """Back-propagate one micro-batch's loss. DeepSpeed's engine clips and steps at the last
        micro-batch of a batch (its accumulation boundary), inside this call."""
        if self.kind == "DEEPSPEED":
            self.accelerator.deepspeed_engine_wrapped.backward(loss, sync_gradients=last)
        elif self.kind == "FSDP":
            self.accelerator.backward(loss)
        else:
            scaler.scale(loss).backward()

    def step(self, optimizer: Any, params: list[Any], max_norm: float, scaler: Any) -> None:
        """Clip the batch's gradients to ``max_norm`` and take the optimizer step (DeepSpeed did both
        in ``backward``)."""
        if self.kind == "DEEPSPEED":
            return
        if self.kind == "FSDP":
            self.accelerator.clip_grad_norm_(params, max_norm)
            optimizer.step()
            return
        import torch

        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        scaler.step(optimizer)
        scaler.update()

    def zero_grad(self, optimizer: Any) -> None:
        if self.kind != "DEEPSPEED":  # DeepSpeed's step zeroed them
            optimizer.zero_grad(set_to_none=True)

    def local_state(self, model: Any) -> dict[str, Any]:
        """A copy of this process's part of every trainable tensor: all of it, or its shard when
        the weights are partitioned. ``load_local_state`` puts it back (no collective)."""
        return {n: _local(p).detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def load_local_state(self, model: Any, state: dict[str, Any]) -> None:
        params = dict(model.named_parameters())
        for name, value in state.items():
            _local(params[name]).data.copy_(value)
        # ZeRO-3 keeps some weights gathered between forward passes (the small ones always): free
        # those copies, so the next forward gathers them again from the restored partitions
        gathered = [p for p in params.values() if hasattr(p, "ds_tensor") and p.ds_status.name == "AVAILABLE"]
        if gathered:
            gathered[0].partition(param_list=gathered)

    def full_trainable_state(self, model: Any) -> dict[str, Any]:
        """Every trainable tensor whole, on the CPU, on every process (a collective when the weights
        are partitioned: every process must call it)."""
        params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if self.kind == "DEEPSPEED" and self.zero_stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters([p for _, p in params]):
                return {n: p.detach().cpu().clone() for n, p in params}
        return {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().cpu().clone() for n, p in params}

    def sum(self, value: Any) -> Any:
        """A tensor summed over the processes (itself on one)."""
        if self.accelerator is None:
            return value
        import torch.distributed

        value = value.clone()
        torch.distributed.all_reduce(value)
        return value

    def barrier(self) -> None:
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()


def _local(param: Any) -> Any:
    """The part of a parameter this process holds: its ZeRO-3 partition, its FSDP2 shard, or itself."""
    if hasattr(param, "ds_tensor"):
        return param.ds_tensor
    if hasattr(param, "to_local"):
        return param.to_local()
    return param


def check_accelerate_config(path: Path) -> dict[str, Any]:
    """An accelerate config file pefteval can launch trials with, read; a user error otherwise."""
    if not path.is_file():
        raise UserError(f"--accelerate-config {path}: no such file (see configs/accelerate/)")
    try:
        settings = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise UserError(f"--accelerate-config {path}: not a YAML accelerate config ({err})") from None
    if not isinstance(settings, dict):
        raise UserError(f"--accelerate-config {path}: not a mapping of accelerate settings")
    kind = str(settings.get("distributed_type", "NO")).upper()
    if kind not in SUPPORTED_TYPES:
        raise UserError(f"--accelerate-config {path}: distributed_type {kind} is not supported; pefteval runs "
                        f"{', '.join(SUPPORTED_TYPES)} (see configs/accelerate/)")
    if kind == "FSDP":
        version = int((settings.get("fsdp_config") or {}).get("fsdp_version", 1))
        if version != 2:
            raise UserError(f"--accelerate-config {path}: fsdp_version {version}; pefteval runs FSDP2 only "
                            "(fsdp_version: 2, as in configs/accelerate/fsdp.yaml): FSDP1 wraps the model, so "
                            "generation and the kinds' predictors would bypass its sharding")
    if kind == "DEEPSPEED":
        import importlib.util

        if importlib.util.find_spec("deepspeed") is None:
            raise UserError(f"--accelerate-config {path} runs DeepSpeed, which is not installed: "
                            "pip install 'pefteval[deepspeed]'")
    return settings


def check_trials_for(settings: dict[str, Any], path: Path, trials: list[Any]) -> None:
    """Refuse, before anything runs, the trials a sharded launch cannot train as one process would."""
    kind = str(settings.get("distributed_type", "NO")).upper()
    if kind not in SHARDED_TYPES:
        return
    if kind == "DEEPSPEED":
        given = _deepspeed_settings(settings, path)
        owned = ("train_micro_batch_size_per_gpu", "train_batch_size", "gradient_accumulation_steps",
                 "gradient_clipping")
        # accelerate's own fields for these, besides a DeepSpeed JSON file's keys
        for key in owned:
            value = given.get(key, "auto")
            if value not in (None, "auto") and not (key == "gradient_accumulation_steps" and value == 1):
                raise UserError(f"--accelerate-config {path} sets {key}: {value}; pefteval derives it from each "
                                "trial's training config (batch_size, gradient_accumulation_steps, max_grad_norm): "
                                "set it to auto")
        for key in ("bf16", "fp16"):
            value = given.get(key)
            if isinstance(value, dict) and value.get("enabled", "auto") not in ("auto", False):
                raise UserError(f"--accelerate-config {path} enables DeepSpeed's {key}; pefteval decides the number "
                                "formats from training.precision and training.model_dtype (bf16 weights turn "
                                "DeepSpeed's bf16 on): set it to auto")
    label = "DeepSpeed" if kind == "DEEPSPEED" else "FSDP"
    for trial in trials:
        if trial.method.type == "adalora":
            raise UserError(f"--accelerate-config {path}: AdaLoRA's rank allocation reads every adapter weight's "
                            f"gradient after the backward pass, which {label} shards; run AdaLoRA trials with "
                            "DDP (configs/accelerate/ddp.yaml) or on one process")
        if kind == "FSDP":
            from pefteval.device import resolve_device

            if resolve_device(trial.training.device).type != "cuda":
                raise UserError(f"--accelerate-config {path}: FSDP runs on CUDA devices only (accelerate has no FSDP "
                                f"on {trial.training.device}); on a CPU use configs/accelerate/zero3.yaml (DeepSpeed "
                                "ZeRO-3 over gloo) or ddp.yaml")
        if trial.training.precision == "fp16":
            raise UserError(f"--accelerate-config {path}: precision fp16 needs pefteval's gradient scaler, which "
                            f"{label} replaces; use precision: bf16 (or fp32)")


def _deepspeed_settings(settings: dict[str, Any], path: Path) -> dict[str, Any]:
    """The DeepSpeed settings an accelerate config gives: its ``deepspeed_config`` fields, and the
    keys of the DeepSpeed JSON file it names."""
    import json

    fields = dict(settings.get("deepspeed_config") or {})
    given: dict[str, Any] = {}
    if fields.get("gradient_accumulation_steps") is not None:
        given["gradient_accumulation_steps"] = fields["gradient_accumulation_steps"]
    if fields.get("gradient_clipping") not in (None, "none"):
        given["gradient_clipping"] = fields["gradient_clipping"]
    file = fields.get("deepspeed_config_file")
    if file:
        file_path = (path.parent / file) if not Path(file).is_absolute() else Path(file)
        try:
            given.update(json.loads(file_path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise UserError(f"--accelerate-config {path}: deepspeed_config_file {file_path}: no such file") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise UserError(f"--accelerate-config {path}: deepspeed_config_file {file_path} is not JSON ({err})") \
                from None
    return given


def die_with_parent() -> None:
    """This process is killed when its parent goes (even by SIGKILL): a trial forked from the fork
    server (which goes when the sweep does), a rank of a distributed trial (when its launcher
    goes), the launcher (when the sweep goes). No orphan goes on writing into a results directory."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: an orphan finishes its trial and exits


def free_port() -> int:
    """A TCP port on the loopback interface nobody listens on now (for the rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch_command(run_dir: Path, data_dir: Path | None, num_processes: int,
                   accelerate_config: Path | None = None) -> list[str]:
    """``accelerate launch`` of one trial's worker on ``num_processes`` processes of this machine.
    A config file sets the distributed type (FSDP, DeepSpeed) and, for several machines, the
    machine rank and the main process's address; ``--num_processes`` is this run's."""
    # accelerate's launcher, started through this module so that it dies with the sweep
    command = [sys.executable, "-m", "pefteval.distributed"]
    if accelerate_config is not None:
        command += ["--config_file", str(accelerate_config)]
        settings = check_accelerate_config(accelerate_config)
        if int(settings.get("num_machines", 1)) == 1:  # one machine: a free port, so trials never collide
            command += ["--main_process_port", str(free_port())]
    else:
        # torchrun's launcher (--multi_gpu): on a CPU-only machine accelerate then uses gloo
        command += ["--multi_gpu", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                    "--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port())]
    command += ["--num_processes", str(num_processes), "-m", "pefteval.worker", str(run_dir)]
    if data_dir is not None:
        command.append(str(data_dir))
    return command


if __name__ == "__main__":  # accelerate launch, tied to the sweep that started it: see launch_command
    die_with_parent()
    sys.argv[0] = "accelerate launch"
    runpy.run_module("accelerate.commands.launch", run_name="__main__", alter_sys=True)
