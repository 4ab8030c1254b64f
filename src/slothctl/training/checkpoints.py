"""What a checkpoint holds, how a trainer writes it atomically, and when a run may continue from one.

    checkpoint-N/
      adapter_model.safetensors, adapter_config.json   LoRA weights (Trainer.save_model)
      tokenizer files, training_args.bin               as the trainer saves them
      optimizer.pt, scheduler.pt (scaler.pt)           optimizer moments, learning-rate schedule position
      rng_state.pth                                    python, numpy, torch CPU (and CUDA) generators
                                                       (rng_state_<rank>.pth for each rank of several)
      trainer_state.json                               global step, epoch, log history, early-stopping state
      slothctl_checkpoint.json                         config and its hash, data hash, sampler position

Everything is written into a temporary sibling folder and renamed to checkpoint-N only when complete;
slothctl_checkpoint.json is written last, so a folder without it is never resumed from.

Data order: the trainer's sampler is seeded with [train] seed and reseeded per epoch (accelerate's
seedable sampler), so the order is a function of the training rows, the seed and the epoch. The
checkpoint records the rows' hash and the position (epoch, batches done in it); on resume the
trainer rebuilds the same order and skips those batches. On several ranks, rank 0 writes the
checkpoint (with every rank's RNG state) and records the number of ranks: each rank skips its own
share, which is the same share again only on the same number of ranks.

The trainer subclass is made here, around whatever class a backend returns, so the Unsloth and hf
backends write the same checkpoints without code of their own.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from array import array
from pathlib import Path
from typing import Any

from slothctl import __version__
from slothctl.config import Config, LoraConfig, ModelConfig
from slothctl.runs import CHECKPOINT_INFO, RunPaths, atomic_dir, fsync_dir, fsync_tree, rotate_checkpoints, \
    write_json_atomic
from slothctl.training import ranks

SECTIONS = ("model", "lora", "data", "train")
# Keys a run may change between a checkpoint and its continuation without --force-resume: how long
# to train, and bookkeeping that does not touch the numbers (the trainer takes them from the new config).
# The engine may change too: a run started with the hf backend on CPU continues with unsloth on a GPU.
# The number of ranks may change too (train.gpus): with a warning, since the global batch changes.
FREE_TO_CHANGE = frozenset({"train.max_steps", "train.epochs", "train.save_steps", "train.save_total_limit",
                            "train.logging_steps", "train.report_to", "data.num_proc", "model.backend",
                            "train.gpus"})
# Keys that change the adapter's shape: even --force-resume cannot load such a checkpoint.
SHAPE_KEYS = frozenset({"model.name", "lora.r", "lora.target_modules", "lora.bias"})


def flat_config(cfg: Config | dict) -> dict[str, Any]:
    """{"section.key": value} for the sections that determine training."""
    sections = cfg.to_dict() if isinstance(cfg, Config) else cfg
    return {f"{s}.{k}": v for s in SECTIONS for k, v in sections.get(s, {}).items()}


def config_hash(cfg: Config | dict) -> str:
    """A hash of what a continuation must keep equal (everything but FREE_TO_CHANGE)."""
    relevant = {k: v for k, v in flat_config(cfg).items() if k not in FREE_TO_CHANGE}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


def changed_keys(old: Config | dict, new: Config | dict, include_free: bool = False) -> list[tuple[str, Any, Any]]:
    """(key, old value, new value) for each key that differs."""
    before, after = flat_config(old), flat_config(new)
    return [(k, before.get(k), v) for k, v in after.items()
            if before.get(k) != v and (include_free or k not in FREE_TO_CHANGE)]


def describe_changes(changes: list[tuple[str, Any, Any]]) -> str:
    return ", ".join(f"{k} {json.dumps(a, default=str)} → {json.dumps(b, default=str)}" for k, a, b in changes)


def data_hash(examples) -> str:
    """A hash of the training rows as the trainer sees them (token ids and loss mask, in order)."""
    digest = hashlib.sha256()
    for example in examples:
        digest.update(array("q", example.input_ids).tobytes())
        digest.update(array("q", example.labels).tobytes())
        digest.update(b"|")
    return digest.hexdigest()[:16]


def read_info(checkpoint: Path) -> dict:
    return json.loads((checkpoint / CHECKPOINT_INFO).read_text(encoding="utf-8"))


def make_resumable(base: type, run: dict[str, Any]) -> type:
    """Subclass a backend's trainer so that checkpoints are atomic, complete and rotated by step.

    `run` is what every checkpoint of this run records besides its position: the config, its hash,
    the data hash and the seed. Transformers' own `_save_checkpoint` writes straight into
    checkpoint-N (and TRL's adds a model card to the run folder); this one uses the same pieces
    (save_model, optimizer/scheduler/scaler/RNG state, trainer state) into a temporary folder.
    """
    from transformers.trainer import TRAINER_STATE_NAME
    from transformers.trainer_callback import ExportableState

    class ResumableTrainer(base):
        slothctl_run = run

        def _save_checkpoint(self, model, trial):
            if self.hp_search_backend is None and trial is None:
                self.store_flos()  # on several ranks a collective: every rank takes part
            rng_files = ranks.gather_files(self._save_rng_state)  # every rank's, on rank 0
            if not ranks.is_main():
                return  # rank 0 writes the checkpoint
            step = self.state.global_step
            paths = RunPaths(Path(self.args.output_dir))
            with atomic_dir(paths.checkpoint(step), replace=True) as tmp:
                self.save_model(str(tmp), _internal_call=True)
                self._save_optimizer_and_scheduler(str(tmp))
                self._save_scaler(str(tmp))
                for name, content in rng_files.items():
                    (tmp / name).write_bytes(content)
                for callback in [*self.callback_handler.callbacks, self.control]:
                    if isinstance(callback, ExportableState):
                        name = callback.__class__.__name__
                        if isinstance(self.state.stateful_callbacks.get(name), list):
                            self.state.stateful_callbacks[name].append(callback.state())
                        else:
                            self.state.stateful_callbacks[name] = callback.state()
                self.state.save_to_json(os.path.join(tmp, TRAINER_STATE_NAME))
                fsync_tree(tmp)
                write_json_atomic(tmp / CHECKPOINT_INFO, self._checkpoint_info())
            fsync_dir(paths.root)
            rotate_checkpoints(paths, self.args.save_total_limit or 0)

        def _checkpoint_info(self) -> dict[str, Any]:
            step = self.state.global_step
            loader = self.callback_handler.train_dataloader
            ga = self.args.gradient_accumulation_steps
            batches = len(loader) if loader is not None else 0
            updates_per_epoch = max(1, math.ceil(batches / ga)) if batches else None
            position = {"epoch": step // updates_per_epoch, "batches_done_in_epoch": step % updates_per_epoch * ga,
                        "batches_per_epoch": batches} if updates_per_epoch else {}
            return {"step": step, "max_steps": self.state.max_steps, "epoch": self.state.epoch,
                    "data_position": position, "world_size": self.args.world_size, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "slothctl": __version__, **self.slothctl_run}

    return ResumableTrainer


def run_record(cfg: Config, examples) -> dict[str, Any]:
    """The part of slothctl_checkpoint.json that is the same for every checkpoint of a run."""
    return {"config_hash": config_hash(cfg),
            "config": {s: v for s, v in cfg.to_dict().items() if s in SECTIONS},
            "data": {"hash": data_hash(examples), "rows": len(examples), "seed": cfg.train.seed}}


# ---- disk space ---------------------------------------------------------------------------------------------------

def lora_parameter_count(lora: LoraConfig, model: ModelConfig, model_path: str) -> int | None:
    """Trainable LoRA parameters, counted on a weightless (meta-device) copy of the model."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(model_path, revision=model.revision or None,
                                            trust_remote_code=model.trust_remote_code)
        with torch.device("meta"):
            meta = AutoModelForCausalLM.from_config(config, trust_remote_code=model.trust_remote_code)
    except Exception:  # noqa: BLE001 - no estimate is better than a wrong refusal; loading will tell
        return None
    targets = set(lora.target_modules)
    total = 0
    for name, module in meta.named_modules():
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in targets:
            total += lora.r * (module.in_features + module.out_features)
    return total


def optimizer_bytes_per_parameter(optim: str) -> int:
    """State bytes per trainable parameter: AdamW keeps two fp32 moments, 8-bit Adam two bytes."""
    if "8bit" in optim:
        return 2
    if optim == "sgd":
        return 4
    if optim == "adafactor":
        return 4
    return 8


def estimate_checkpoint_bytes(lora: LoraConfig, model: ModelConfig, model_path: str,
                              optim: str) -> dict[str, int] | None:
    """What one checkpoint plus the final adapter will take on disk, from the adapter and optimizer sizes."""
    params = lora_parameter_count(lora, model, model_path)
    if params is None:
        return None
    tokenizer = 0
    folder = Path(model_path)
    if folder.is_dir():
        tokenizer = sum(p.stat().st_size for p in folder.iterdir()
                        if p.is_file() and ("token" in p.name or p.name.endswith((".jinja", ".model"))))
    tokenizer = tokenizer or 20 * 2**20
    adapter = params * 4
    optimizer = params * optimizer_bytes_per_parameter(optim)
    checkpoint = adapter + optimizer + tokenizer + 2**20  # + trainer state, RNG, scheduler
    return {"parameters": params, "adapter": adapter, "optimizer": optimizer, "checkpoint": checkpoint,
            "needed": checkpoint + adapter + tokenizer}
