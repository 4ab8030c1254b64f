"""`slothctl train`: data → model → LoRA → TRL SFTTrainer → adapter, reported through events.

The run is set up one piece at a time (model resolution, data, backend, trainer), each in its
own function, so a config key can be followed from the TOML to the call that uses it.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from slothctl import __version__, backends, config as config_mod, models
from slothctl.config import Config
from slothctl.data import Prepared, formatted
from slothctl.data.tokenizer import load_text_tokenizer
from slothctl.errors import UsageError
from slothctl.events import Emit, Event, ignore, status
from slothctl.runs import RunPaths, append_jsonl, atomic_dir, write_json_atomic, write_text_atomic

ADAPTER_INFO = "slothctl_adapter.json"
LIBRARIES = ("slothctl", "torch", "transformers", "peft", "trl", "datasets", "accelerate", "unsloth",
             "unsloth_zoo", "bitsandbytes")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    versions["slothctl"] = __version__
    return versions


def quiet_libraries() -> None:
    """Library progress bars and info logs would garble the live view and the JSON stream."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import logging

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # CPU kernel notices on import
    import datasets
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()


@dataclass
class TrainResult:
    run_dir: Path
    adapter: Path
    steps: int
    first_loss: float | None
    final_loss: float | None
    eval_loss: float | None
    tokens_per_s: float
    seconds: float
    losses: list[tuple[int, float]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"steps": self.steps, "final_loss": self.final_loss, "first_loss": self.first_loss,
                "eval_loss": self.eval_loss, "tokens_per_s": round(self.tokens_per_s, 1),
                "seconds": round(self.seconds, 2), "adapter": str(self.adapter), "run_dir": str(self.run_dir)}


def make_progress_callback(emit: Emit, paths: RunPaths, trainer_ref: list):
    """A TrainerCallback that turns the trainer's logs into events and metrics.jsonl lines."""
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        def __init__(self):
            self.started = time.time()
            self.losses: list[tuple[int, float]] = []
            self.eval_loss: float | None = None
            self.last = (time.time(), 0, 0)  # (time, tokens, step) at the previous log
            self.start_step = 0  # not 0 when resuming

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = time.time()
            self.start_step = state.global_step
            self.last = (self.started, trainer_ref[0].tokens_seen, state.global_step)
            emit(Event("start", {"total_steps": state.max_steps, "step": state.global_step}))

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = dict(logs or {})
            now, step = time.time(), state.global_step
            tokens = trainer_ref[0].tokens_seen
            record: dict[str, Any] = {"step": step, "epoch": round(state.epoch or 0.0, 4)}
            if "eval_loss" in logs:
                self.eval_loss = float(logs["eval_loss"])
                record.update(event="eval", eval_loss=self.eval_loss)
            elif "loss" in logs:
                last_time, last_tokens, last_step = self.last
                elapsed = now - self.started
                per_step = elapsed / max(1, step - self.start_step)
                record.update(event="step", loss=float(logs["loss"]), lr=float(logs.get("learning_rate", 0.0)),
                              grad_norm=float(logs["grad_norm"]) if "grad_norm" in logs else None,
                              tokens_per_s=round((tokens - last_tokens) / max(now - last_time, 1e-9), 1),
                              total_steps=state.max_steps, elapsed=round(elapsed, 2),
                              eta=round(per_step * (state.max_steps - step), 1))
                self.losses.append((step, float(logs["loss"])))
                self.last = (now, tokens, step)
            else:
                return
            append_jsonl(paths.metrics, record)
            emit(Event(record.pop("event"), record))

        def on_save(self, args, state, control, **kwargs):
            emit(Event("checkpoint", {"step": state.global_step,
                                      "path": str(paths.checkpoint(state.global_step))}))

    return Progress()


def check_existing_run(cfg: Config, paths: RunPaths) -> Path | None:
    """A run folder from the same config resumes from its latest checkpoint; a different config is refused."""
    if not paths.config.is_file():
        return None
    previous = config_mod.load(paths.config)
    if config_mod.fingerprint(previous) != config_mod.fingerprint(cfg):
        old, new = previous.to_dict(), cfg.to_dict()
        changed = [f"{s}.{k}" for s in ("model", "lora", "data", "train") for k in new[s] if old[s][k] != new[s][k]]
        raise UsageError(f"run folder {paths.root} was trained with a different config "
                         f"(changed: {', '.join(changed)})", "set another [output] name, or remove that folder")
    return paths.latest_checkpoint()


def _prepare_data(cfg: Config, model_path: str, emit: Emit) -> Prepared:
    """The formatted dataset from the data cache (`slothctl data format` fills it), else formatted now and cached."""
    status(emit, f"Reading {cfg.data.source}")
    tok = load_text_tokenizer(model_path, cfg.model.revision)
    data = formatted(cfg, tok, emit)
    status(emit, f"{len(data.train)} training rows, {len(data.eval)} eval rows "
                 f"({len(data.invalid)} invalid, {len(data.no_trained_tokens)} without trained tokens, "
                 f"{data.truncated} truncated at {cfg.model.max_seq_length} tokens)")
    return data


def _save_adapter(model, tokenizer, cfg: Config, data: Prepared, backend: str, paths: RunPaths) -> None:
    """The final adapter with the tokenizer and the chat template used in training, written atomically."""
    from slothctl.data.templates import apply_template

    apply_template(tokenizer, data.template)  # the template trained with, its end-of-turn token as eos
    with atomic_dir(paths.adapter, replace=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json_atomic(tmp / ADAPTER_INFO, {
            "base_model": cfg.model.name, "chat_template": data.template.name if data.template else None,
            "format": data.format, "backend": backend, "max_seq_length": cfg.model.max_seq_length,
            "slothctl": __version__})


def train(cfg: Config, emit: Emit = ignore) -> TrainResult:
    """Train a LoRA adapter as the config says; returns where it went and how it went."""
    started = time.time()
    paths = RunPaths(cfg.run_dir)
    resume_from = check_existing_run(cfg, paths)
    backend_name = backends.select(cfg.model.backend)
    backend = backends.get(backend_name)  # imports unsloth first when it is the backend
    quiet_libraries()
    resolved = models.resolve(cfg.model.name, cfg.project_dir, emit)
    data = _prepare_data(cfg, resolved.path, emit)

    paths.root.mkdir(parents=True, exist_ok=True)
    write_text_atomic(paths.config, config_mod.to_toml(cfg))
    model, tokenizer = backend.load(cfg, resolved.path, emit)
    model = backend.add_lora(model, cfg)

    from slothctl.backends.common import planned_steps, sft_config, to_dataset

    total = planned_steps(cfg, len(data.train), None)
    trainer_ref: list = []
    progress = make_progress_callback(emit, paths, trainer_ref)
    args = sft_config(cfg, str(paths.root), total_steps=total, has_eval=bool(data.eval))
    trainer = backend.trainer_class()(
        model=model, args=args, processing_class=tokenizer, train_dataset=to_dataset(data.train),
        eval_dataset=to_dataset(data.eval) if data.eval else None, callbacks=[progress])
    trainer_ref.append(trainer)
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)  # our own view reports progress
    trainer.remove_callback(ProgressCallback)
    if resume_from is not None:
        status(emit, f"Resuming from {resume_from.name}")
    status(emit, f"Training {total} steps on {backend_name} ({'CUDA' if args.use_cpu is False else 'CPU'})")
    train_started = time.time()
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    train_seconds = time.time() - train_started

    _save_adapter(trainer.model, tokenizer, cfg, data, backend_name, paths)
    losses = progress.losses
    result = TrainResult(
        run_dir=paths.root, adapter=paths.adapter, steps=trainer.state.global_step,
        first_loss=losses[0][1] if losses else None, final_loss=losses[-1][1] if losses else None,
        eval_loss=progress.eval_loss, tokens_per_s=trainer.tokens_seen / max(train_seconds, 1e-9),
        seconds=time.time() - started, losses=losses)
    write_json_atomic(paths.summary, {
        **result.to_json(), "run": cfg.output.name, "backend": backend_name,
        "device": "cuda" if args.use_cpu is False else "cpu", "train_seconds": round(train_seconds, 2),
        "train_tokens": trainer.tokens_seen, "losses": losses, "fingerprint": config_mod.fingerprint(cfg),
        "data": {"rows": data.rows, "format": data.format, "train_rows": len(data.train),
                 "eval_rows": len(data.eval), "invalid": len(data.invalid), "truncated": data.truncated,
                 "chat_template": data.template.name if data.template else None},
        "config": cfg.to_dict(), "versions": library_versions()})
    return result
