"""The device a model runs on and the dtype it computes in ([model] dtype), for both backends and
the trainer arguments."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from slothctl.config import ModelConfig


def on_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def cuda_index() -> int:
    """This process's GPU: its LOCAL_RANK under torchrun (one GPU per rank), else the first."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def rank_device_map() -> dict[str, str] | None:
    """`device_map` that puts the whole model on this rank's GPU when several ranks train (torchrun);
    None on one rank, where the backend's own placement stays."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    return {"": f"cuda:{cuda_index()}"}


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bfloat16 matmuls run about twice as fast as float32 on such CPUs."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            flags = next((line for line in handle if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def compute_dtype(model: ModelConfig):
    """`auto`: bfloat16 where the GPU supports it, float16 on older GPUs, float32 on CPU.

    On CPU the weights stay float32; `cpu_mixed_precision` decides whether to autocast to bf16.
    """
    import torch

    if not torch.cuda.is_available():
        return torch.float32
    if model.dtype != "auto":
        return getattr(torch, model.dtype)
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def cpu_mixed_precision(model: ModelConfig) -> bool:
    """bf16 autocast on CPU: with dtype = "bfloat16", or `auto` on a CPU with native bf16."""
    return model.dtype == "bfloat16" or (model.dtype == "auto" and cpu_has_native_bf16())
