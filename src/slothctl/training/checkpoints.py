"""What a checkpoint holds, how it is marked complete, and when a run may continue from one.

    checkpoint-N/
      adapter_model.safetensors, adapter_config.json   LoRA weights
      tokenizer files, training_args.bin               as the trainer saves them
      optimizer.pt, scheduler.pt (scaler.pt)           optimizer moments, learning-rate schedule position
      rng_state.pth                                    python, numpy, torch CPU (and CUDA) generators
                                                       (rng_state_<rank>.pth for each rank of several)
      trainer_state.json                               global step, epoch, log history, early-stopping state
      slothctl_checkpoint.json                         the completion marker: config and its hash, data
                                                       hash, sampler position, every file with its size and sha256

The Trainer writes checkpoint-N itself (its own save, chosen by public arguments). Then `completion`,
an `on_save` callback, flushes every file to disk (fsync) and writes slothctl_checkpoint.json, atomically
and last. Only a folder with that marker counts as a checkpoint (runs.is_complete_checkpoint): a crash
or a second Ctrl-C while the trainer writes leaves a folder without one, which is never resumed from
and which the next run removes with a warning (runs.clean_incomplete). The marker lists the files it
vouches for (`files`: name → size and sha256), and a resume (or chat/merge/export --checkpoint) verifies
them first (runs.checkpoint_problem): a damaged checkpoint is named by its file, never trained on.

Rotation ([train] save_total_limit) is done here, after the marker, not by the Trainer: the Trainer
rotates inside its save, before the new checkpoint is complete, so with a limit of 1 a crash at that
moment would leave no checkpoint at all. An old checkpoint is renamed aside before its files go
(runs.rotate_checkpoints), so a kill during rotation never leaves one that counts without its weights.

Data order: the trainer's sampler is seeded with [train] seed and reseeded per epoch (accelerate's
seedable sampler), so the order is a function of the training rows, the seed and the epoch. The
marker records the rows' hash and the position (epoch, batches done in it); on resume the trainer
rebuilds the same order and skips those batches.
On several ranks, rank 0 writes the checkpoint (the Trainer saves every rank's RNG state in it) and
the marker records the number of ranks: each rank skips its own share, which is the same share
again only on the same number of ranks.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any, Callable

from slothctl import __version__, models
from slothctl.config import Config, LoraConfig, ModelConfig
from slothctl.errors import RuntimeFailure
from slothctl.events import Emit, Event
from slothctl.runs import CHECKPOINT_INFO, RunPaths, checkpoint_problem, file_sha256, fsync_dir, fsync_tree, \
    rotate_checkpoints, write_json_atomic
from slothctl.training import ranks

SECTIONS = ("model", "lora", "data", "train")
# Keys a run may change between a checkpoint and its continuation without --force-resume: how long
# to train, and bookkeeping that does not touch the numbers (the trainer takes them from the new config).
# The engine may change too: a run started with the hf backend on CPU continues with unsloth on a GPU.
# The number of ranks may change too (train.gpus): with a warning, since the global batch changes.
# So may the micro-batch (the effective batch stays; layout.py): e.g. a smaller one after running out of memory.
FREE_TO_CHANGE = frozenset({"train.max_steps", "train.epochs", "train.save_steps", "train.save_total_limit",
                            "train.logging_steps", "train.report_to", "data.num_proc", "model.backend",
                            "train.gpus", "train.micro_batch", "train.max_vram_fraction"})
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


def read_info(checkpoint: Path) -> dict:
    return json.loads((checkpoint / CHECKPOINT_INFO).read_text(encoding="utf-8"))


def data_position(step: int, batches_per_epoch: int, gradient_accumulation_steps: int) -> dict[str, int]:
    """Where in the data order a step ends: the epoch and the batches done in it."""
    if not batches_per_epoch:
        return {}
    updates_per_epoch = max(1, math.ceil(batches_per_epoch / gradient_accumulation_steps))
    return {"epoch": step // updates_per_epoch,
            "batches_done_in_epoch": step % updates_per_epoch * gradient_accumulation_steps,
            "batches_per_epoch": batches_per_epoch}


def listed_files(folder: Path) -> dict[str, dict[str, Any]]:
    """Every file of a checkpoint (but its marker), relative name → size and sha256: what the marker
    vouches for, so that a file damaged later (even to the same size) is found before it is trained on
    (runs.checkpoint_problem)."""
    return {str(path.relative_to(folder)): {"size": path.stat().st_size, "sha256": file_sha256(path)}
            for path in sorted(folder.rglob("*")) if path.is_file() and path.name != CHECKPOINT_INFO}


def mark_complete(folder: Path, info: dict[str, Any]) -> None:
    """Make a checkpoint folder count: its files flushed to disk first, then the marker written atomically."""
    fsync_tree(folder)
    write_json_atomic(folder / CHECKPOINT_INFO, {**info, "files": listed_files(folder)})
    fsync_dir(folder)
    fsync_dir(folder.parent)


def unmark(folder: Path) -> None:
    """A checkpoint about to be written again stops counting before its files change."""
    marker = folder / CHECKPOINT_INFO
    if marker.is_file():
        marker.unlink()
        fsync_dir(folder)


def completion(run: dict[str, Any], keep: int, emit: Emit, loaded: Callable[[], None] = lambda: None):
    """A TrainerCallback that completes each checkpoint the Trainer saves (the marker), then keeps the
    newest `keep` and announces it. `run` is what every checkpoint of the run records besides its
    position: the config, its hash, the data hash and the seed (run_record). `loaded` runs on rank 0
    once the Trainer has loaded the checkpoint resumed from (weights, optimizer, schedule), before the
    first step: newer checkpoints are set aside only then (plan.set_aside_newer)."""
    from transformers import TrainerCallback

    class Completion(TrainerCallback):
        resumed = False  # the checkpoint resumed from (if any) has loaded: see `loaded` below

        def on_train_begin(self, args, state, control, **kwargs):
            self.resumed = True
            if state.is_world_process_zero:
                loaded()

        def _about_to_save(self, args, state, control) -> None:
            if control.should_save and state.is_world_process_zero:
                unmark(RunPaths(Path(args.output_dir)).checkpoint(state.global_step))

        def on_step_end(self, args, state, control, **kwargs):
            self._about_to_save(args, state, control)

        def on_evaluate(self, args, state, control, **kwargs):  # early stopping may ask for a save
            self._about_to_save(args, state, control)

        def on_save(self, args, state, control, train_dataloader=None, **kwargs):
            ranks.barrier()  # every rank's RNG state is in the folder before it counts
            if not state.is_world_process_zero:
                return
            paths = RunPaths(Path(args.output_dir))
            folder = paths.checkpoint(state.global_step)
            batches = len(train_dataloader) if train_dataloader is not None else 0
            mark_complete(folder, {
                "step": state.global_step, "max_steps": state.max_steps, "epoch": state.epoch,
                "data_position": data_position(state.global_step, batches, args.gradient_accumulation_steps),
                "world_size": args.world_size,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "slothctl": __version__, **run})
            rotate_checkpoints(paths, keep)
            emit(Event("checkpoint", {"step": state.global_step, "path": str(folder)}))

    return Completion()


def loaded(trainer) -> bool:
    """Whether `trainer.train` got past loading its checkpoint (its Completion callback saw the training
    begin): a failure before that is the checkpoint's."""
    return any(getattr(callback, "resumed", False) for callback in trainer.callback_handler.callbacks)


def unloadable(paths: RunPaths, checkpoint: Path, step: int, exc: Exception, resume: str) -> RuntimeFailure:
    """The checkpoint resumed from verified but failed to load (exit 1): named, with the command that
    resumes from the previous good one. Nothing was set aside (that waits for the load)."""
    detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
    return RuntimeFailure(f"cannot load {checkpoint}: {detail}", previous_good(paths, step, resume))


def previous_good(paths: RunPaths, step: int, resume: str) -> str:
    """The hint after the checkpoint of `step` failed (damaged, or it does not load): the command that
    resumes from the newest older checkpoint whose files verify, or starting over when none does."""
    older = [(number, path) for number, path in paths.marked_checkpoints() if number < step]
    good = next((number for number, path in reversed(older) if checkpoint_problem(path) is None), None)
    return (f"resume from the previous good checkpoint: {resume} --from {good}" if good is not None
            else "no earlier checkpoint verifies: start over with slothctl train --fresh")


def run_record(cfg: Config, data_hash: str, rows: int) -> dict[str, Any]:
    """The part of slothctl_checkpoint.json that is the same for every checkpoint of a run."""
    return {"config_hash": config_hash(cfg),
            "config": {s: v for s, v in cfg.to_dict().items() if s in SECTIONS},
            "data": {"hash": data_hash, "rows": rows, "seed": cfg.train.seed}}


# ---- disk space ---------------------------------------------------------------------------------------------------

def lora_parameter_count(lora: LoraConfig, model: ModelConfig, model_path: str) -> int | None:
    """Trainable LoRA parameters: r x (inputs + outputs) of each targeted linear layer."""
    import torch

    meta = models.architecture(model_path, model.revision, model.trust_remote_code)
    if meta is None:
        return None
    targets = set(lora.target_modules)
    return sum(lora.r * (module.in_features + module.out_features) for name, module in meta.named_modules()
               if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in targets)


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
