"""`slothctl train --dry-run`: what the run would need, before anything heavy loads: the layout
(micro-batch, accumulation, checkpointing) and the memory and time estimate for the GPU present or a
named one, the steps and tokens per step from the data (formatted through the data cache, as train
does), and the changes that make the run fit when it does not. The model's weights are never read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from slothctl import backends, libraries, models
from slothctl.config import Config
from slothctl.errors import SlothctlError
from slothctl.events import Emit, ignore
from slothctl.memory import Gpu, lookup
from slothctl.training import arguments
from slothctl.training.layout import MemoryPlan, plan_memory, present_gpu


@dataclass
class Preview:
    memory: MemoryPlan | None
    gpu: Gpu | None
    backend: str
    optim: str
    steps: int | None = None
    train_rows: int | None = None
    unavailable: str | None = None  # why there is no estimate (the model or the data could not be read)

    def to_dict(self) -> dict[str, Any]:
        memory = self.memory.to_dict() if self.memory else {}
        return {"estimate": memory.get("estimate"), "layout": memory.get("layout"), "fixes": memory.get("fixes", []),
                "gpu": self.gpu.to_dict() if self.gpu else None, "backend": self.backend, "optim": self.optim,
                "steps": self.steps, "train_rows": self.train_rows,
                "unavailable": self.unavailable or memory.get("unavailable"),
                "max_vram_fraction": memory.get("max_vram_fraction")}


def planned_backend(model_backend: str, gpu: Gpu | None, named: bool) -> str:
    """The backend a run would use: as configured; `auto` is unsloth on a named GPU, what `select` picks
    on the GPU present, hf without one."""
    if model_backend != "auto":
        return model_backend
    if gpu is None or gpu.is_cpu:
        return "hf"
    return "unsloth" if named else backends.select("auto")


def preview(cfg: Config, gpu_name: str | None = None, emit: Emit = ignore) -> Preview:
    """The dry run's plan for the GPU named (`--gpu`), else the one present (None: a CPU run)."""
    gpu = lookup(gpu_name) if gpu_name else present_gpu()
    if gpu is not None and gpu.is_cpu:
        gpu = None
    backend = planned_backend(cfg.model.backend, gpu, named=gpu_name is not None)
    optim = arguments.optimizer_name(cfg.train, cuda=gpu is not None)
    from slothctl.training.run import setup_data

    libraries.quiet()  # stderr holds the estimate: no progress bars of datasets (packing) or transformers
    try:
        resolved = models.resolve(cfg.model.name, cfg.project_dir, emit)
        data = setup_data(cfg, resolved.path, emit)
        ranks = cfg.train.gpus if isinstance(cfg.train.gpus, int) else 1  # "auto": counted when training
        steps = arguments.planned_steps(cfg.train, data.train_lengths, cfg.model.max_seq_length, ranks)
    except SlothctlError as exc:
        return Preview(None, gpu, backend, optim, unavailable=exc.one_line())
    except Exception as exc:  # noqa: BLE001 - e.g. a hub model offline: the dry run still prints the config
        return Preview(None, gpu, backend, optim, unavailable=f"{type(exc).__name__}: {str(exc)[:200]}")
    memory = plan_memory(cfg.model, cfg.lora, cfg.train, model_path=resolved.path, backend=backend, optim=optim,
                         lengths=data.train_lengths, gpu=gpu, steps=steps)
    return Preview(memory, gpu, backend, optim, steps, data.train_rows)
