"""The trainer both backends train with: TRL's SFTTrainer (Unsloth's patched one when unsloth was
imported first), subclassed to count the tokens it trains on, to batch rows of similar length
together, to use the plain transformers loss on CPU, and to keep the GPU busy between steps.
Its datasets are the tokenized rows.

What a step does beyond forward, backward and the optimizer, and why it is cheap here
(bench/profile_steps.py shows it per step; README "Speed"):

- Numbers are read from the GPU without waiting for it (on CUDA). transformers reads each logged step's loss
  and gradient norm with `.item()` as soon as the step is queued: the CPU then waits for the GPU to
  finish, and the GPU waits while the CPU reports, fetches and collates the next batch and starts
  its forward. Here a logged step's numbers (loss, gradient norm, tokens so far, and a CUDA event
  for the time it ended) are copied to the host asynchronously and reported at the end of the next
  step, by then long arrived; before an evaluation, a checkpoint and at the end they are reported
  at once, so the event stream, metrics.jsonl and the trainer state keep their order. The values
  are the ones transformers would log, to the bit.
- Tokens are counted on the device (a sum of the attention mask), not with `int(...)` per micro-step.
- The FLOP count transformers keeps (`floating_point_ops`) walks every module of the model to count
  parameters at every micro-step; the count is taken once.
- `logging_nan_inf_filter` is off (arguments.py): it compares every micro-step's loss with NaN on
  the host, a sync per micro-step, to hide a NaN loss that we would rather report.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from slothctl.backends.device import on_cuda
from slothctl.data.encode import Encoded
from slothctl.training.batching import LengthGroupedBatches

# Read logged numbers one step late (above): None = on CUDA, where waiting costs; on CPU the numbers
# are ready when the step ends. tests/test_train_loop.py forces it on CPU to compare with transformers' logging.
READ_LOGS_LATE: bool | None = None


def to_dataset(examples: list[Encoded]):
    """The tokenized rows as a `datasets.Dataset` with input_ids and labels: TRL then skips its own
    tokenization and trains on exactly these tokens and this mask."""
    from datasets import Dataset

    return Dataset.from_dict({"input_ids": [e.input_ids for e in examples],
                              "labels": [e.labels for e in examples]})


def count_tokens(inputs: dict):
    """Real (non-pad) tokens in a batch: attention mask when padded (a tensor on the batch's device:
    reading it would wait for the GPU), the flat length when padding-free."""
    if "attention_mask" in inputs:
        return inputs["attention_mask"].sum()
    if "position_ids" in inputs:
        return int(inputs["position_ids"].numel())
    return int(inputs["input_ids"].numel())


@dataclass
class LoggedStep:
    """A logged step whose numbers are on their way from the device."""

    step: int
    epoch: float | None
    steps: int  # optimizer steps the loss sums over
    learning_rate: float | None
    values: Any  # float64 tensor on the host (pinned): loss sum, then gradient norm and tokens where on the device
    on_host: dict  # gradient norm and tokens that were host numbers already
    arrived: Any  # CUDA event after the copy; None on CPU
    ended: Any  # CUDA timing event at the step's end; on CPU the wall time

    @classmethod
    def queue(cls, tr_loss, grad_norm, tokens, *, step: int, epoch, steps: int, learning_rate) -> LoggedStep:
        import torch

        on_device, on_host = [tr_loss.detach()], {}
        for name, value in (("grad_norm", grad_norm), ("tokens", tokens)):
            if isinstance(value, torch.Tensor):
                on_device.append(value.detach())
            else:
                on_host[name] = value
        stacked = torch.stack([v.to(torch.float64).reshape(()) for v in on_device])
        if stacked.is_cuda:
            values = stacked.to("cpu", non_blocking=True)  # into pinned memory, without waiting
            arrived, ended = torch.cuda.Event(), torch.cuda.Event(enable_timing=True)
            arrived.record()
            ended.record()
        else:
            values, arrived, ended = stacked, None, time.time()
        return cls(step, epoch, steps, learning_rate, values, on_host, arrived, ended)

    def read(self, clock: Clock) -> tuple[dict[str, float], float, float, int]:
        """The logs transformers would write for this step, the loss summed over its steps, when it
        ended (wall time) and the real tokens trained through it."""
        if self.arrived is not None:
            self.arrived.synchronize()  # returns at once when read a step later
        values = iter(self.values.tolist())
        loss_sum = next(values)
        grad_norm = next(values) if "grad_norm" not in self.on_host else self.on_host["grad_norm"]
        tokens = next(values) if "tokens" not in self.on_host else self.on_host["tokens"]
        logs: dict[str, float] = {"loss": loss_sum / self.steps}
        if grad_norm is not None:
            logs["grad_norm"] = grad_norm
        if self.learning_rate is not None:
            logs["learning_rate"] = self.learning_rate
        return logs, loss_sum, clock.wall(self.ended), int(tokens)


class Clock:
    """Wall times of step ends measured on the GPU: a CUDA event recorded at the first micro-step
    anchors the events recorded at step ends to the wall clock."""

    def __init__(self):
        self.origin = None  # (wall time, CUDA event)

    def start(self) -> None:
        import torch

        if self.origin is None and torch.cuda.is_available():
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.origin = (time.time(), event)

    def wall(self, ended) -> float:
        if isinstance(ended, float) or self.origin is None:
            return float(ended) if isinstance(ended, float) else time.time()
        started, event = self.origin
        return started + event.elapsed_time(ended) / 1e3


def trainer_class() -> type:
    """TRL's SFTTrainer, subclassed. `plain_loss` (on CPU) uses transformers' own loss instead of
    TRL's fused log-prob loss, which needs Triton."""
    from transformers import Trainer
    from trl import SFTTrainer  # Unsloth's patched trainer when the unsloth backend was loaded first

    plain_loss = not on_cuda()
    read_late = on_cuda() if READ_LOGS_LATE is None else READ_LOGS_LATE

    class SlothctlTrainer(SFTTrainer):
        _tokens: Any = 0  # real tokens trained on: a device tensor once counted from a mask
        _parameters: int | None = None  # the model's parameters, counted once
        _pending: LoggedStep | None = None  # a logged step not reported yet
        _reporting: tuple[float, int] | None = None  # (end time, tokens) of the step being reported
        _clock: Clock | None = None

        @property
        def tokens_seen(self) -> int:
            """Real tokens trained on in this process (reads the device: call it between steps)."""
            return int(self._tokens)

        @property
        def logged(self) -> tuple[float, int]:
            """(When the logged step ended, real tokens trained through it), for progress events."""
            return self._reporting if self._reporting is not None else (time.time(), self.tokens_seen)

        def _get_train_sampler(self, train_dataset=None):
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            if self.args.train_sampling_strategy == "group_by_length" and dataset is not None:
                return LengthGroupedBatches([len(ids) for ids in dataset["input_ids"]],
                                            self.args.per_device_train_batch_size, self.args.seed)
            return super()._get_train_sampler(train_dataset)

        def training_step(self, model, inputs, num_items_in_batch=None):
            if self._clock is None:
                self._clock = Clock()
                self._clock.start()
            self._tokens = self._tokens + count_tokens(inputs)
            return super().training_step(model, inputs, num_items_in_batch)

        def floating_point_ops(self, inputs) -> int:
            """transformers' count (6 x tokens x parameters without embeddings), with the parameters
            counted once instead of at every micro-step."""
            main_input = getattr(self.model, "main_input_name", "input_ids")
            if main_input not in inputs or not hasattr(self.model, "num_parameters"):
                return 0
            if self._parameters is None:
                self._parameters = self.model.num_parameters(exclude_embeddings=True)
            return 6 * inputs[main_input].numel() * self._parameters

        def _maybe_log_save_evaluate(self, tr_loss, grad_norm, model, trial, epoch, ignore_keys_for_eval,
                                     start_time, learning_rate=None):
            """Log as transformers does, a step late (module docstring); then evaluate and save."""
            if read_late:
                log_now = self.control.should_log and self.state.global_step > self._globalstep_last_logged
                self._report_pending(start_time)  # the step logged before this one (its on_log clears should_log)
                if log_now:
                    self._queue_log(tr_loss, grad_norm, learning_rate)
                    self.control.should_log = False
                    if self.control.should_evaluate or self.control.should_save or self.control.should_training_stop:
                        self._report_pending(start_time)  # before the evaluation and the checkpoint, and at the end
            super()._maybe_log_save_evaluate(tr_loss, grad_norm, model, trial, epoch, ignore_keys_for_eval,
                                             start_time, learning_rate=learning_rate)

        def _queue_log(self, tr_loss, grad_norm, learning_rate) -> None:
            """What transformers' logging does, without reading the numbers yet."""
            state = self.state
            self._pending = LoggedStep.queue(
                tr_loss, grad_norm, self._tokens, step=state.global_step, epoch=state.epoch,
                steps=state.global_step - self._globalstep_last_logged,
                learning_rate=learning_rate if learning_rate is not None else self._get_learning_rate())
            tr_loss -= tr_loss  # after the copy, in the GPU's order
            self._globalstep_last_logged = state.global_step
            self.store_flos()

        def _report_pending(self, start_time) -> None:
            """Log the queued step as of its own step and epoch (the callbacks read them from the state)."""
            pending, self._pending = self._pending, None
            if pending is None:
                return
            logs, loss_sum, ended, tokens = pending.read(self._clock or Clock())
            self._total_loss_scalar += loss_sum
            state, now = self.state, (self.state.global_step, self.state.epoch)
            state.global_step, state.epoch, self._reporting = pending.step, pending.epoch, (ended, tokens)
            try:
                self.log(logs, start_time)
            finally:
                (state.global_step, state.epoch), self._reporting = now, None

        if plain_loss:
            def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
                return Trainer.compute_loss(self, model, inputs, return_outputs=return_outputs,
                                            num_items_in_batch=num_items_in_batch)

    return SlothctlTrainer


def make_trainer(model: Any, tokenizer: Any, args: Any, train_rows: list[Encoded], eval_rows: list[Encoded],
                 callbacks: list, run: dict[str, Any]):
    """The trainer on these rows with our callbacks, made resumable (checkpoints.py); transformers'
    console progress is removed (our view reports progress)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from slothctl.training.checkpoints import make_resumable

    trainer = make_resumable(trainer_class(), run)(
        model=model, args=args, processing_class=tokenizer, train_dataset=to_dataset(train_rows),
        eval_dataset=to_dataset(eval_rows) if eval_rows else None, callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    return trainer
