"""What slothctl adds to the trainer's loop, as TrainerCallbacks: progress events and metrics.jsonl
lines (`progress`), and run control (`run_control`): a clean stop after a signal, a checkpoint where
early stopping ends the run, intervals from the current config, and a resumed run's learning rate
from the schedule it continues on (`continue_schedule`). Trackers are in trackers.py,
checkpoint completion (and its `checkpoint` event) in checkpoints.py.

transformers is imported inside the factories: importing this module stays cheap.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from slothctl import interrupts
from slothctl.events import Emit, Event
from slothctl.runs import RunPaths, append_jsonl


def progress(emit: Emit, paths: RunPaths, measure: Callable[[], tuple[float, int]],
             start: dict[str, Any] | None = None):
    """A TrainerCallback that turns the trainer's logs into events and metrics.jsonl lines.
    `measure` gives when the logged step ended and the real tokens trained through it (the trainer
    reads them with the step's numbers, trainer.py): tokens/s, elapsed and ETA. `start` goes into
    the start event (how rows are batched, and why)."""
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
            self.last = (self.started, measure()[1], state.global_step)
            batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
            emit(Event("start", {"total_steps": state.max_steps, "step": state.global_step,
                                 "world_size": args.world_size, "global_batch": batch, **(start or {})}))

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = dict(logs or {})
            step = state.global_step
            record: dict[str, Any] = {"step": step, "epoch": round(state.epoch or 0.0, 4)}
            if "eval_loss" in logs:
                self.eval_loss = float(logs["eval_loss"])
                record.update(event="eval", eval_loss=self.eval_loss, total_steps=state.max_steps)
            elif "loss" in logs:
                now, tokens = measure()
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
            if state.is_world_process_zero:  # every rank logs (tokens_seen sums over them); rank 0 writes
                append_jsonl(paths.metrics, record)
                emit(Event(record.pop("event"), record))

    return Progress()


def continue_schedule(scheduler) -> None:
    """Set the optimizer's learning rate from the schedule the run continues on. A resumed optimizer
    holds the rate its checkpoint's schedule gave for the next step: trained longer (a larger
    max_steps), that next step would take the shorter schedule's rate (0 at the end of a cosine)
    while the steps after it follow the new one. transformers' schedules are closed-form (LambdaLR:
    base rate x factor(step)), so stepping back once and forward once recomputes it (and the rate it
    logs) at the restored step; with the same schedule nothing changes."""
    from torch.optim.lr_scheduler import LambdaLR

    scheduler = getattr(scheduler, "scheduler", scheduler)  # accelerate's wrapper, where there is one
    if isinstance(scheduler, LambdaLR) and scheduler.last_epoch > 0:
        scheduler.last_epoch -= 1
        scheduler.step()


def run_control(emit: Emit, stop: interrupts.State, save_on_early_stop: bool,
                agree: Callable[[bool], bool] = lambda requested: requested):
    """A TrainerCallback for what slothctl adds to the loop: stop cleanly after a signal, checkpoint
    where early stopping ends the run (transformers already saves the last step, so a finished run
    can be trained longer), and take the save/eval/logging intervals from the current config rather
    than from the checkpoint's trainer state. `agree` makes several ranks stop after the same step
    (ranks.any_rank: a stop seen by one is a stop for all)."""
    from transformers import TrainerCallback

    class RunControl(TrainerCallback):
        noticed = False

        def on_train_begin(self, args, state, control, lr_scheduler=None, **kwargs):
            state.compute_steps(args, state.max_steps)
            interrupts.check("before training started")  # a signal while the trainer was set up
            if state.global_step > 0 and lr_scheduler is not None:  # resumed: the rate of the schedule it goes on with
                continue_schedule(lr_scheduler)
            stop.armed = True

        def _notice(self, state) -> None:
            if stop.requested and not self.noticed:
                self.noticed = True
                emit(Event("stopping", {"signal": stop.requested, "step": state.global_step + 1},
                           f"{stop.requested}: finishing step {state.global_step + 1}, then saving a checkpoint "
                           "(press Ctrl-C again to stop at once)"))

        def on_substep_end(self, args, state, control, **kwargs):
            self._notice(state)
            if stop.forced:  # a second signal whose exception a __del__ swallowed
                raise interrupts.STOPPED[0](stop.forced)

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            self._notice(state)

        def on_step_end(self, args, state, control, **kwargs):
            if stop.forced:
                raise interrupts.STOPPED[0](stop.forced)
            if agree(stop.requested is not None):
                stop.requested = stop.requested or "SIGINT"  # another rank's
                stop.handled = True  # this stop is the clean one: no safe point raises for it
                self._notice(state)
                control.should_save = True
                control.should_training_stop = True

        def on_evaluate(self, args, state, control, **kwargs):
            if save_on_early_stop and control.should_training_stop:  # keep where early stopping ended
                control.should_save = True

        def on_train_end(self, args, state, control, **kwargs):
            stop.armed = False

    return RunControl()
