"""`slothctl train`: config sections → setup steps → trainer → run folder, reported through events.

`train` decides first where the run goes and whether it resumes (plan.py), then refuses what cannot
work before anything heavy loads (checks.py), then sets the run up one config section at a time,
in the shape of torchtune's recipe `setup()`:

    setup_data(cfg ...)             the tokenized rows ([data]; the data cache, else formatted now)
    setup_model(cfg.model ...)      base model + tokenizer, through the backend
    setup_lora(cfg.lora ...)        LoRA layers, through the backend
    setup_trainer(cfg.train ...)    TRL's SFTTrainer with our callbacks and checkpoints

then trains (`fit`) and saves the adapter and summary.json (`finish`). The backend (backends/) is
the only part that differs between CPU and GPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slothctl import __version__, backends, config as config_mod, interrupts, libraries, models
from slothctl.backends import Backend, LoadOptions
from slothctl.config import Config, LoraConfig, ModelConfig, TrainConfig
from slothctl.data import Prepared, formatted
from slothctl.data.tokenizer import load_text_tokenizer
from slothctl.errors import Interrupted, SlothctlError
from slothctl.events import Emit, Event, ignore, status, warning
from slothctl.runs import ADAPTER_INFO, RunPaths, append_jsonl, atomic_dir, clean_incomplete, locked, \
    read_metrics, write_json_atomic, write_text_atomic
from slothctl.training import arguments, callbacks, checkpoints, finite, out_of_memory, private, ranks, trackers
from slothctl.training.batching import Choice
from slothctl.training.layout import Layout, MemoryPlan, layout_batching, plan_memory, present_gpu
from slothctl.training.checks import check_bitsandbytes, check_disk_space, check_writable, disk_full, is_disk_full
from slothctl.training.plan import RunPlan, check_resume_point, finished_summary, plan_run, resume_command, \
    run_optimizer, set_aside_newer
from slothctl.training.trainer import make_trainer


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

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainResult:
        """The result as `to_json` wrote it (rank 0's, read by the launcher of several ranks)."""
        return cls(run_dir=Path(data["run_dir"]), adapter=Path(data["adapter"]), steps=data["steps"],
                   first_loss=data["first_loss"], final_loss=data["final_loss"], eval_loss=data["eval_loss"],
                   tokens_per_s=data["tokens_per_s"], seconds=data["seconds"], resumed_from=data["resumed_from"],
                   stopped_early=data["stopped_early"], already_complete=data["already_complete"])


def train(cfg: Config, emit: Emit = ignore, *, fresh: bool = False, force_resume: bool = False,
          from_checkpoint: str | None = None, resume_only: bool = False,
          given: frozenset[str] | None = None) -> TrainResult:
    """Train a LoRA adapter as the config says, or continue it from a checkpoint; returns where it
    went and how it went. `given` (resume): the keys the command set; the rest of [model] [lora]
    [data] [train] continue as the checkpoint recorded them (plan.recorded_config). Raises Interrupted
    (exit 130) after Ctrl-C/SIGTERM: in the loop with a checkpoint saved, elsewhere at the next safe
    point (interrupts.py). Under torchrun, every rank calls it (ranks.py); rank 0 alone reports and writes."""
    ranks.start()
    emit = emit if ranks.is_main() else ignore
    where: dict[str, Any] = {"root": cfg.run_dir, "resume": "slothctl resume"}  # filled in once planned
    with interrupts.deferred(ranks.stop_signals()) as stop, contextlib.ExitStack() as held:
        try:
            return _train(cfg, emit, stop, held, where, fresh=fresh, force_resume=force_resume,
                          from_checkpoint=from_checkpoint, resume_only=resume_only, given=given)
        except interrupts.STOPPED:  # a second signal (or SIGTERM on a rank): at once, wherever it was
            paths = RunPaths(where["root"])
            if paths.root.is_dir():
                clean_incomplete(paths)  # a checkpoint the trainer was writing never got its marker
            latest = paths.latest_checkpoint() if paths.root.is_dir() else None
            kept = f"the last complete checkpoint is {latest}" if latest else "no checkpoint was written"
            second = "a second " if stop.requested else ""
            raise Interrupted(f"stopped at once by {second}{stop.forced or 'a signal'}; {kept}",
                              f"continue with: {where['resume']}" if latest else None) from None


def _train(cfg: Config, emit: Emit, stop: interrupts.State, held: contextlib.ExitStack, where: dict, *, fresh: bool,
           force_resume: bool, from_checkpoint: str | None, resume_only: bool,
           given: frozenset[str] | None = None) -> TrainResult:
    started = time.time()
    locked_root = None
    if not fresh and cfg.run_dir.is_dir() and ranks.is_main():
        check_writable(cfg.run_dir)
        held.enter_context(locked(cfg.run_dir))  # before cleaning up: the folder may be another process's
        locked_root = cfg.run_dir
    plan = ranks.from_main(lambda: plan_run(cfg, emit, fresh=fresh, force_resume=force_resume,
                                            from_checkpoint=from_checkpoint, require_checkpoint=resume_only,
                                            given=given))
    cfg, paths = plan.cfg, plan.paths
    where.update(root=paths.root, resume=resume_command(cfg))
    if plan.renamed_from:
        status(emit, f"Starting fresh in {paths.root} ({paths.root.parent / plan.renamed_from} is kept as it is)")
    check_writable(paths.root)
    trackers.check_available(arguments.tracker(cfg.train))
    backend = backends.get(backends.select(cfg.model.backend))  # imports unsloth first when it is the backend
    libraries.quiet()
    resolved = ranks.main_first(lambda: models.resolve(cfg.model.name, cfg.project_dir, emit))
    interrupts.check("while finding the model")
    models.check_remote_code(resolved.path, cfg.model.trust_remote_code, cfg.model.revision)
    optim = arguments.optimizer_name(cfg.train)
    check_bitsandbytes(cfg.model, optim)
    if ranks.is_main():
        check_disk_space(cfg.lora, cfg.model, paths.root, resolved.path, optim)

    data = ranks.main_first(lambda: setup_data(cfg, resolved.path, emit))
    interrupts.check("while preparing the data")
    total = arguments.planned_steps(cfg.train, data.train_lengths, cfg.model.max_seq_length, ranks.world_size())
    run = checkpoints.run_record(cfg, data.train_hash, data.train_rows)
    run["optim"] = run_optimizer(plan, cfg.train.optim, optim)
    if not from_checkpoint and not plan.forced:
        summary = ranks.from_main(lambda: finished_summary(cfg, paths, total, run["data"]["hash"]))
        if summary is not None:
            return _already_finished(summary, paths, started, emit)
    if plan.checkpoint is not None:
        check_resume_point(plan, run, total, force_resume, emit)
        changed = ranks.changed_world_size(plan.checkpoint.name, plan.info, cfg.train.batch_size,
                                           cfg.train.gradient_accumulation_steps)
        if changed:
            warning(emit, changed)
        how = "with --force-resume" if plan.forced else "the config matches"
        if plan.announced != total:  # resume announced it in its first line, unless the data decided the end
            status(emit, f"Resuming {paths.root} from {plan.checkpoint.name} (step {plan.resume_step} of {total}): "
                         f"{how}")
    elif paths.metrics.is_file():
        status(emit, f"No complete checkpoint in {paths.root}: training it again from step 0")

    memory = setup_layout(cfg, plan, backend.name, resolved.path, data, run["optim"], total, emit)
    run["layout"] = memory.layout.to_dict()  # every checkpoint records it: a resumed run keeps it
    if ranks.is_main():  # the run folder is rank 0's
        if locked_root != paths.root:
            held.enter_context(locked(paths.root))
        _start_run_folder(cfg, plan)
        if arguments.tracker(cfg.train) == "wandb":
            trackers.prepare_wandb(paths, emit)

    laid_out = with_train(cfg, memory.layout.applied(cfg.train))  # batch size, accumulation, checkpointing
    model, tokenizer = setup_model(cfg.model, backend, resolved.path, LoadOptions.of(laid_out), emit)
    model = setup_lora(cfg.lora, backend, model, max_seq_length=cfg.model.max_seq_length,
                       **arguments.lora_options(laid_out.train))
    interrupts.check("while adding the LoRA layers")

    def trainer_for(layout: Layout, resume_plan: RunPlan):
        return setup_trainer(layout.applied(cfg.train), cfg.model, backend, model, tokenizer, data, plan=resume_plan,
                             run=run, total=total, emit=emit, stop=stop,
                             batching=layout_batching(layout, cfg.train, data.train_lengths))

    def announce(trainer) -> None:
        on = ", ".join(filter(None, ["CUDA" if trainer.args.use_cpu is False else "CPU",
                                     ranks.describe(trainer.args.per_device_train_batch_size,
                                                    trainer.args.gradient_accumulation_steps)]))
        status(emit, f"Training {total} steps on {backend.name} ({on})")

    train_started = time.time()
    trainer, step = fit(trainer_for, plan, total, memory, cfg.train, run, where["resume"], emit, announce=announce)
    train_seconds = time.time() - train_started
    trainer.tokens_seen = ranks.total(trainer.tokens_seen)  # from here on, the tokens of every rank
    if not ranks.is_main():  # rank 0 saves, reports and raises; a rank that stopped with it ends quietly
        return TrainResult(run_dir=paths.root, adapter=paths.adapter, steps=step, first_loss=None, final_loss=None,
                           eval_loss=None, tokens_per_s=0.0, seconds=time.time() - started)
    if stop.handled and step < total:
        latest, command = paths.latest_checkpoint(), where["resume"]
        emit(Event("stopped", {"signal": stop.requested, "step": step, "checkpoint": str(latest),
                               "resume": command},
                   f"Stopped by {stop.requested} after step {step}; checkpoint saved: {latest}"))
        raise Interrupted(f"stopped by {stop.requested} after step {step}; checkpoint saved: {latest}",
                          f"continue with: {command}")
    if step < total:
        status(emit, f"Early stopping at step {step}: eval loss did not improve for "
                     f"{arguments.early_stopping(cfg.train, data.eval_rows > 0)} evaluations")
    interrupts.check(f"after step {step}, before the final adapter was saved",
                     f"continue with: {where['resume']}")
    result = finish(cfg, plan, backend.name, trainer, tokenizer, data, run, step=step, total=total,
                    started=started, train_seconds=train_seconds)
    interrupts.check(f"after the run finished (the adapter is saved in {paths.adapter})")
    return result


# ---- setup, one config section each --------------------------------------------------------------------------------

def setup_data(cfg: Config, model_path: str, emit: Emit) -> Prepared:
    """[data]: the tokenized rows from the data cache (`slothctl data format` fills it), else formatted
    now and cached. The one step that takes the whole config: the data pipeline (data/) also reads
    [model] max_seq_length and revision, and data paths are relative to the project file."""
    status(emit, f"Reading {cfg.data.source}")
    tok = load_text_tokenizer(model_path, cfg.model.revision)
    data = formatted(cfg, tok, emit)
    status(emit, f"{data.train_rows} training rows, {data.eval_rows} eval rows "
                 f"({len(data.invalid)} invalid, {len(data.no_trained_tokens)} without trained tokens, "
                 f"{data.truncated} truncated at {cfg.model.max_seq_length} tokens)")
    return data


def setup_model(model_cfg: ModelConfig, backend: Backend, model_path: str, options: LoadOptions, emit: Emit):
    """[model]: the base model and its tokenizer, loaded by the backend. A signal meanwhile is only
    recorded (interrupts.py): loading may not be cut anywhere, the check after it stops."""
    interrupts.hold("model_loading")
    loaded = backend.load(model_cfg, model_path, options, emit)
    interrupts.check("while loading the model")
    return loaded


def setup_lora(lora_cfg: LoraConfig, backend: Backend, model, *, seed: int, gradient_checkpointing: bool,
               max_seq_length: int):
    """[lora]: the trainable LoRA layers (backends.lora_arguments maps the section)."""
    return backend.add_lora(model, lora_cfg, seed=seed, gradient_checkpointing=gradient_checkpointing,
                            max_seq_length=max_seq_length)


def setup_trainer(train_cfg: TrainConfig, model_cfg: ModelConfig, backend: Backend, model, tokenizer,
                  data: Prepared, *, plan: RunPlan, run: dict, total: int, emit: Emit, stop: interrupts.State,
                  batching: Choice | None = None):
    """[train]: the SFTTrainer (arguments.py maps the section) with our callbacks, in this order: early
    stopping decides before run control asks for a save; checkpoint completion sees that request
    (and announces a checkpoint only once it is complete); run control arms the signal handling
    before progress announces the start."""
    paths = plan.paths
    has_eval = data.eval_rows > 0
    batching = batching or arguments.batching_choice(train_cfg, data.train_lengths)
    status(emit, f"Batching {batching.strategy}: {batching.reason}", batching=batching.to_json())
    args = arguments.sft_config(train_cfg, model_cfg, output_dir=str(paths.root), run_name=plan.cfg.output.name,
                                total_steps=total, has_eval=has_eval, optim=run["optim"], batching=batching,
                                overrides=backend.trainer_overrides(batching.strategy))
    hooks: list = []
    patience = arguments.early_stopping(train_cfg, has_eval)
    if patience:
        from transformers import EarlyStoppingCallback

        hooks.append(EarlyStoppingCallback(early_stopping_patience=patience))
    trainer_ref: list = []
    hooks += [callbacks.run_control(emit, stop, save_on_early_stop=arguments.save_on_early_stop(train_cfg),
                                    agree=ranks.any_rank),
              finite.guard(),
              checkpoints.completion(run, arguments.keep_checkpoints(train_cfg), emit,
                                     loaded=lambda: set_aside_newer(plan, emit)),
              callbacks.progress(emit, paths, lambda: every_rank(trainer_ref[0].logged),
                                 start={"batching": batching.to_json()}),
              *trackers.callbacks(arguments.tracker(train_cfg), paths, plan.resume_step)]
    trainer = make_trainer(model, tokenizer, args, data.dataset("train"), data.dataset("eval"), hooks)
    trainer_ref.append(trainer)
    return trainer


# ---- train and save -------------------------------------------------------------------------------------------------

def every_rank(logged: tuple[float, int]) -> tuple[float, int]:
    """A logged step's end time and the real tokens trained through it, summed over the ranks."""
    ended, tokens = logged
    return ended, ranks.total(tokens)


def setup_layout(cfg: Config, plan: RunPlan, backend: str, model_path: str, data: Prepared, optim: str, total: int,
                 emit: Emit) -> MemoryPlan:
    """[train] micro_batch: the run's layout (layout.py) and its memory estimate, announced; a warning
    with the computed changes when the estimate says it will not fit."""
    recorded = plan.info.get("layout") if plan.checkpoint is not None else None
    memory = plan_memory(cfg.model, cfg.lora, cfg.train, model_path=model_path, backend=backend, optim=optim,
                         lengths=data.train_lengths, gpu=present_gpu(), steps=total, recorded=recorded)
    layout = memory.layout
    why = {"auto": "the largest that fits, by the estimate", "fixed": "train.micro_batch",
           "configured": "batch_size as configured", "checkpoint": f"as {plan.checkpoint.name if plan.checkpoint else ''} "
                                                                    "recorded"}[layout.source]
    emit(Event("layout", {**layout.to_dict(), "estimate": memory.estimate.to_dict() if memory.estimate else None},
               f"{layout.describe()} ({why}); {memory.fit_text()}"))
    if memory.estimate is not None and memory.estimate.fits is False:
        options = "; ".join(change.summary for change in memory.fixes[:3]) or "none found"
        warning(emit, f"by the memory estimate this run will not fit the GPU; changes that fit: {options}")
    return memory


def fit(trainer_for, plan: RunPlan, total: int, memory: MemoryPlan, train_cfg: TrainConfig, run: dict, resume: str,
        emit: Emit, announce=None) -> tuple[Any, int]:
    """Train from the plan's checkpoint (or from the start) to `total` steps; returns the trainer and the
    step reached. A run killed after its last checkpoint has nothing left to train: its adapter weights
    are loaded (PEFT, as the Trainer does on resume) so that the final adapter can be saved.

    Out of memory (out_of_memory.py): with micro_batch "auto" the layout is halved and training goes on
    from the step reached, once per halving (`run["layout"]`, which checkpoints record, follows); otherwise
    exit 1 with the computed changes."""
    layout, tokens_before = memory.layout, 0
    while True:
        trainer = trainer_for(layout, plan)
        trainer.tokens_seen = tokens_before
        if announce is not None:
            announce(trainer)
            announce = None
        if plan.resume_step is not None and plan.resume_step >= total:
            model = trainer.model
            model.load_adapter(str(plan.checkpoint), model.active_adapter, is_trainable=True)
            if ranks.is_main():
                set_aside_newer(plan, emit)  # only now that the checkpoint has loaded
            return trainer, plan.resume_step
        try:
            trainer.train(resume_from_checkpoint=str(plan.checkpoint) if plan.checkpoint else None)
            return trainer, trainer.state.global_step
        except Exception as exc:  # noqa: BLE001 - only out of memory is handled; the rest goes on up
            if is_disk_full(exc):
                raise disk_full(plan.paths, trainer.state.global_step, resume) from exc
            if plan.checkpoint is not None and not checkpoints.loaded(trainer) and not isinstance(exc, SlothctlError) \
                    and not out_of_memory.is_out_of_memory(exc):
                raise checkpoints.unloadable(plan.paths, plan.checkpoint, plan.resume_step, exc, resume) from exc
            if not out_of_memory.is_out_of_memory(exc):
                raise
        # here the exception, and the activations its traceback held, are gone
        step = trainer.state.global_step
        out_of_memory.release(trainer)
        # one rank cannot change the layout alone: the others wait for it in the next collective
        halving = arguments.micro_batch_request(train_cfg)[0] == "auto" and ranks.world_size() == 1
        smaller = layout.halved() if halving else None
        if smaller is None:
            raise out_of_memory.failure(memory, layout, step, plan.paths.latest_checkpoint(), resume)
        run["layout"] = smaller.to_dict()  # the checkpoint written now continues with it
        plan = _continue_at(trainer, plan, step)
        emit(Event("out_of_memory", {"step": step, "micro_batch": smaller.micro_batch, "grad_accum": smaller.grad_accum,
                                     "previous_micro_batch": layout.micro_batch},
                   f"Out of memory in step {step + 1}: micro-batch {layout.micro_batch} → {smaller.micro_batch}, "
                   f"accumulation {layout.grad_accum} → {smaller.grad_accum} (the same {layout.rows_per_step} rows per "
                   f"update); continuing from step {step}"))
        tokens_before = trainer.tokens_seen
        trainer.accelerator.free_memory()
        del trainer
        layout = smaller
        memory.layout = layout


def _continue_at(trainer, plan: RunPlan, step: int) -> RunPlan:
    """The plan to continue from `step` after running out of memory in the next one: its checkpoint (written
    now unless the newest one is that step), or the start when no step was done."""
    paths = plan.paths
    if step == 0:
        return dataclasses.replace(plan, checkpoint=None, info={})
    newest = paths.checkpoints()
    if not newest or newest[-1][0] < step:
        finite.check_parameters(trainer.model, step, newest[-1][1] if newest else None)  # as any checkpoint
        private.save_checkpoint(trainer)
    folder = paths.checkpoint(step)
    return dataclasses.replace(plan, checkpoint=folder, info=checkpoints.read_info(folder))


def with_train(cfg: Config, train: TrainConfig) -> Config:
    return dataclasses.replace(cfg, train=train)


def _start_run_folder(cfg: Config, plan: RunPlan) -> None:
    """The resolved config, and a `resume` line in metrics.jsonl: earlier lines past this step are
    void from here on (runs.read_metrics)."""
    paths = plan.paths
    if paths.metrics.is_file():
        append_jsonl(paths.metrics, {"event": "resume", "step": plan.resume_step or 0,
                                     "checkpoint": plan.checkpoint.name if plan.checkpoint else None,
                                     "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    write_text_atomic(paths.config, config_mod.to_toml(cfg))


def save_adapter(model, tokenizer, cfg: Config, data: Prepared, backend: str, paths: RunPaths) -> None:
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


def finish(cfg: Config, plan: RunPlan, backend: str, trainer, tokenizer, data: Prepared, run: dict, *, step: int,
           total: int, started: float, train_seconds: float) -> TrainResult:
    """The adapter, then summary.json: the run's numbers across resumes, timings, versions."""
    paths = plan.paths
    finite.check_parameters(trainer.model, step, paths.latest_checkpoint())  # never a NaN adapter
    save_adapter(trainer.model, tokenizer, cfg, data, backend, paths)
    losses, evals = _history(paths)
    result = TrainResult(
        run_dir=paths.root, adapter=paths.adapter, steps=step,
        first_loss=losses[0][1] if losses else None, final_loss=losses[-1][1] if losses else None,
        eval_loss=evals[-1][1] if evals else None, tokens_per_s=trainer.tokens_seen / max(train_seconds, 1e-9),
        seconds=time.time() - started, losses=losses, evals=evals, resumed_from=plan.resume_step,
        stopped_early=step < total)
    write_json_atomic(paths.summary, {
        **result.to_json(), "run": cfg.output.name, "backend": backend,
        "device": "cuda" if trainer.args.use_cpu is False else "cpu", "train_seconds": round(train_seconds, 2),
        "train_tokens": trainer.tokens_seen, "losses": losses, "evals": evals,
        "best_eval_loss": min((loss for _, loss in evals), default=None),
        "config_hash": run["config_hash"], "optim": run["optim"], "peak_vram_gb": _peak_vram_gb(),
        "layout": run.get("layout"),
        "data": {"rows": data.rows, "format": data.format, "train_rows": data.train_rows,
                 "eval_rows": data.eval_rows, "invalid": len(data.invalid), "truncated": data.truncated,
                 "chat_template": data.template.name if data.template else None, "hash": run["data"]["hash"]},
        "config": cfg.to_dict(), "versions": libraries.training_versions()})
    return result


def _history(paths: RunPaths) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(step, loss) and (step, eval_loss) of the whole run, across resumes, from metrics.jsonl."""
    records = read_metrics(paths.metrics)
    losses = [(r["step"], r["loss"]) for r in records if r.get("event") == "step"]
    evals = [(r["step"], r["eval_loss"]) for r in records if r.get("event") == "eval"]
    return losses, evals


def _already_finished(summary: dict, paths: RunPaths, started: float, emit: Emit) -> TrainResult:
    status(emit, f"{paths.root} already finished this config ({summary['steps']} steps): nothing to train "
                 "(--fresh starts over in a new folder, --max-steps N trains longer)")
    losses, evals = _history(paths)
    return TrainResult(run_dir=paths.root, adapter=paths.adapter, steps=summary["steps"],
                       first_loss=summary.get("first_loss"), final_loss=summary.get("final_loss"),
                       eval_loss=summary.get("eval_loss"), tokens_per_s=summary.get("tokens_per_s") or 0.0,
                       seconds=time.time() - started, losses=losses, evals=evals,
                       stopped_early=bool(summary.get("stopped_early")), already_complete=True)


def _peak_vram_gb() -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 3) if torch.cuda.is_available() else None
