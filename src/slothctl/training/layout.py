"""The layout a run trains with: rows per micro-batch, accumulation steps, gradient checkpointing.

The effective batch (rows per optimizer update, batch_size x gradient_accumulation_steps as
configured) never changes, only how it is split. `micro_batch = "auto"` on CUDA asks the memory
estimate (slothctl.memory) for the largest micro-batch that fits max_vram_fraction of the GPU, with
gradient checkpointing off when it fits and runs faster without; on CPU it is batch_size as
configured. An integer fixes it.

Every checkpoint records the layout (`layout` in slothctl_checkpoint.json) and a resumed run keeps
it, so the data order and the numbers go on as they would have; out_of_memory.py halves it when the
GPU runs out of memory anyway. `plan_memory` is also what `train --dry-run` and `doctor` show.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from slothctl.config import LoraConfig, ModelConfig, TrainConfig
from slothctl.memory import (GIB, Change, Estimate, EstimateUnavailable, Gpu, ModelShape, TrainSetup,
                             choose_micro_batch, estimate, fixes, for_device, load_model_config, lookup)
from slothctl.memory.plan import divisors
from slothctl.training.arguments import batching_choice, micro_batch_request
from slothctl.training.batching import Choice

ESTIMATE_ROWS = 50_000  # lengths beyond this many rows are sampled for the estimate (the longest kept)


@dataclass(frozen=True)
class Layout:
    """`source`: auto (chosen by the estimate), fixed (micro_batch = N), configured (batch_size as
    configured: auto on CPU, or without an estimate), checkpoint (as the resumed checkpoint recorded),
    halved (after running out of memory)."""

    micro_batch: int
    grad_accum: int
    gradient_checkpointing: bool
    batching: str  # the resolved strategy, pinned: batching "auto" depends on the batch size
    source: str

    @property
    def rows_per_step(self) -> int:
        return self.micro_batch * self.grad_accum

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "checkpoint") -> Layout:
        return cls(int(data["micro_batch"]), int(data["grad_accum"]), bool(data["gradient_checkpointing"]),
                   str(data["batching"]), source)

    def applied(self, train: TrainConfig) -> TrainConfig:
        """[train] as the trainer and the backends read it under this layout."""
        return dataclasses.replace(train, batch_size=self.micro_batch, gradient_accumulation_steps=self.grad_accum,
                                   micro_batch=self.micro_batch, gradient_checkpointing=self.gradient_checkpointing,
                                   batching=train.batching if self.batching == "packed" else self.batching)

    def halved(self) -> Layout | None:
        """The next micro-batch at most half this one that divides the effective batch; None at 1 row."""
        smaller = [d for d in divisors(self.rows_per_step) if d <= self.micro_batch // 2]
        if not smaller:
            return None
        micro = smaller[-1]
        return dataclasses.replace(self, micro_batch=micro, grad_accum=self.rows_per_step // micro, source="halved")

    def describe(self) -> str:
        steps = "step" if self.grad_accum == 1 else "steps"
        return (f"micro-batch {self.micro_batch} x {self.grad_accum} accumulation {steps} "
                f"({self.rows_per_step} rows per update), gradient checkpointing "
                f"{'on' if self.gradient_checkpointing else 'off'}")

    def setup(self, base: TrainSetup) -> TrainSetup:
        return base.replace(micro_batch=self.micro_batch, grad_accum=self.grad_accum,
                            gradient_checkpointing=self.gradient_checkpointing)


@dataclass
class MemoryPlan:
    """The layout, and what the estimate says about it (None where no estimate could be made)."""

    layout: Layout
    gpu: Gpu | None
    shape: ModelShape | None = None
    setup: TrainSetup | None = None  # under the layout
    estimate: Estimate | None = None
    fixes: list[Change] = field(default_factory=list)
    unavailable: str | None = None  # why there is no estimate
    max_vram_fraction: float = 0.85

    def to_dict(self) -> dict[str, Any]:
        return {"layout": self.layout.to_dict(), "gpu": self.gpu.to_dict() if self.gpu else None,
                "estimate": self.estimate.to_dict() if self.estimate else None,
                "fixes": [change.to_dict() for change in self.fixes], "unavailable": self.unavailable,
                "max_vram_fraction": self.max_vram_fraction}

    def fit_text(self) -> str:
        """`estimated peak 30.0 GiB of 139.8 (H200): fits` (or `will not fit`), or why there is no estimate."""
        est = self.estimate
        if est is None:
            return f"no memory estimate ({self.unavailable})"
        peak = f"estimated peak {est.peak_vram_bytes / GIB:.1f} GiB"
        if est.fits is None:
            return f"{peak} (no GPU to fit it to)"
        verdict = "fits" if est.fits else "will not fit"
        return (f"{peak} of {self.gpu.memory_bytes / GIB:.1f} GiB ({self.gpu.name}), budget "
                f"{self.max_vram_fraction:.0%} = {est.budget_bytes / GIB:.1f} GiB: {verdict}")


def present_gpu() -> Gpu | None:
    """The CUDA device this process trains on (device 0), with its memory; None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return for_device(props.name, props.total_memory)


def model_shape(model_path: str, model: ModelConfig) -> ModelShape:
    """The model's shape from its config.json (raises EstimateUnavailable)."""
    return ModelShape.from_config(load_model_config(model_path, model.revision, model.trust_remote_code))


def _sampled(lengths) -> Any:
    """At most ESTIMATE_ROWS lengths, evenly spaced, plus the longest rows (the peak needs them)."""
    if lengths is None or len(lengths) <= ESTIMATE_ROWS:
        return lengths
    import numpy as np

    values = np.asarray(lengths)
    return np.concatenate([values[::len(values) // ESTIMATE_ROWS + 1], np.sort(values)[-256:]])


def layout_batching(layout: Layout, train: TrainConfig, lengths) -> Choice:
    """The strategy the layout pinned, with the reason `train` reports: `batching = "auto"` is decided
    once, when the layout is, and keeps the reason `auto` gave (the applied [train] names the strategy
    itself); a resumed checkpoint's strategy, where the config would now pick another, says so."""
    configured = batching_choice(train, lengths)
    if configured.strategy in (layout.batching, "packed"):
        return configured
    return Choice(layout.batching, f"as the resumed checkpoint recorded (the config would pick "
                                   f"{configured.strategy} now)")


def train_setup(model: ModelConfig, lora: LoraConfig, train: TrainConfig, *, backend: str, optim: str, lengths,
                cuda: bool) -> TrainSetup:
    """The estimator's view of the run as configured (batch_size x accumulation as written)."""
    return TrainSetup.from_config(model, lora, train, backend=backend, optimizer=optim,
                                  batching=batching_choice(train, lengths, cuda).strategy, on_cuda=cuda,
                                  lengths=_sampled(lengths))


def choose_layout(train: TrainConfig, setup: TrainSetup, shape: ModelShape | None, gpu: Gpu | None,
                  recorded: dict[str, Any] | None = None) -> Layout:
    """The layout of the run: the checkpoint's when resuming (unless micro_batch now fixes another), the
    fixed micro-batch, the estimate's choice on a GPU, else batch_size as configured."""
    request, fraction = micro_batch_request(train)
    rows = setup.rows_per_step
    if recorded and (request == "auto" or request == recorded.get("micro_batch")) \
            and int(recorded["micro_batch"]) * int(recorded["grad_accum"]) == rows:
        return Layout.from_dict(recorded)
    configured = Layout(setup.micro_batch, setup.grad_accum, setup.gradient_checkpointing, setup.batching, "configured")
    if isinstance(request, int):
        return dataclasses.replace(configured, micro_batch=request, grad_accum=rows // request, source="fixed")
    if shape is None or gpu is None or gpu.is_cpu:
        return configured
    choice = choose_micro_batch(shape, setup, gpu, max_vram_fraction=fraction)
    if choice is None:  # not even one row fits by the estimate: the smallest, and fixes() says what would fit
        return dataclasses.replace(configured, micro_batch=1, grad_accum=rows, source="auto")
    return dataclasses.replace(configured, micro_batch=choice.micro_batch, grad_accum=choice.grad_accum,
                               gradient_checkpointing=choice.gradient_checkpointing, source="auto")


def plan_memory(model: ModelConfig, lora: LoraConfig, train: TrainConfig, *, model_path: str, backend: str,
                optim: str, lengths, gpu: Gpu | None, steps: int | None = None,
                recorded: dict[str, Any] | None = None) -> MemoryPlan:
    """The layout for `gpu` (None: a CPU run) and its estimate, with the changes that make it fit when it
    does not. A model the estimator cannot read (a mixture of experts, no config) gets the layout as
    configured and no estimate."""
    cuda = gpu is not None and not gpu.is_cpu
    setup = train_setup(model, lora, train, backend=backend, optim=optim, lengths=lengths, cuda=cuda)
    fraction = micro_batch_request(train)[1]
    try:
        shape = model_shape(model_path, model)
    except EstimateUnavailable as exc:
        layout = choose_layout(train, setup, None, gpu, recorded)
        return MemoryPlan(layout, gpu, unavailable=exc.one_line(), max_vram_fraction=fraction)
    layout = choose_layout(train, setup, shape, gpu, recorded)
    under = layout.setup(setup)
    found = estimate(shape, under, gpu if gpu is not None else lookup("CPU"), steps=steps,
                     max_vram_fraction=fraction)
    changes = fixes(shape, under, gpu, max_vram_fraction=fraction) if cuda and found.fits is False else []
    return MemoryPlan(layout, gpu, shape, under, found, changes, max_vram_fraction=fraction)
