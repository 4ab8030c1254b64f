"""The GPU ran out of memory during a training step.

With `micro_batch = "auto"` the run goes on: the micro-batch is halved and the accumulation
doubled (the effective batch stays), a checkpoint of the step reached is written unless the newest
one is that step, and training continues from it (run.fit), once per halving. Otherwise, or at one
row per micro-batch, the run ends with exit 1 and one line: the peak measured, the GPU's total, and
the changes the estimate computes to fit; the checkpoints on disk are left as they are.
"""

from __future__ import annotations

import gc
import shlex
import sys
from pathlib import Path

from slothctl.errors import RuntimeFailure
from slothctl.memory import GIB, Change, estimate, fixes, lookup
from slothctl.training.layout import Layout, MemoryPlan

ALLOWED_UNCHANGED = {"train.micro_batch", "train.max_vram_fraction"}  # resume takes these without --force-resume


def is_out_of_memory(exc: BaseException) -> bool:
    """torch.OutOfMemoryError (by class name: torch need not be imported), or a RuntimeError saying so (CUDA
    and Triton kernels that fail to allocate, cuBLAS workspaces), also as the cause of another exception
    (a library that wraps it)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        names = {f"{cls.__module__}.{cls.__qualname__}" for cls in type(exc).__mro__}
        text = str(exc) if isinstance(exc, RuntimeError) else ""
        if "torch.OutOfMemoryError" in names or "out of memory" in text or "CUBLAS_STATUS_ALLOC_FAILED" in text:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def measured() -> tuple[int | None, int | None]:
    """torch's peak allocated bytes and the GPU's total, or (None, None) without CUDA."""
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_available():
            return torch.cuda.max_memory_allocated(), torch.cuda.get_device_properties(0).total_memory
    except Exception:  # noqa: BLE001 - a broken CUDA context must not hide the out-of-memory error
        pass
    return None, None


def release(trainer) -> None:
    """Drop what the failed step held (its gradients; its activations went with the exception) and
    hand the cached blocks back."""
    trainer.model.zero_grad(set_to_none=True)
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def user_settings(change_settings: dict) -> dict:
    """A change's TOML settings as a user sets them: micro_batch alone keeps the effective batch."""
    return {key: value for key, value in change_settings.items() if key != "train.gradient_accumulation_steps"}


def set_options(settings: dict) -> str:
    from slothctl.config import toml_value

    return " ".join(f"--set {shlex.quote(f'{key}={toml_value(value)}')}" for key, value in settings.items())


def computed_changes(memory: MemoryPlan, layout: Layout) -> list[tuple[str, dict]]:
    """(summary, settings) that should fit: the estimate's fixes for this layout; when the estimate thought it
    fit, half the micro-batch (and the estimate's fixes for that one)."""
    found: list[Change] = []
    if memory.shape is not None and memory.gpu is not None and not memory.gpu.is_cpu:
        found = fixes(memory.shape, layout.setup(memory.setup), memory.gpu, max_vram_fraction=memory.max_vram_fraction)
    out = [(change.summary, user_settings(change.settings)) for change in found]
    smaller = layout.halved()
    if not out and smaller is not None:
        out.append((smaller.describe(), {"train.micro_batch": smaller.micro_batch}))
    if not out and not layout.gradient_checkpointing:
        out.append(("gradient checkpointing on", {"train.gradient_checkpointing": True}))
    return out


def failure(memory: MemoryPlan, layout: Layout, step: int, newest: Path | None, resume: str) -> RuntimeFailure:
    """The one-line error (and hint) that ends a run that ran out of memory."""
    peak, total = measured()
    amount = f"peak {peak / GIB:.1f} GiB of the GPU's {total / GIB:.1f} GiB" if total else "no CUDA peak measured"
    if memory.shape is not None and memory.setup is not None:
        planned = estimate(memory.shape, layout.setup(memory.setup), memory.gpu or lookup("CPU"))
        amount += f"; estimated {planned.peak_vram_bytes / GIB:.1f} GiB"
    kept = f"newest checkpoint {newest.name} is intact" if newest else "no checkpoint was written"
    message = f"the GPU ran out of memory in step {step + 1} with {layout.describe()} ({amount}); {kept}"
    changes = computed_changes(memory, layout)[:3]
    if not changes:
        return RuntimeFailure(message, "set model.load_in_4bit = true, or a shorter model.max_seq_length")
    options = []
    for summary, settings in changes:
        force = " --force-resume" if newest and set(settings) - ALLOWED_UNCHANGED else ""
        command = f"{resume if newest else 'slothctl train'} {set_options(settings)}{force}"
        options.append(f"{summary}: {command}")
    return RuntimeFailure(message, "should fit with " + "; or ".join(options))
