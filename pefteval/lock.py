"""One sweep per results directory at a time.

``pefteval run`` holds an exclusive lock on ``OUT/.pefteval.lock`` (``flock``) from before it
writes anything into OUT until it exits, however it exits: the kernel releases the lock of a
process that is killed. The lock file says who holds it (pid, host, start time, command), so a
second run can name the process it waits for, and a run that finds the lock free but the file
naming an earlier holder knows it takes over from a run that was killed. ``report``,
``analyze`` and ``status`` read OUT without the lock.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from pefteval.errors import UserError
from pefteval.files import write_error

LOCK_NAME = ".pefteval.lock"


def holder(out: Path) -> dict[str, Any] | None:
    """Who the lock file says holds OUT's lock, if anyone wrote it (without taking the lock)."""
    try:
        text = (out / LOCK_NAME).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    return _parse(text)


def is_held(out: Path) -> bool:
    """Whether a live run holds OUT's lock now (tested by trying it, and letting go at once)."""
    path = out / LOCK_NAME
    if not path.is_file():
        return False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing releases a lock this call took
    return False


class ResultsLock:
    """The exclusive lock on a results directory, held while ``with`` lasts."""

    def __init__(self, out: Path):
        self.out = out
        self.path = out / LOCK_NAME
        self.fd: int | None = None
        self.took_over: dict[str, Any] | None = None  # the earlier holder's details, when it was killed

    def __enter__(self) -> ResultsLock:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise write_error(self.path, err) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            other = _parse(_read(fd))
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise UserError(busy_message(self.out, other)) from None
            raise UserError(f"cannot lock {self.path} ({os.strerror(err.errno or 0)}): the file system of {self.out} "
                            "does not support file locks; put --out on one that does (a local disk, or NFSv4)") \
                from None
        earlier = _parse(_read(fd))
        if earlier and not (earlier.get("pid") == os.getpid() and earlier.get("host") == socket.gethostname()):
            self.took_over = earlier
        mine = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                "command": " ".join(["pefteval", *sys.argv[1:]])[:500]}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(mine) + "\n").encode(), 0)
        except OSError as err:
            os.close(fd)
            raise write_error(self.path, err) from None
        self.fd = fd
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)  # free: the next run does not take it for a killed one
        except OSError:
            pass
        os.close(self.fd)  # releases the lock
        self.fd = None

    def takeover_note(self) -> str | None:
        if self.took_over is None:
            return None
        return (f"taking over {self.out} from an earlier run that is no longer running "
                f"({_who(self.took_over)}); its finished trials are in the store, its unfinished ones run again")


def busy_message(out: Path, other: dict[str, Any] | None) -> str:
    who = _who(other) if other else "a process that has not yet said who it is"
    stop = f"stop it (kill {other['pid']}" + (f" on {other['host']}" if other.get("host") else "") + ")" \
        if other and other.get("pid") else "stop it"
    return (f"{out} is in use by another `pefteval run` ({who}); two sweeps on one results directory would "
            f"train the same trials and remove each other's run directories. Wait for it to finish (`pefteval "
            f"status {out}` shows where it is), {stop} and run the same command again to resume, or give this "
            "run another --out")


def _who(info: dict[str, Any]) -> str:
    started = info.get("started")
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "?"
    return f"pid {info.get('pid', '?')} on {info.get('host', '?')}, since {since}: {info.get('command', '?')}"


def _read(fd: int) -> str:
    try:
        return os.pread(fd, 4096, 0).decode("utf-8", errors="replace")
    except OSError:
        return ""


def _parse(text: str) -> dict[str, Any] | None:
    try:
        info = json.loads(text)
    except json.JSONDecodeError:
        return None
    return info if isinstance(info, dict) else None
