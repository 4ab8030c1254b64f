"""The backend seam: the only place where CPU (transformers + PEFT) and GPU (Unsloth) training differ.

A backend is a class with the methods of `Backend`; `get(name)` returns one (`HFBackend` in hf.py,
`UnslothBackend` in unsloth.py). Everything else (data, trainer arguments, the trainer class,
checkpoints, events, artifacts: slothctl/training) is shared, so both backends write the same run
folder and an adapter trained on one loads on the other. Both give LoRA the same arguments,
`lora_arguments` below: PEFT's LoraConfig on hf, Unsloth's get_peft_model on unsloth.

`select` decides before any heavy import, because Unsloth must be imported before transformers,
trl and peft in the process that trains with it (it patches their classes): `get("unsloth")`
imports backends/unsloth.py, whose first import is unsloth.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from slothctl.errors import UsageError
from slothctl.events import Emit, ignore

if TYPE_CHECKING:
    from slothctl.config import Config, LoraConfig, ModelConfig

BACKENDS = ("unsloth", "hf")


@dataclass(frozen=True)
class LoadOptions:
    """What loading a model reads besides [model]: the pad token depends on the chat template
    ([data] chat_template), and Unsloth sets up gradient checkpointing and its seed at load time."""

    chat_template: str
    gradient_checkpointing: bool
    seed: int

    @classmethod
    def of(cls, cfg: Config) -> LoadOptions:
        return cls(cfg.data.chat_template, cfg.train.gradient_checkpointing, cfg.train.seed)


class Backend(Protocol):
    """Loads models, adds LoRA, merges: what differs between transformers + PEFT and Unsloth."""

    name: str

    def load(self, model: ModelConfig, path: str, options: LoadOptions, emit: Emit = ignore) -> tuple[Any, Any]:
        """Base model and tokenizer, ready for LoRA; the tokenizer gets the pad token `data inspect` reports."""
        ...

    def add_lora(self, model: Any, lora: LoraConfig, *, seed: int, gradient_checkpointing: bool,
                 max_seq_length: int) -> Any:
        """The model with trainable LoRA layers made from `lora_arguments(lora, model)`."""
        ...

    def trainer_overrides(self, strategy: str) -> dict[str, Any]:
        """This backend's changes to the shared trainer arguments (training/arguments.py) for a batching
        strategy (training/batching.py STRATEGIES)."""
        ...

    def load_adapter(self, model: ModelConfig, path: str, adapter: str, options: LoadOptions,
                     emit: Emit = ignore) -> tuple[Any, Any]:
        """Base model + a trained adapter (from either backend) and the adapter's tokenizer, for chat and merge."""
        ...

    def for_inference(self, model: Any) -> Any:
        """Ready a loaded model for generation."""
        ...

    def merge(self, model: ModelConfig, path: str, adapter: str, out_dir: Any, *, precision: str, dtype: str,
              options: LoadOptions, emit: Emit = ignore) -> str:
        """Weights and config.json of the merged model in `out_dir`; returns the stored dtype's name.
        `dtype` is [export] dtype; export/merge.py adds the tokenizer and generation config."""
        ...


def lora_arguments(lora: LoraConfig, model: Any = None) -> dict[str, Any]:
    """[lora] as the keyword arguments that both PEFT's `LoraConfig` and Unsloth's
    `FastLanguageModel.get_peft_model` take; with `model`, target_modules as it names its layers."""
    targets = list(lora.target_modules)
    return {"r": lora.r, "lora_alpha": lora.alpha, "lora_dropout": lora.dropout, "bias": lora.bias,
            "target_modules": lora_targets(model, targets) if model is not None else targets,
            "use_rslora": lora.use_rslora}


FUSED_PROJECTIONS = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}


def lora_targets(model: Any, names: list[str]) -> list[str]:
    """[lora] target_modules as this architecture names its layers: Phi 3 fuses q/k/v into `qkv_proj`
    and gate/up into `gate_up_proj`, so the usual seven names would adapt only o_proj and down_proj
    (PEFT is silent when some names match). A fused layer replaces the separate names it holds."""
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = list(names)
    for fused, parts in FUSED_PROJECTIONS.items():
        missing = [p for p in parts if p in targets and p not in present]
        if fused in present and missing and fused not in targets:
            targets = [t for t in targets if t not in missing] + [fused]
    return targets


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


def get(name: str) -> Backend:
    """The backend called `name` (as `select` returns it). For unsloth this imports unsloth, so call
    it before anything imports transformers, trl or peft."""
    if name == "unsloth":
        from slothctl.backends.unsloth import UnslothBackend

        return UnslothBackend()
    if name == "hf":
        from slothctl.backends.hf import HFBackend

        return HFBackend()
    raise UsageError(f"unknown backend `{name}`", f"choose one of: auto, {', '.join(BACKENDS)}")
