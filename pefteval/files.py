"""Writing results files so that a reader never sees half of one and a failure names the file.

Every file pefteval writes goes to a temporary name beside its target and is renamed into place
only when it is whole; a write that fails (no space left, a read-only file system, a file where a
directory should be) removes the temporary file and raises :class:`OutputError` naming the target
and the operating system's reason ("no space left on device while writing runs/.../increments.safetensors").
"""

from __future__ import annotations

import errno
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pefteval.errors import OutputError


def os_reason(err: BaseException) -> str:
    """The operating system's words for a failed write, lower case ("no space left on device")."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror[0].lower() + err.strerror[1:]
    # safetensors reports I/O errors as "Error while serializing: I/O error: No space left on device (os error 28)"
    match = re.search(r"os error (\d+)", str(err))
    if match:
        return os.strerror(int(match.group(1))).lower()
    return str(err) or type(err).__name__


def write_error(path: str | Path, err: BaseException) -> OutputError:
    return OutputError(f"{os_reason(err)} while writing {path}")


def is_write_failure(err: BaseException) -> bool:
    """An OSError, or a library's error that wraps one (safetensors' SafetensorError)."""
    return isinstance(err, OSError) or type(err).__name__ == "SafetensorError"


@contextmanager
def atomic_target(path: str | Path) -> Iterator[Path]:
    """Yields the temporary path to write ``path`` through; renames it into place on success, removes
    it and raises OutputError on a failed write."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        yield tmp
        tmp.replace(path)
    except BaseException as err:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if is_write_failure(err) and not isinstance(err, OutputError):
            raise write_error(path, err) from None
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write via a temporary file, fsync and rename, so readers never see a partial file."""
    with atomic_target(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True))


def save_tensors(tensors: dict[str, Any], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """A safetensors file, written whole or not at all."""
    from safetensors.torch import save_file  # torch stays out of the command line's imports

    with atomic_target(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def make_dir(path: str | Path) -> Path:
    """``mkdir -p`` whose failure is an OutputError naming the reason ("... is a file", read-only)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputError(f"{path} is a file, not a directory: pass a directory (it is created if missing)") from None
    except NotADirectoryError:
        parent = next((p for p in path.parents if p.exists() and not p.is_dir()), path.parent)
        raise OutputError(f"cannot create {path}: {parent} is a file, not a directory") from None
    except OSError as err:
        raise OutputError(f"cannot create {path}: {os_reason(err)}") from None
    return path


def check_writable(directory: Path) -> None:
    """Fail early, with the reason, where ``directory`` cannot take new files (read-only, full)."""
    probe = directory / f".pefteval-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise OutputError(f"{directory}: no space left on device; free some space and run again") from None
        raise OutputError(f"cannot write in {directory}: {os_reason(err)}") from None
    finally:
        try:
            probe.unlink(missing_ok=True)
        except OSError:
            pass


def check_out_dir(path: Path) -> None:
    """Refuse, without creating anything, a results directory that cannot be made or written: a file
    in its place or above it, or a read-only file system."""
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path} is a file, not a directory: pass a directory (it is created if missing)")
    existing = next(p for p in [path, *path.parents] if p.exists())
    if not existing.is_dir():
        raise OutputError(f"cannot create {path}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        read_only = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
        why = "it is on a read-only file system" if read_only else "permission denied"
        raise OutputError(f"cannot write in {existing}: {why}; pass an --out directory you can write to")
