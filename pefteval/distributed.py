"""One trial on several processes, through 🤗 accelerate: DDP by default (gloo on CPU, NCCL on
CUDA), or what an ``accelerate`` config file says.

The sweep launches a distributed trial with ``accelerate launch`` (``launch_command``); every
rank runs the same recipe on the same data in the same order. ``train_model`` gives each rank its
share of every batch and lets DDP average the gradients, so an optimiser step sees the whole
batch, as one process would; every rank then evaluates the full splits with identical weights.
Only the main process writes records, run files and progress (``Dist.is_main``).
"""

from __future__ import annotations

import ctypes
import os
import runpy
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pefteval.errors import UserError


@dataclass
class Dist:
    """This process's place in a trial: rank and world size, and accelerate's ``Accelerator`` when
    there is more than one process."""

    rank: int = 0
    world: int = 1
    accelerator: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device_type: str) -> Dist:
        """This process under ``accelerate launch`` (WORLD_SIZE > 1), else a single process."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        from accelerate import Accelerator

        # cpu=True makes accelerate pick its multi-CPU (gloo) backend under torchrun's variables
        accelerator = Accelerator(cpu=device_type == "cpu")
        return cls(accelerator.process_index, accelerator.num_processes, accelerator)

    def prepare(self, model: Any) -> Any:
        """The model wrapped for data-parallel training (DDP, or the config file's FSDP/DeepSpeed
        plugin); the model itself when there is one process."""
        if self.accelerator is None:
            return model
        return self.accelerator.prepare_model(model, device_placement=False)

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


# the accelerate distributed types pefteval's training loop runs: data parallel (DDP), on GPUs or CPUs
SUPPORTED_TYPES = ("MULTI_GPU", "MULTI_CPU", "NO")


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
        raise UserError(f"--accelerate-config {path}: distributed_type {kind} is not supported yet: pefteval's "
                        "training loop runs data-parallel trials (MULTI_GPU, MULTI_CPU: DDP); sharded FSDP and "
                        "DeepSpeed ZeRO need the model, optimizer and checkpoints handled by accelerate, which "
                        "pefteval does not do yet")
    return settings


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
