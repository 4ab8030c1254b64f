"""The backend seam: the only place where CPU (transformers + PEFT) and GPU (Unsloth) training differ.

A backend is a module with the same few functions:

    load(cfg, model_path, emit) -> (model, tokenizer)       base model + HF tokenizer, ready for LoRA
    add_lora(model, cfg) -> model                          PEFT LoRA on cfg.lora.target_modules
    sft_overrides(cfg) -> dict                             this backend's changes to the shared TRL arguments
    trainer_class() -> type                                an SFTTrainer subclass for this device
    load_adapter(cfg, model_path, adapter, emit) -> (model, tokenizer)   for chat and merge
    for_inference(model) -> model                         ready a loaded model for generation (chat)
    merge(cfg, model_path, adapter, out_dir, precision, emit) -> dtype name   weights + config.json of
                                                           the merged model (16bit/32bit; 4bit on unsloth);
                                                           export.merge adds tokenizer, generation config

Everything else (data, TRL arguments, checkpoints, events, artifacts) is shared, so both
backends write the same run folder. `select` decides before any heavy import, because Unsloth
must be imported before transformers, trl and peft in the process that trains with it.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from types import ModuleType

from slothctl.errors import UsageError

BACKENDS = ("unsloth", "hf")


def cuda_available() -> bool:
    """CUDA presence without importing torch when nothing suggests a GPU (keeps CPU runs lean)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
        return False
    if not (os.path.exists("/dev/nvidiactl") or os.path.exists("/proc/driver/nvidia")):
        return False
    import torch

    return torch.cuda.is_available()


def unsloth_installed() -> bool:
    return importlib.util.find_spec("unsloth") is not None


def select(choice: str) -> str:
    """Resolve `auto` and check that the chosen backend can run here (exit 2 when it cannot)."""
    if choice == "hf":
        return "hf"
    if choice == "auto":
        return "unsloth" if cuda_available() and unsloth_installed() else "hf"
    if choice == "unsloth":
        if not cuda_available():
            raise UsageError("backend = \"unsloth\" needs a CUDA GPU, and none is visible",
                             "use backend = \"hf\" (or \"auto\") on this machine")
        if not unsloth_installed():
            raise UsageError("backend = \"unsloth\" needs the unsloth extra",
                             "pip install 'slothctl[unsloth]'")
        return "unsloth"
    raise UsageError(f"unknown backend `{choice}`", f"choose one of: auto, {', '.join(BACKENDS)}")


def get(name: str) -> ModuleType:
    """The backend module; importing `unsloth` first is that module's job."""
    return importlib.import_module(f"slothctl.backends.{name}")
