"""Decisions from the estimate: the micro-batch for `micro_batch = "auto"`, and the changes that make a
run fit when it does not.

Every micro-batch considered divides the rows per optimizer step (batch_size x accumulation as
configured), so the effective batch, and with it the training math, never changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from slothctl.memory.estimate import Estimate, TrainSetup, estimate
from slothctl.memory.gpus import Gpu
from slothctl.memory.shape import ModelShape

SEQ_STEP = 128  # a shorter max_seq_length is proposed in steps of this many tokens


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def with_micro_batch(setup: TrainSetup, micro_batch: int, **changes: Any) -> TrainSetup:
    """The same rows per optimizer step, split into micro-batches of `micro_batch` rows."""
    rows = setup.rows_per_step
    if rows % micro_batch:
        raise ValueError(f"micro-batch {micro_batch} does not divide {rows} rows per step")
    return setup.replace(micro_batch=micro_batch, grad_accum=rows // micro_batch, **changes)


def largest_fitting(shape: ModelShape, setup: TrainSetup, gpu: Gpu, max_vram_fraction: float = 0.85,
                    **changes: Any) -> Estimate | None:
    """The estimate of the largest micro-batch (a divisor of the rows per step) that fits, with `changes`."""
    for micro in reversed(divisors(setup.rows_per_step)):
        found = estimate(shape, with_micro_batch(setup, micro, **changes), gpu, max_vram_fraction=max_vram_fraction)
        if found.fits:
            return found
    return None


@dataclass
class MicroBatchChoice:
    """What `micro_batch = "auto"` runs with, and the candidates it weighed (for --dry-run)."""

    micro_batch: int
    grad_accum: int
    gradient_checkpointing: bool
    estimate: Estimate
    candidates: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"micro_batch": self.micro_batch, "gradient_accumulation_steps": self.grad_accum,
                "gradient_checkpointing": self.gradient_checkpointing, "candidates": self.candidates}


def choose_micro_batch(shape: ModelShape, setup: TrainSetup, gpu: Gpu, *, max_vram_fraction: float = 0.85,
                       allow_disabling_checkpointing: bool = True) -> MicroBatchChoice | None:
    """The largest micro-batch that fits, with gradient checkpointing off when that runs faster by the
    estimate (it usually does: no recomputed forward, fewer host round trips). None when not even one row
    per micro-batch fits; `fixes` then says what would.

    Checkpointing is only ever turned off, never on: a run configured without it keeps it off.
    """
    if gpu.is_cpu:
        return None
    options = [setup.gradient_checkpointing]
    if setup.gradient_checkpointing and allow_disabling_checkpointing:
        options.append(False)
    best: Estimate | None = None
    candidates = []
    for checkpointing in options:
        found = largest_fitting(shape, setup, gpu, max_vram_fraction, gradient_checkpointing=checkpointing)
        if found is None:
            candidates.append({"gradient_checkpointing": checkpointing, "micro_batch": None})
            continue
        candidates.append({"gradient_checkpointing": checkpointing, "micro_batch": found.setup.micro_batch,
                           "peak_vram_bytes": found.peak_vram_bytes, "tokens_per_second": found.tokens_per_second})
        if best is None or found.tokens_per_second > best.tokens_per_second:
            best = found
    if best is None:
        return None
    return MicroBatchChoice(best.setup.micro_batch, best.setup.grad_accum, best.setup.gradient_checkpointing,
                            best, candidates)


@dataclass
class Change:
    """One way to make a run fit: the config values to set (dotted TOML keys), and its estimate."""

    summary: str
    settings: dict[str, Any]
    estimate: Estimate

    def to_dict(self) -> dict[str, Any]:
        return {"summary": self.summary, "settings": dict(self.settings),
                "peak_vram_bytes": self.estimate.peak_vram_bytes, "tokens_per_second": self.estimate.tokens_per_second}


def _micro_settings(found: Estimate) -> dict[str, Any]:
    return {"train.micro_batch": found.setup.micro_batch,
            "train.gradient_accumulation_steps": found.setup.grad_accum}


def _micro_text(found: Estimate) -> str:
    s = found.setup
    return f"micro-batch {s.micro_batch} x {s.grad_accum} accumulation steps"


def fixes(shape: ModelShape, setup: TrainSetup, gpu: Gpu, *, max_vram_fraction: float = 0.85) -> list[Change]:
    """Changes that each make a run that does not fit `gpu` fit, each with the largest micro-batch that
    then fits (same effective batch): a smaller micro-batch alone, gradient checkpointing on, 4-bit base
    weights; a shorter max_seq_length (it truncates data) only when none of those fit. Empty when the
    run fits already, or when nothing helps."""
    if gpu.is_cpu or estimate(shape, setup, gpu, max_vram_fraction=max_vram_fraction).fits:
        return []
    out: list[Change] = []
    rows = setup.rows_per_step
    found = largest_fitting(shape, setup, gpu, max_vram_fraction)
    if found is not None:
        out.append(Change(f"{_micro_text(found)} (the same {rows} rows per optimizer step)",
                          _micro_settings(found), found))
    if not setup.gradient_checkpointing:
        found = largest_fitting(shape, setup, gpu, max_vram_fraction, gradient_checkpointing=True)
        if found is not None:
            out.append(Change(f"gradient checkpointing on, {_micro_text(found)}",
                              {"train.gradient_checkpointing": True, **_micro_settings(found)}, found))
    if setup.weights in ("16bit", "32bit") and setup.on_cuda:
        for checkpointing in dict.fromkeys((setup.gradient_checkpointing, True)):
            found = largest_fitting(shape, setup, gpu, max_vram_fraction, weights="4bit",
                                    gradient_checkpointing=checkpointing)
            if found is not None:
                extra = ", gradient checkpointing on" if checkpointing != setup.gradient_checkpointing else ""
                out.append(Change(f"4-bit base weights (QLoRA){extra}, {_micro_text(found)}",
                                  {"model.load_in_4bit": True, "train.gradient_checkpointing": checkpointing,
                                   **_micro_settings(found)}, found))
                break
    if out:
        return out
    weights = [setup.weights] + (["4bit"] if setup.weights in ("16bit", "32bit") and setup.on_cuda else [])
    for weight in weights:
        shorter = _longest_fitting_sequence(
            shape, with_micro_batch(setup, 1, gradient_checkpointing=True, weights=weight), gpu, max_vram_fraction)
        if shorter is not None:
            quantized = weight != setup.weights
            settings = {"model.max_seq_length": shorter.setup.seq_len, "train.gradient_checkpointing": True,
                        **({"model.load_in_4bit": True} if quantized else {}), **_micro_settings(shorter)}
            out.append(Change(f"max_seq_length {shorter.setup.seq_len} (longer rows are truncated)"
                              f"{', 4-bit base weights' if quantized else ''}, gradient checkpointing on, "
                              f"{_micro_text(shorter)}", settings, shorter))
            break
    return out


def _longest_fitting_sequence(shape: ModelShape, setup: TrainSetup, gpu: Gpu,
                              max_vram_fraction: float) -> Estimate | None:
    """Binary search over max_seq_length in steps of SEQ_STEP, below the configured one."""
    low, high = 1, (setup.seq_len - 1) // SEQ_STEP  # in units of SEQ_STEP
    best = None
    while low <= high:
        middle = (low + high) // 2
        found = estimate(shape, setup.replace(seq_len=middle * SEQ_STEP), gpu, max_vram_fraction=max_vram_fraction)
        if found.fits:
            best, low = found, middle + 1
        else:
            high = middle - 1
    return best
