"""The Ray executor (``pefteval run CONFIG --executor ray [--ray-address auto|HOST:PORT]``): every
trial is a Ray task with the CPUs, GPUs and memory of ``resources:``; the driver, this process,
stays the only writer of ``results.sqlite``.

Files: a trial's run directory lives under ``--out``, which must be storage every node sees at the
same path (a shared file system). The driver writes each trial's ``trial.json`` before it submits
the task; a task on a node that cannot see it fails at once, saying so, and nothing is lost. Each
task runs its trial in a child process (``python -m pefteval.worker``, or ``accelerate launch`` for
``--num-processes``), so a trial still has a process of its own; the child dies with the task's
worker (``PR_SET_PDEATHSIG``). Progress comes from the run directory's ``events.jsonl``, the record
from its ``result.json``.

Faults: tasks are not retried by Ray (``max_retries=0``): a worker or node that dies mid-trial
leaves the trial recorded as failed (not complete), every finished trial stays in the store, and
the next run of the same command redoes only the unfinished ones. Ctrl-C cancels the running
tasks (their processes are killed) and exits 130.

Without ``--ray-address`` a local Ray instance is started for the run, on the loopback interface
only, with this machine's cores and GPUs, and stopped at the end. A cluster with Ray's token
authentication (on by default for clusters that ``ray start`` makes, from Ray 2.59) needs
``RAY_AUTH_MODE=token`` in the driver's environment, and the cluster's token in
``~/.ray/auth_token`` or ``RAY_AUTH_TOKEN``: pefteval never reads or writes it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pefteval.errors import UserError

TASK_INFO = "ray_task.json"  # where the task ran: node, worker pid


@dataclass
class RayJob:
    """One trial as a Ray task, with the interface of ``sweep.Job``."""

    index: int
    trial: Any
    run_dir: Path
    ref: Any
    gpus: str | None = None
    offset: int = 0
    record: dict[str, Any] | None = None
    started: float = field(default_factory=time.time)
    receiver: Any = None  # never a pipe: polled

    @property
    def pid(self) -> int | None:
        info = _task_info(self.run_dir)
        return info.get("pid") if info else None

    @property
    def where(self) -> str | None:
        info = _task_info(self.run_dir)
        return f"ray node {info.get('node_ip')} ({info.get('host')})" if info else None

    def poll(self, progress: Any) -> bool:
        import ray

        from pefteval.sweep import EVENTS, _replay

        ready, _ = ray.wait([self.ref], timeout=0)
        self.offset = _replay(self.run_dir / EVENTS, self.offset, progress, self.index)
        if not ready:
            return False
        try:
            self.record = ray.get(self.ref)
        except ray.exceptions.RayError as err:  # the worker or its node died, or the task was cancelled
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            self.record = {"status": "failed",
                           "error": f"the Ray task running this trial died ({type(err).__name__}: {first}); it is "
                                    "not complete, and the next run of the same command redoes it"}
        return True

    def kill(self) -> None:
        import ray

        ray.cancel(self.ref, force=True)


def _task_info(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((run_dir / TASK_INFO).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def run_trial_task(run_dir: str, data_dir: str | None, command: list[str] | None) -> dict[str, Any]:
    """The body of a trial's Ray task, on whichever node Ray picked: the trial in a child process."""
    import ray

    run = Path(run_dir)
    host = socket.gethostname()
    if not (run / "trial.json").is_file():
        return {"status": "failed",
                "error": f"{run / 'trial.json'} is not there on Ray node {host}: --out must be on storage every node "
                         "of the cluster sees at the same path (a shared file system), or the trial's files would be "
                         "lost; put --out there, or run without --executor ray"}
    context = ray.get_runtime_context()
    (run / TASK_INFO).write_text(json.dumps({"host": host, "pid": os.getpid(),
                                             "node_ip": ray.util.get_node_ip_address(),
                                             "node_id": context.get_node_id()}))
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    if command is None:
        command = [sys.executable, "-m", "pefteval.worker", run_dir, *([data_dir] if data_dir else [])]
    with open(run / "launch.txt", "w") as out:
        proc = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    result = run / "result.json"
    if result.is_file():
        return json.loads(result.read_text())
    from pefteval.sweep import _tail

    tail = [*_tail(run / "log.txt"), *_tail(run / "launch.txt")]
    return {"status": "failed",
            "error": f"trial process exited with code {proc.returncode} on {host}: {' | '.join(tail)}"}


class RayExecutor:
    """Connects to a Ray cluster (or starts a local one) and submits trials as tasks."""

    def __init__(self, address: str | None, cpus_per_trial: int, gpus_per_trial: int, memory_gb: float | None):
        if address is None:
            # Ray's switch for a single-machine instance: every Ray process then listens on 127.0.0.1
            # only (read when ray is imported, so set first)
            os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        try:
            import ray
        except ImportError:
            raise UserError("--executor ray needs Ray: pip install 'pefteval[ray]'") from None
        self.ray = ray
        self.started_local = address is None
        try:
            if address is None:
                from pefteval.sweep import usable_cores, visible_gpus

                # address="local": a new instance for this run, never a cluster found on the machine
                ray.init(address="local", num_cpus=usable_cores(), num_gpus=len(visible_gpus()),
                         include_dashboard=False, log_to_driver=False, configure_logging=False)
            else:
                ray.init(address=address, log_to_driver=False, configure_logging=False)
        except (ConnectionError, ValueError, RuntimeError) as err:
            raise UserError(f"--ray-address {address}: cannot connect to a Ray cluster there ({err}); start one "
                            "(`ray start --head` on its main node) or leave --ray-address out for a local one") \
                from None
        self.cpus = cpus_per_trial
        self.gpus = gpus_per_trial
        options: dict[str, Any] = {"num_cpus": cpus_per_trial, "num_gpus": gpus_per_trial, "max_retries": 0}
        if memory_gb is not None:
            options["memory"] = int(memory_gb * 2**30)
        self.task = ray.remote(**options)(run_trial_task)

    def capacity(self) -> int:
        """How many trials the cluster runs at once: its CPUs (and GPUs) over a trial's."""
        total = self.ray.cluster_resources()
        by_cpu = int(total.get("CPU", 1) // max(self.cpus, 1))
        by_gpu = int(total.get("GPU", 0) // self.gpus) if self.gpus else by_cpu
        if min(by_cpu, by_gpu) < 1:
            raise UserError(f"the Ray cluster has {total.get('CPU', 0):g} CPU(s) and {total.get('GPU', 0):g} GPU(s); a "
                            f"trial asks for {self.cpus} CPU(s) and {self.gpus} GPU(s) (resources:), so none would "
                            "ever start")
        return max(1, min(by_cpu, by_gpu))

    def start(self, index: int, trial: Any, run_dir: Path, data_dir: Path | None, command: list[str] | None) -> RayJob:
        ref = self.task.remote(str(run_dir), str(data_dir) if data_dir else None, command)
        return RayJob(index, trial, run_dir, ref)

    def close(self) -> None:
        self.ray.shutdown()
