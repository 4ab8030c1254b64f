"""`slothctl train`: data → model → LoRA → TRL SFTTrainer → adapter, reported through events.

The run is set up one piece at a time (model resolution, data, backend, trainer), each in its
own function, so a config key can be followed from the TOML to the call that uses it. Where the run
goes and whether it resumes is decided first (runplan.py); checkpoints (checkpoints.py), signals
(interrupts.py) and trackers (tracking.py) wrap whatever trainer class the backend returns, so both
backends behave the same.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from slothctl import __version__, backends, checkpoints, config as config_mod, models, tracking
from slothctl.config import Config
from slothctl.data import Prepared, formatted
from slothctl.data.tokenizer import load_text_tokenizer
from slothctl.errors import Interrupted, UsageError
from slothctl.events import Emit, Event, ignore, status, warning
from slothctl.interrupts import GracefulStop
from slothctl.runplan import RunPlan, check_disk_space, check_writable, finished_summary, locked, plan_run, \
    resume_command, set_aside_newer
from slothctl.runs import CHECKPOINT_INFO, RunPaths, append_jsonl, atomic_dir, read_metrics, write_json_atomic, \
    write_text_atomic

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
    evals: list[tuple[int, float]] = field(default_factory=list)
    resumed_from: int | None = None
    stopped_early: bool = False
    already_complete: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"steps": self.steps, "final_loss": self.final_loss, "first_loss": self.first_loss,
                "eval_loss": self.eval_loss, "tokens_per_s": round(self.tokens_per_s, 1),
                "seconds": round(self.seconds, 2), "adapter": str(self.adapter), "run_dir": str(self.run_dir),
                "resumed_from": self.resumed_from, "stopped_early": self.stopped_early,
                "already_complete": self.already_complete}


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
                record.update(event="eval", eval_loss=self.eval_loss, total_steps=state.max_steps)
            elif "loss" in logs:
                last_time, last_tokens, last_step = self.last
                elapsed = now - self.started
                per_step = elapsed / max(1, step - self.start_step)
                record.update(event="step", loss=float(logs["loss"]), lr=float(logs.get("learning_rate", 0.0)),
                              grad_norm=float(logs["grad_norm"]) if "grad_norm" in logs else None,
                              tokens_per_s=round((tokens - last_tokens) / max(now - last_time, 1e-9), 1),
                              tokens=tokens,
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


def make_run_control(emit: Emit, stop: GracefulStop, save_on_early_stop: bool):
    """A TrainerCallback for what slothctl adds to the loop: stop cleanly after a signal, checkpoint
    where early stopping ends the run (transformers already saves the last step, so a finished run
    can be trained longer), and take the save/eval/logging intervals from the current config rather
    than from the checkpoint's trainer state."""
    from transformers import TrainerCallback

    class RunControl(TrainerCallback):
        noticed = False

        def on_train_begin(self, args, state, control, **kwargs):
            state.compute_steps(args, state.max_steps)
            stop.armed = True

        def _notice(self, state) -> None:
            if stop.requested and not self.noticed:
                self.noticed = True
                emit(Event("stopping", {"signal": stop.requested, "step": state.global_step + 1},
                           f"{stop.requested}: finishing step {state.global_step + 1}, then saving a checkpoint "
                           "(press Ctrl-C again to stop at once)"))

        def on_substep_end(self, args, state, control, **kwargs):
            self._notice(state)

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            self._notice(state)

        def on_step_end(self, args, state, control, **kwargs):
            if stop.requested:
                self._notice(state)
                control.should_save = True
                control.should_training_stop = True

        def on_evaluate(self, args, state, control, **kwargs):
            if save_on_early_stop and control.should_training_stop:  # keep where early stopping ended
                control.should_save = True

        def on_train_end(self, args, state, control, **kwargs):
            stop.armed = False

    return RunControl()


def _prepare_data(cfg: Config, model_path: str, emit: Emit) -> Prepared:
    """The formatted dataset from the data cache (`slothctl data format` fills it), else formatted now and cached."""
    status(emit, f"Reading {cfg.data.source}")
    tok = load_text_tokenizer(model_path, cfg.model.revision)
    data = formatted(cfg, tok, emit)
    status(emit, f"{data.train_rows} training rows, {data.eval_rows} eval rows "
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



def _history(paths: RunPaths) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(step, loss) and (step, eval_loss) of the whole run, across resumes, from metrics.jsonl."""
    records = read_metrics(paths.metrics)
    losses = [(r["step"], r["loss"]) for r in records if r.get("event") == "step"]
    evals = [(r["step"], r["eval_loss"]) for r in records if r.get("event") == "eval"]
    return losses, evals


def _finished(summary: dict, paths: RunPaths, started: float, emit: Emit) -> TrainResult:
    status(emit, f"{paths.root} already finished this config ({summary['steps']} steps): nothing to train "
                 "(--fresh starts over in a new folder, --max-steps N trains longer)")
    losses, evals = _history(paths)
    return TrainResult(run_dir=paths.root, adapter=paths.adapter, steps=summary["steps"],
                       first_loss=summary.get("first_loss"), final_loss=summary.get("final_loss"),
                       eval_loss=summary.get("eval_loss"), tokens_per_s=summary.get("tokens_per_s") or 0.0,
                       seconds=time.time() - started, losses=losses, evals=evals,
                       stopped_early=bool(summary.get("stopped_early")), already_complete=True)


def _check_resume_point(plan: RunPlan, run: dict, total: int, force: bool, emit: Emit) -> None:
    """The data and the length must allow continuing from the chosen checkpoint."""
    info, name = plan.info, plan.checkpoint.name
    if info["data"]["hash"] != run["data"]["hash"]:
        if not force:
            raise UsageError(f"the training data changed since {name} was written ({info['data']['rows']} → "
                             f"{run['data']['rows']} rows, other tokens): the run cannot continue exactly",
                             "restore the data, pass --fresh to start over, or --force-resume to go on with the new data")
        warning(emit, f"--force-resume: the training data changed since {name}; its order cannot be continued exactly")
    step = info["step"]
    if step > total:
        raise UsageError(f"{name} is at step {step}, past max_steps = {total}",
                         f"set --max-steps above {step}, resume --from an earlier checkpoint, or start over with --fresh")
    if info.get("max_steps") not in (None, total):
        status(emit, f"max_steps {info['max_steps']} → {total}: training on from step {step}, with the "
                     f"learning-rate schedule recomputed for {total} steps")


def train(cfg: Config, emit: Emit = ignore, *, fresh: bool = False, force_resume: bool = False,
          from_checkpoint: str | None = None, resume_only: bool = False) -> TrainResult:
    """Train a LoRA adapter as the config says, or continue it from a checkpoint; returns where it
    went and how it went. Raises Interrupted (exit 130) after Ctrl-C/SIGTERM, with a checkpoint saved."""
    stop = GracefulStop()
    where: dict[str, Any] = {"root": cfg.run_dir, "resume": "slothctl resume"}  # filled in by _train
    with stop, contextlib.ExitStack() as held:
        try:
            return _train(cfg, emit, stop, held, where, fresh=fresh, force_resume=force_resume,
                          from_checkpoint=from_checkpoint, resume_only=resume_only)
        except KeyboardInterrupt:
            if not (stop.requested and stop.forced):
                raise
            latest = RunPaths(where["root"]).latest_checkpoint()
            kept = f"the last complete checkpoint is {latest}" if latest else "no checkpoint was written"
            raise Interrupted(f"stopped at once by a second {stop.forced}; {kept}",
                              f"continue with: {where['resume']}" if latest else None) from None


def _train(cfg: Config, emit: Emit, stop: GracefulStop, held: contextlib.ExitStack, where: dict, *, fresh: bool,
           force_resume: bool, from_checkpoint: str | None, resume_only: bool) -> TrainResult:
    started = time.time()
    locked_root = None
    if not fresh and cfg.run_dir.is_dir():
        check_writable(cfg.run_dir)
        held.enter_context(locked(cfg.run_dir))  # before cleaning up: the folder may be another process's
        locked_root = cfg.run_dir
    plan = plan_run(cfg, emit, fresh=fresh, force_resume=force_resume, from_checkpoint=from_checkpoint,
                    require_checkpoint=resume_only)
    cfg, paths = plan.cfg, plan.paths
    where.update(root=paths.root, resume=resume_command(cfg))
    if plan.renamed_from:
        status(emit, f"Starting fresh in {paths.root} ({paths.root.parent / plan.renamed_from} is kept as it is)")
    check_writable(paths.root)
    tracking.check_available(cfg)
    backend_name = backends.select(cfg.model.backend)
    backend = backends.get(backend_name)  # imports unsloth first when it is the backend
    quiet_libraries()
    resolved = models.resolve(cfg.model.name, cfg.project_dir, emit)
    from slothctl.backends.common import optimizer_name, planned_steps

    check_disk_space(cfg, paths.root, resolved.path, optimizer_name(cfg))
    data = _prepare_data(cfg, resolved.path, emit)
    total = planned_steps(cfg, data.train_lengths, None)
    run = checkpoints.run_record(cfg, data.train_hash, data.train_rows)
    run["optim"] = _run_optimizer(cfg, plan, optimizer_name(cfg))
    if not from_checkpoint and not plan.forced:
        summary = finished_summary(cfg, paths, total, run["data"]["hash"])
        if summary is not None:
            return _finished(summary, paths, started, emit)
    if plan.checkpoint is not None:
        _check_resume_point(plan, run, total, force_resume, emit)
        set_aside_newer(plan, emit)
        how = "with --force-resume" if plan.forced else "the config matches"
        status(emit, f"Resuming {paths.root} from {plan.checkpoint.name} (step {plan.resume_step} of {total}): {how}")
    elif paths.metrics.is_file():
        status(emit, f"No complete checkpoint in {paths.root}: training it again from step 0")

    if locked_root != paths.root:
        held.enter_context(locked(paths.root))
    if paths.metrics.is_file():  # earlier lines past this step are void from here on (runs.read_metrics)
        append_jsonl(paths.metrics, {"event": "resume", "step": plan.resume_step or 0,
                                     "checkpoint": plan.checkpoint.name if plan.checkpoint else None,
                                     "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    write_text_atomic(paths.config, config_mod.to_toml(cfg))
    if cfg.train.report_to == "wandb":
        tracking.prepare_wandb(cfg, paths, emit)
    model, tokenizer = backend.load(cfg, resolved.path, emit)
    model = backend.add_lora(model, cfg)
    trainer = _make_trainer(cfg, plan, backend, model, tokenizer, data, run, total, emit, stop)
    status(emit, f"Training {total} steps on {backend_name} ({'CUDA' if trainer.args.use_cpu is False else 'CPU'})")
    train_started = time.time()
    if plan.resume_step is not None and plan.resume_step >= total:  # killed after its last checkpoint
        trainer._load_from_checkpoint(str(plan.checkpoint))
        trainer.state.global_step = plan.resume_step
    else:
        trainer.train(resume_from_checkpoint=str(plan.checkpoint) if plan.checkpoint else None)
    train_seconds = time.time() - train_started
    step = trainer.state.global_step
    if stop.requested and step < total:
        latest, command = paths.latest_checkpoint(), where["resume"]
        emit(Event("stopped", {"signal": stop.requested, "step": step, "checkpoint": str(latest),
                               "resume": command},
                   f"Stopped by {stop.requested} after step {step}; checkpoint saved: {latest}"))
        raise Interrupted(f"stopped by {stop.requested} after step {step}; checkpoint saved: {latest}",
                          f"continue with: {command}")
    if step < total:
        status(emit, f"Early stopping at step {step}: eval loss did not improve for "
                     f"{cfg.train.early_stopping_patience} evaluations")

    _save_adapter(trainer.model, tokenizer, cfg, data, backend_name, paths)
    losses, evals = _history(paths)
    result = TrainResult(
        run_dir=paths.root, adapter=paths.adapter, steps=step,
        first_loss=losses[0][1] if losses else None, final_loss=losses[-1][1] if losses else None,
        eval_loss=evals[-1][1] if evals else None, tokens_per_s=trainer.tokens_seen / max(train_seconds, 1e-9),
        seconds=time.time() - started, losses=losses, evals=evals, resumed_from=plan.resume_step,
        stopped_early=step < total)
    write_json_atomic(paths.summary, {
        **result.to_json(), "run": cfg.output.name, "backend": backend_name,
        "device": "cuda" if trainer.args.use_cpu is False else "cpu", "train_seconds": round(train_seconds, 2),
        "train_tokens": trainer.tokens_seen, "losses": losses, "evals": evals,
        "best_eval_loss": min((loss for _, loss in evals), default=None),
        "config_hash": run["config_hash"], "optim": run["optim"], "peak_vram_gb": _peak_vram_gb(),
        "data": {"rows": data.rows, "format": data.format, "train_rows": data.train_rows,
                 "eval_rows": data.eval_rows, "invalid": len(data.invalid), "truncated": data.truncated,
                 "chat_template": data.template.name if data.template else None, "hash": run["data"]["hash"]},
        "config": cfg.to_dict(), "versions": library_versions()})
    return result


def _peak_vram_gb() -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 3) if torch.cuda.is_available() else None


def _run_optimizer(cfg: Config, plan: RunPlan, resolved: str) -> str:
    """A run keeps the optimizer it started with: `optim = "auto"` resolves per device (8-bit AdamW on
    CUDA, AdamW on CPU), and a checkpoint's optimizer state only loads into the same kind, so a CPU
    run continued on a GPU keeps AdamW."""
    if plan.checkpoint is not None and cfg.train.optim == "auto":
        info = plan.checkpoint / CHECKPOINT_INFO
        if info.is_file():
            resolved = json.loads(info.read_text(encoding="utf-8")).get("optim", resolved)
    return resolved


def _make_trainer(cfg: Config, plan: RunPlan, backend, model, tokenizer, data: Prepared, run: dict, total: int,
                  emit: Emit, stop: GracefulStop):
    """The backend's SFTTrainer, made resumable (checkpoints.py), with our callbacks: progress events,
    the tracker, early stopping and the signal/stop control."""
    from slothctl.backends.common import sft_config

    paths = plan.paths
    trainer_ref: list = []
    early = data.eval_rows > 0 and not cfg.train.skip_eval and cfg.train.early_stopping_patience > 0
    extra = dict(metric_for_best_model="eval_loss", greater_is_better=False) if early else {}
    extra.update(backend.sft_overrides(cfg))
    args = sft_config(cfg, str(paths.root), total_steps=total, has_eval=data.eval_rows > 0, run_name=cfg.output.name,
                      report_to=tracking.trainer_report_to(cfg), optim=run["optim"],
                      lengths=data.train_lengths, **extra)
    callbacks = []  # in this order: early stopping decides before run control saves; run control arms
    if early:        # the signal handling before progress announces the start
        from transformers import EarlyStoppingCallback

        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.train.early_stopping_patience))
    callbacks += [make_run_control(emit, stop, save_on_early_stop=cfg.train.save_steps > 0),
                  make_progress_callback(emit, paths, trainer_ref), *tracking.callbacks(cfg, paths, plan.resume_step)]
    trainer_class = checkpoints.make_resumable(backend.trainer_class(), run)
    trainer = trainer_class(
        model=model, args=args, processing_class=tokenizer, train_dataset=data.dataset("train"),
        eval_dataset=data.dataset("eval"), callbacks=callbacks)
    trainer_ref.append(trainer)
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)  # our own view reports progress
    trainer.remove_callback(ProgressCallback)
    return trainer
