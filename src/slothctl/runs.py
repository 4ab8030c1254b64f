"""The run folder: where every artifact of one run lives, and how files get there safely.

    runs/<name>/
      config.toml      the resolved config, exactly as trained
      checkpoint-N/    checkpoints; one counts once slothctl_checkpoint.json, written last, is in it
      adapter/         final LoRA adapter + tokenizer + chat template
      merged/, gguf/   written by merge and export
      metrics.jsonl    one line per logged step and eval, append-only
      summary.json     final numbers, timings, library versions
      tensorboard/     event files when [train] report_to = "tensorboard"

Everything else is written to a temporary name first and renamed, so a reader never sees half a file.
metrics.jsonl is never rewritten: a resumed run appends a `{"event": "resume", "step": k}` line,
which voids the earlier lines with a step above k (steps a killed run logged after its last
checkpoint); `read_metrics` applies that rule.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, TextIO

from slothctl import interrupts
from slothctl.errors import RuntimeFailure, UsageError

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
CHECKPOINT_INFO = "slothctl_checkpoint.json"  # written last: a checkpoint without it is incomplete
ADAPTER_INFO = "slothctl_adapter.json"  # next to an adapter: base model, chat template, backend
DELETING = ".deleting-"  # .checkpoint-N.deleting-<pid>: a rotated checkpoint on its way out


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    @property
    def adapter(self) -> Path:
        return self.root / "adapter"

    @property
    def merged(self) -> Path:
        return self.root / "merged"

    @property
    def gguf(self) -> Path:
        return self.root / "gguf"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    def checkpoint(self, step: int) -> Path:
        return self.root / f"checkpoint-{step}"

    def _named_checkpoints(self) -> list[tuple[int, Path]]:
        if not self.root.is_dir():
            return []
        found = []
        for child in self.root.iterdir():
            match = CHECKPOINT_RE.match(child.name)
            if match and child.is_dir():
                found.append((int(match.group(1)), child))
        return sorted(found)

    def checkpoints(self) -> list[tuple[int, Path]]:
        """Complete checkpoints, oldest first (temporary folders never match the pattern)."""
        return [(step, path) for step, path in self._named_checkpoints() if is_complete_checkpoint(path)]

    def incomplete_checkpoints(self) -> list[Path]:
        """Folders named like a checkpoint that were never finished (no slothctl_checkpoint.json). A marker
        that is there but unreadable is damage, not an unfinished write (checkpoint_problem says so)."""
        return [path for _, path in self._named_checkpoints() if not (path / CHECKPOINT_INFO).exists()]

    def marked_checkpoints(self) -> list[tuple[int, Path]]:
        """Checkpoints with a marker, readable or not, oldest first: what a resume may choose from
        once checkpoint_problem has verified it."""
        return [(step, path) for step, path in self._named_checkpoints() if (path / CHECKPOINT_INFO).is_file()]

    def latest_checkpoint(self) -> Path | None:
        checkpoints = self.checkpoints()
        return checkpoints[-1][1] if checkpoints else None


def is_complete_checkpoint(path: Path) -> bool:
    """A checkpoint folder counts once its marker (written last, atomically) is there and readable."""
    try:
        return isinstance(json.loads((path / CHECKPOINT_INFO).read_text(encoding="utf-8")), dict)
    except (OSError, ValueError):
        return False


def rotate_checkpoints(paths: RunPaths, keep: int) -> list[Path]:
    """Delete all but the newest `keep` complete checkpoints (by step); returns what was deleted.
    Each is first renamed aside (.checkpoint-N.deleting-<pid>, one atomic step), so a kill while its
    files go never leaves a partial folder that counts; the next run removes what is left of it
    (remove_stale_temporaries)."""
    old = [path for _, path in paths.checkpoints()[:-keep or None]] if keep > 0 else []
    for path in old:
        aside = path.with_name(f".{path.name}{DELETING}{os.getpid()}")
        os.replace(path, aside)
        fsync_dir(paths.root)
        interrupts.hold("rotation")  # tests kill it here
        shutil.rmtree(aside, ignore_errors=True)
    return old


def checkpoint_problem(folder: Path) -> str | None:
    """What is wrong with a checkpoint's files by its marker (None when each listed file is there with
    its size and sha256): one line naming the file. Markers of older versions list sizes only."""
    marker = folder / CHECKPOINT_INFO
    try:
        info = json.loads(marker.read_text(encoding="utf-8"))
        files = info.get("files", {}) if isinstance(info, dict) else None
        if not isinstance(files, dict):
            raise ValueError("not a checkpoint marker")
    except OSError as exc:
        return f"{marker} cannot be read ({exc.strerror})"
    except ValueError:
        return f"{marker} is damaged (not the JSON slothctl wrote)"
    for name, entry in files.items():
        path = folder / name
        if not path.is_file():
            return f"{path} is missing"
        size = path.stat().st_size
        if size != entry.get("size", size):
            return f"{path} is damaged ({size} bytes, {entry['size']} when it was written)"
        if entry.get("sha256") and file_sha256(path) != entry["sha256"]:
            return f"{path} is damaged (its content changed since it was written: sha256 differs)"
    return None


def clean_incomplete(paths: RunPaths) -> list[Path]:
    """Remove what an interrupted write left behind: temporary folders and files, and checkpoint
    folders that were never completed. Returns what was removed, so the caller can say so."""
    removed = remove_stale_temporaries(paths.root)
    for path in paths.incomplete_checkpoints():
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def fsync_tree(root: Path) -> None:
    """Flush every file under `root` (and the folders) to disk, so a rename after it is durable."""
    for folder, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(folder))


def fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems cannot fsync a folder
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def open_atomic(path: Path) -> Iterator[TextIO]:
    """A text handle on a temporary sibling of `path`, renamed to `path` when the block succeeds:
    readers see the old file or the complete new one, never a mix, and a failure leaves no trace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """Write a file so that readers see either the old or the new content, never a mix."""
    with open_atomic(path) as handle:
        handle.write(text)


def file_sha256(path: Path) -> str:
    """The sha256 of a file, read in 1 MiB blocks (weights can be gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def append_jsonl(path: Path, record: dict) -> None:
    """Append one JSON line (metrics are append-only: never rewritten)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, default=str) + "\n")


def read_metrics(path: Path) -> list[dict]:
    """The run's effective history from metrics.jsonl: a `resume` line at step k drops the earlier
    step and eval lines above k (logged by a run that was killed after its last checkpoint).
    Resume lines themselves are kept; a torn last line (killed mid-write) is skipped."""
    records: list[dict] = []
    if not path.is_file():
        return records
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("event") == "resume":
            records = [r for r in records if r.get("event") == "resume" or r.get("step", 0) <= record["step"]]
        records.append(record)
    return records


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_dead_temporaries(target: Path) -> list[Path]:
    """The temporary siblings of `target` (`.NAME.tmp-PID-*`, `.NAME.old-PID`) of processes that are gone
    (SIGKILL, a machine that went down): what atomic_dir could not remove. Returns what was removed."""
    pattern = re.compile(rf"\.{re.escape(target.name)}\.(?:tmp|old)-(\d+)(?:-.*)?$")
    removed = []
    if not target.parent.is_dir():
        return removed
    for child in target.parent.iterdir():
        found = pattern.match(child.name)
        if found and int(found.group(1)) != os.getpid() and not pid_alive(int(found.group(1))):
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
            removed.append(child)
    return removed


@contextlib.contextmanager
def atomic_dir(target: Path, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it becomes `target`, on failure (a signal too:
    interrupts.py) it is removed. Its name holds the pid, so that leftovers of a process that was
    killed are removed by the next atomic_dir of the same target.

    With `replace`, an existing `target` is swapped out only once the new one is complete.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_temporaries(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        if not replace:
            shutil.rmtree(tmp, ignore_errors=True)
            raise FileExistsError(target)
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)


def remove_stale_temporaries(root: Path) -> list[Path]:
    """Delete temporary folders and files left by an interrupted write; returns what was removed."""
    removed = []
    if not root.is_dir():
        return removed
    for child in root.iterdir():
        if child.name.startswith(".") and any(tag in child.name for tag in (".tmp", ".old-", DELETING)):
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
            removed.append(child)
    return removed


@contextlib.contextmanager
def locked(root: Path) -> Iterator[None]:
    """Hold the run folder for this process: a second slothctl on the same folder exits 2."""
    root.mkdir(parents=True, exist_ok=True)
    handle = open(root / ".lock", "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise UsageError(f"run folder {root} is in use by another slothctl process",
                             "wait for it to finish, or stop it (Ctrl-C saves a checkpoint)") from None
        yield
    finally:
        handle.close()


def nearest_existing(path: Path) -> Path:
    """`path` or the closest folder above it that exists (where a new run folder would be created)."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


FREE_BYTES_ENV = "SLOTHCTL_FREE_BYTES"  # pretend only this many bytes are free (tests the disk checks)


def free_bytes(path: Path) -> int:
    """Free space on the disk that holds (or will hold) `path`: what every disk check compares with."""
    if os.environ.get(FREE_BYTES_ENV):
        return int(os.environ[FREE_BYTES_ENV])
    return shutil.disk_usage(nearest_existing(path)).free


def adapter_info(adapter: Path) -> dict:
    """What training recorded next to an adapter (base model, chat template, backend)."""
    info = adapter / ADAPTER_INFO
    return json.loads(info.read_text(encoding="utf-8")) if info.is_file() else {}


def resolve_adapter(run_root: Path, adapter: Path | None = None, checkpoint: int | None = None) -> Path:
    """The adapter a command should use: `--adapter PATH`, else `--checkpoint N` of the run, else the
    run's final adapter. Raises a UsageError that says what to do when it is missing."""
    paths = RunPaths(run_root)
    if adapter is not None:
        path = Path(adapter).expanduser()
        if not (path / "adapter_config.json").is_file():
            raise UsageError(f"{path} is not a LoRA adapter folder (no adapter_config.json)",
                             "pass the adapter/ folder of a run or a checkpoint-N folder")
        return path
    if checkpoint is not None:
        path = paths.checkpoint(checkpoint)
        if not (path / "adapter_config.json").is_file():
            found = ", ".join(str(step) for step, _ in paths.checkpoints()) or "none"
            raise UsageError(f"run {run_root} has no checkpoint {checkpoint}", f"checkpoints: {found}")
        problem = checkpoint_problem(path) if (path / CHECKPOINT_INFO).exists() else None
        if problem:
            others = [str(step) for step, other in paths.checkpoints() if other != path]
            raise RuntimeFailure(problem, f"use another checkpoint: --checkpoint {others[-1]}" if others
                                 else "use the run's final adapter (leave out --checkpoint)")
        return path
    if not (paths.adapter / "adapter_config.json").is_file():
        if not run_root.exists():
            raise UsageError(f"no run at {run_root}", "train first: slothctl train")
        raise UsageError(f"run {run_root} has no final adapter yet",
                         "finish training (slothctl train / slothctl resume) or pass --checkpoint N")
    return paths.adapter
