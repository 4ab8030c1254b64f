"""The private hooks of transformers and Unsloth that slothctl still uses, each because no public way
does the job, and the public methods whose signatures our overrides copy. Every private name slothctl
touches is in this file; tests/test_private.py checks each entry of HOOKS against the installed
libraries, so an upgrade that renames or reshapes one fails there, by name, instead of training
differently.

What used to be private and is not any more: checkpoints are written by the Trainer's own save and
completed from an `on_save` callback (checkpoints.py); TensorBoard gets its writer through
TensorBoardCallback's `tb_writer` (trackers.py); a run killed after its last checkpoint loads the
adapter through PEFT's `load_adapter` (run.fit).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from slothctl.training.logged_steps import Clock, LoggedStep


@dataclass(frozen=True)
class Hook:
    """`target` ("module:Qualified.name") takes at least `parameters`, in this order. `caller`, when set,
    is a function whose source must still mention the hook, i.e. transformers still calls it; the
    target's own source must still mention each of `mentions` (attributes we read or write)."""

    target: str
    parameters: tuple[str, ...]
    why: str
    private: bool = True
    caller: str = ""
    mentions: tuple[str, ...] = ()  # private attributes that the target's source must still use


HOOKS = (
    Hook("transformers.trainer:Trainer._get_train_sampler", ("self", "train_dataset"),
         "The sampler of the training data loader. Length-grouped batches in random order "
         "(batching.LengthGroupedBatches) need their own sampler; transformers' group_by_length keeps "
         "each window in descending length, and the only public alternative, overriding "
         "get_train_dataloader, would copy its data loader set-up (accelerate, seeding, workers).",
         caller="transformers.trainer:Trainer.get_train_dataloader"),
    Hook("transformers.trainer:Trainer._maybe_log_save_evaluate",
         ("self", "tr_loss", "grad_norm", "model", "trial", "epoch", "ignore_keys_for_eval", "start_time",
          "learning_rate"),
         "Where a logged step's loss and gradient norm are read with `.item()`, which makes the CPU wait "
         "for the GPU at every logged step. LateLogHook queues the numbers as transformers would log "
         "them and reports them a step later (trainer.py); there is no public way to change how the "
         "Trainer reads them. It keeps transformers' bookkeeping of the attributes below.",
         caller="transformers.trainer:Trainer._run_epoch",
         mentions=("_globalstep_last_logged", "_total_loss_scalar", "_get_learning_rate", "store_flos")),
    Hook("transformers.trainer:Trainer._get_learning_rate", ("self",),
         "The learning rate transformers logs, when the loop does not pass one (LateLogHook)."),
    Hook("transformers.trainer:Trainer._save_checkpoint", ("self", "model", "trial"),
         "A checkpoint of the step reached when the GPU ran out of memory in the middle of the next one "
         "(out_of_memory.py): the run then continues from it with half the micro-batch. The Trainer saves only "
         "from inside its loop; this is its own save (model, optimizer, scheduler, RNG, trainer state), and "
         "the `on_save` callbacks then mark it complete as any other checkpoint.",
         caller="transformers.trainer:Trainer._maybe_log_save_evaluate"),
    Hook("trl:SFTTrainer.compute_loss", ("self", "model", "inputs", "return_outputs", "num_items_in_batch"),
         "Overridden on CPU with transformers' plain loss: TRL's fused log-prob loss needs Triton.",
         private=False),
    Hook("transformers.trainer:Trainer.training_step", ("self", "model", "inputs", "num_items_in_batch"),
         "Overridden to count the tokens trained on (tokens/s).", private=False),
    Hook("transformers.trainer:Trainer.floating_point_ops", ("self", "inputs"),
         "Overridden to count the model's parameters once instead of at every micro-step.", private=False),
    Hook("trl:SFTTrainer.create_model_card", ("self",),
         "Overridden to do nothing: TRL writes a model card into the run folder at every checkpoint.",
         private=False),
)


class TrainSamplerHook:
    """Mixin for a Trainer subclass: `Trainer._get_train_sampler` asks `slothctl_train_sampler(dataset)`
    first and falls back to transformers' sampler when that returns None."""

    def slothctl_train_sampler(self, dataset: Any) -> Any:
        return None

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        sampler = self.slothctl_train_sampler(dataset)
        return sampler if sampler is not None else super()._get_train_sampler(train_dataset)


class LateLogHook:
    """Mixin for a Trainer subclass: `Trainer._maybe_log_save_evaluate` logs a step's numbers as
    transformers would, but one step late when `slothctl_read_late` is true (trainer.py says why),
    and at once before an evaluation, a checkpoint and the end, so that events keep their order.
    The subclass keeps the real tokens trained on in `slothctl_tokens` (a number or device tensor);
    `logged` is (when the step being reported ended, its tokens), for the progress callback."""

    slothctl_read_late = False
    slothctl_tokens: Any = 0
    _slothctl_pending: LoggedStep | None = None
    _slothctl_reporting: tuple[float, int] | None = None
    _slothctl_clock: Clock | None = None

    @property
    def logged(self) -> tuple[float, int]:
        if self._slothctl_reporting is not None:
            return self._slothctl_reporting
        return time.time(), int(self.slothctl_tokens)

    def slothctl_start_clock(self) -> None:
        """Anchor the GPU's step-end events to the wall clock (call at the first micro-step)."""
        if self._slothctl_clock is None:
            self._slothctl_clock = Clock()
            self._slothctl_clock.start()

    def _maybe_log_save_evaluate(self, tr_loss, grad_norm, model, trial, epoch, ignore_keys_for_eval,
                                 start_time, learning_rate=None):
        if self.slothctl_read_late:
            log_now = self.control.should_log and self.state.global_step > self._globalstep_last_logged
            self._slothctl_report(start_time)  # the step logged before this one (its on_log clears should_log)
            if log_now:
                self._slothctl_queue(tr_loss, grad_norm, learning_rate)
                self.control.should_log = False
                if self.control.should_evaluate or self.control.should_save or self.control.should_training_stop:
                    self._slothctl_report(start_time)  # before the evaluation and the checkpoint, and at the end
        super()._maybe_log_save_evaluate(tr_loss, grad_norm, model, trial, epoch, ignore_keys_for_eval,
                                         start_time, learning_rate=learning_rate)

    def _slothctl_queue(self, tr_loss, grad_norm, learning_rate) -> None:
        """What transformers' logging does, without reading the numbers yet."""
        state = self.state
        self._slothctl_pending = LoggedStep.queue(
            tr_loss, grad_norm, self.slothctl_tokens, step=state.global_step, epoch=state.epoch,
            steps=state.global_step - self._globalstep_last_logged,
            learning_rate=learning_rate if learning_rate is not None else self._get_learning_rate())
        tr_loss -= tr_loss  # after the copy, in the GPU's order
        self._globalstep_last_logged = state.global_step
        self.store_flos()

    def _slothctl_report(self, start_time) -> None:
        """Log the queued step as of its own step and epoch (the callbacks read them from the state)."""
        pending, self._slothctl_pending = self._slothctl_pending, None
        if pending is None:
            return
        logs, loss_sum, ended, tokens = pending.read(self._slothctl_clock or Clock())
        self._total_loss_scalar += loss_sum
        state, now = self.state, (self.state.global_step, self.state.epoch)
        state.global_step, state.epoch, self._slothctl_reporting = pending.step, pending.epoch, (ended, tokens)
        try:
            self.log(logs, start_time)
        finally:
            (state.global_step, state.epoch), self._slothctl_reporting = now, None


def save_checkpoint(trainer: Any) -> None:
    """checkpoint-<global step> written by the Trainer's own save, then its `on_save` callbacks (see HOOKS)."""
    trainer._save_checkpoint(trainer.model, trial=None)
    trainer.control = trainer.callback_handler.on_save(trainer.args, trainer.state, trainer.control)
