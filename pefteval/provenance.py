"""What a complete trial promises: the files of its run directory, and the data it read.

On resume a complete row is trusted only while both still hold: its run directory still has every
file its record lists (at the size it was written), and the data files it read still have the
content hashes it recorded. The sweep redoes a trial whose files are gone and refuses, or with
``--accept-data-change`` redoes, a trial whose data changed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pefteval.tasks.base import file_sha256

# written while the trial runs (logs, progress, the record itself): not part of what it promises
_NOT_LISTED = {"log.txt", "result.json", "events.jsonl", "launch.txt", "ray_task.json"}


def _listed(path: Path) -> bool:
    name = path.name
    return not (name in _NOT_LISTED or name.endswith(".tmp") or (name.startswith("log.rank") and name.endswith(".txt")))


def files_manifest(run_dir: Path) -> dict[str, int]:
    """Every file a finished trial saved in its run directory (relative posix path -> bytes)."""
    return {p.relative_to(run_dir).as_posix(): p.stat().st_size for p in sorted(run_dir.rglob("*"))
            if p.is_file() and _listed(p)}


def missing_files(run_dir: Path, record: dict[str, Any]) -> list[str]:
    """What a complete trial's run directory lacks of what its record lists (result.json always;
    records of earlier releases list no other files)."""
    if not run_dir.is_dir():
        return ["the whole directory"]
    missing = [] if (run_dir / "result.json").is_file() else ["result.json"]
    for name, size in (record.get("files") or {}).items():
        path = run_dir / name
        if not path.is_file():
            missing.append(name)
        elif path.stat().st_size != size:
            missing.append(f"{name} (now {path.stat().st_size} bytes, written {size})")
    return missing


def data_fingerprint(reads: dict[str, str], data_dir: Path | None) -> dict[str, str]:
    """The data a trial read, as tasks.base.track_data_reads records it, with local files named
    relative to the data directory: the same files under another directory are the same data."""
    root = data_dir.resolve() if data_dir is not None else None
    out = {}
    for name, digest in reads.items():
        if not name.startswith("hub:") and root is not None:
            path = Path(name)
            if path.is_relative_to(root):
                name = path.relative_to(root).as_posix()
        out[name] = digest
    return dict(sorted(out.items()))


class DataCheck:
    """Compares recorded data fingerprints with the data as it is now; each local file is hashed at
    most once per sweep. ``current`` is what planning read (hub datasets are known only from it)."""

    def __init__(self, data_dir: Path | None, current: dict[str, str]):
        self.data_dir = data_dir
        self.current = data_fingerprint(current, data_dir)
        self._hashes: dict[str, str] = {}

    def _now(self, name: str) -> str | None:
        if name in self.current:
            return self.current[name]
        if name.startswith("hub:"):
            return None  # not loaded by this run's planning: nothing to compare with
        if name not in self._hashes:
            path = Path(name) if Path(name).is_absolute() or self.data_dir is None else self.data_dir / name
            self._hashes[name] = file_sha256(path) if path.is_file() else "missing"
        return self._hashes[name]

    def changes(self, recorded: dict[str, str] | None) -> list[str]:
        """How the data differs from what a trial recorded ("glue/SST-2/train.tsv changed"); empty
        when it is the same, or when the record predates fingerprints."""
        found = []
        for name, then in (recorded or {}).items():
            now = self._now(name)
            if now is None or now == then:
                continue
            found.append(f"{name} is missing" if now == "missing" else
                         f"{name} changed ({_short(then)} then, {_short(now)} now)")
        return found


def _short(digest: str) -> str:
    return digest.split(":", 1)[-1][:12]
