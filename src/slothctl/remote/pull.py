"""`slothctl pull`: copy a run folder from the runs volume into the local runs folder.

The volume is seen through `RunStore`, two methods wide: a Modal Volume in use
(`modal_app.VolumeStore`), a plain folder in tests (`FolderStore`). Each top-level item of the run
folder (adapter/, merged/, gguf/, summary.json, ...) replaces its local copy only once it is
completely downloaded, so an interrupted pull leaves the previous state. Checkpoints stay on the
volume unless asked for (they are only needed to continue training here).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, Protocol

from slothctl.events import Emit, ignore, status
from slothctl.errors import UsageError
from slothctl.runs import CHECKPOINT_INFO, CHECKPOINT_RE, atomic_dir


@dataclass(frozen=True)
class StoredFile:
    path: str  # relative to the store's root, "/"-separated
    size: int


class RunStore(Protocol):
    """Where remote run folders live."""

    name: str  # for messages

    def list_files(self, prefix: str) -> list[StoredFile]:
        """Every file under `prefix` (recursively), or the file `prefix`; empty when there is none."""

    def read(self, path: str) -> Iterator[bytes]:
        """The file's bytes, in chunks."""


class FolderStore:
    """A local folder standing for the volume (tests, or a volume mounted some other way)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.name = str(root)

    def list_files(self, prefix: str) -> list[StoredFile]:
        base = self.root / prefix
        found = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file()) if base.is_dir() else []
        return [StoredFile(p.relative_to(self.root).as_posix(), p.stat().st_size) for p in found]

    def read(self, path: str) -> Iterator[bytes]:
        with open(self.root / path, "rb") as handle:
            yield from iter(lambda: handle.read(1 << 20), b"")


@dataclass
class PullResult:
    run: str
    run_dir: Path
    files: list[StoredFile] = field(default_factory=list)
    left: list[str] = field(default_factory=list)  # top-level items left on the volume (checkpoints)

    @property
    def bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> dict[str, Any]:
        return {"run": self.run, "run_dir": str(self.run_dir), "files": len(self.files), "bytes": self.bytes,
                "items": sorted({PurePosixPath(f.path).parts[1] for f in self.files}), "left_on_volume": self.left}


def _wanted(prefix: str, files: list[StoredFile], checkpoints: bool) -> bool:
    """Hidden items (the lock, temporaries, rotated checkpoints on their way out), superseded, damaged and
    incomplete checkpoints are never copied;
    complete checkpoints only with `checkpoints`."""
    item = PurePosixPath(prefix).name
    if item.startswith(".") or ".superseded-" in item or ".damaged-" in item:
        return False
    if CHECKPOINT_RE.match(item):
        return checkpoints and any(f.path == f"{prefix}/{CHECKPOINT_INFO}" for f in files)
    return True


def _download(store: RunStore, file: StoredFile, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as handle:
        for chunk in store.read(file.path):
            handle.write(chunk)


def _check_same_run(store: RunStore, run: str, run_dir: Path) -> None:
    """Refuse to mix a remote run into a local folder that holds a run of another config."""
    local = run_dir / "config.toml"
    if not local.is_file() or not store.list_files(f"{run}/config.toml"):
        return
    from slothctl import config as config_mod
    from slothctl.training import checkpoints as run_checkpoints

    with tempfile.TemporaryDirectory() as tmp:
        remote = Path(tmp) / "config.toml"
        _download(store, StoredFile(f"{run}/config.toml", 0), remote)
        changes = run_checkpoints.changed_keys(config_mod.load(local), config_mod.load(remote))
    if changes:
        raise UsageError(f"{run_dir} holds a run of another config than {run} on {store.name} (changed: "
                         f"{run_checkpoints.describe_changes(changes)})",
                         "pass --force to replace it, or set another [output] dir")


def pull(store: RunStore, run: str, runs_dir: Path, *, checkpoints: bool = False, force: bool = False,
         emit: Emit = ignore) -> PullResult:
    """Copy `run`/ from the store into `runs_dir`/`run`/ (see the module docstring)."""
    from slothctl.runs import locked

    files = store.list_files(run)
    if not files:
        raise UsageError(f"no run `{run}` on {store.name}", "train it there first: slothctl train --remote modal")
    by_item: dict[str, list[StoredFile]] = {}
    for file in files:
        by_item.setdefault(PurePosixPath(file.path).parts[1], []).append(file)
    run_dir = runs_dir / run
    if not force:
        _check_same_run(store, run, run_dir)
    result = PullResult(run, run_dir)
    with locked(run_dir):  # not while a local train or resume writes there
        for item, item_files in sorted(by_item.items()):
            if not _wanted(f"{run}/{item}", item_files, checkpoints):
                if CHECKPOINT_RE.match(item):
                    result.left.append(item)
                continue
            size = sum(f.size for f in item_files)
            status(emit, f"pulling {run}/{item} ({size / 1e6:,.1f} MB)")
            _pull_item(store, f"{run}/{item}", item_files, run_dir / item)
            result.files += item_files
    return result


def _pull_item(store: RunStore, prefix: str, files: list[StoredFile], target: Path) -> None:
    """Download one top-level item next to `target`, then swap it in."""
    if len(files) == 1 and files[0].path == prefix:  # a file
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        try:
            _download(store, files[0], Path(tmp))
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return
    if target.is_file():
        target.unlink()
    with atomic_dir(target, replace=True) as tmp:
        for file in files:
            _download(store, file, tmp / PurePosixPath(file.path).relative_to(prefix))
