"""Refusals before the model loads (exit 2, nothing written): a run folder that cannot be written,
a disk too small for a checkpoint and the final adapter, bitsandbytes missing where it is needed."""

from __future__ import annotations

import errno
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from slothctl.config import LoraConfig, ModelConfig
from slothctl.errors import RuntimeFailure, UsageError
from slothctl.runs import RunPaths, clean_incomplete, free_bytes, nearest_existing
from slothctl.training.checkpoints import estimate_checkpoint_bytes


def check_writable(root: Path) -> None:
    """Exit 2 when the run folder cannot be created or written (tried for real: a file created and removed)."""
    base = nearest_existing(root)
    if not base.is_dir():
        raise UsageError(f"cannot create the run folder {root}: {base} is a file, not a folder",
                         "set [output] dir to a folder you can write to")
    try:
        fd, probe = tempfile.mkstemp(prefix=".slothctl-write-test-", dir=base)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(f"cannot write to {base} (needed for the run folder {root}): {exc.strerror}",
                         "set [output] dir to a folder you can write to") from None


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def check_disk_space(lora: LoraConfig, model: ModelConfig, root: Path, model_path: str, optim: str) -> dict | None:
    """Exit 2 when the disk cannot hold one more checkpoint and the final adapter (estimated from the
    LoRA parameter count and the optimizer's state size). Returns the estimate."""
    estimate = estimate_checkpoint_bytes(lora, model, model_path, optim)
    if estimate is None:
        return None
    free = free_bytes(root)
    if free < estimate["needed"]:
        raise UsageError(
            f"not enough disk space for {root}: {_size(free)} free, a checkpoint and the final adapter need about "
            f"{_size(estimate['needed'])} (adapter {_size(estimate['adapter'])}, optimizer state "
            f"{_size(estimate['optimizer'])})", "free some space or set [output] dir to a larger disk")
    return estimate


def check_bitsandbytes(model: ModelConfig, optim: str) -> None:
    """Exit 2 when 4/8-bit loading or an 8-bit optimizer (`optim = "adamw_8bit"`) needs bitsandbytes
    and it is not installed (it comes with the `cuda` and `unsloth` extras)."""
    needs = [what for what, used in (("[model] load_in_4bit", model.load_in_4bit),
                                      ("[model] load_in_8bit", model.load_in_8bit),
                                      (f"the optimizer {optim}", "8bit" in optim)) if used]
    if needs and importlib.util.find_spec("bitsandbytes") is None:
        other = ', or set [train] optim = "adamw_torch"' if "8bit" in optim and len(needs) == 1 else ""
        raise UsageError(f"{needs[0]} needs bitsandbytes (CUDA), which is not installed",
                         f"pip install 'slothctl[cuda]'{other}")


def is_disk_full(exc: BaseException) -> bool:
    """A write that failed because the disk is full: ENOSPC, or torch.save's C++ error without an errno."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return True
        if isinstance(exc, Exception) and any(text in str(exc) for text in (
                "No space left on device", "PytorchStreamWriter failed writing", "unexpected pos")):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def disk_full(paths: RunPaths, step: int, resume: str) -> RuntimeFailure:
    """The disk filled up while a checkpoint was written (exit 1): the unfinished folder is removed, the
    previous checkpoint is kept (rotation comes only after a checkpoint is complete), and the message
    says how much a checkpoint needs (the previous one's size)."""
    clean_incomplete(paths)
    previous = paths.latest_checkpoint()
    base = nearest_existing(paths.root)
    free = shutil.disk_usage(base).free
    need = f"a checkpoint needs about {_size(_folder_bytes(previous))} (the size of {previous.name})" \
        if previous else "no checkpoint was written"
    kept = f"{previous} is kept" if previous else "nothing was lost but the steps since the start"
    return RuntimeFailure(f"no space left on {base} while writing checkpoint-{step}: {need}, {_size(free)} free; "
                          f"{kept}", f"free some space, then continue with: {resume}")
