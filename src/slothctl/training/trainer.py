"""The trainer both backends train with: TRL's SFTTrainer (Unsloth's patched one when unsloth was
imported first), subclassed to count the tokens it trains on, to batch rows of similar length
together, to use the plain transformers loss on CPU, and to keep the GPU busy between steps. Its
datasets are the tokenized rows; it saves checkpoints itself and checkpoints.completion marks them
complete.

What a step does beyond forward, backward and the optimizer, and why it is cheap here
(bench/profile_steps.py shows it per step; README "Speed"):

- Numbers are read from the GPU without waiting for it (on CUDA). transformers reads each logged
  step's loss and gradient norm with `.item()` as soon as the step is queued: the CPU then waits for
  the GPU to finish, and the GPU waits while the CPU reports, fetches and collates the next batch
  and starts its forward. Here a logged step's numbers (loss, gradient norm, tokens so far, and a
  CUDA event for the time it ended) are copied to the host asynchronously and reported at the end
  of the next step, by then long arrived; before an evaluation, a checkpoint and at the end they
  are reported at once, so the event stream, metrics.jsonl and the trainer state keep their order.
  The values are the ones transformers would log, to the bit (private.LateLogHook, logged_steps.py).
- Tokens are counted on the device (a sum of the attention mask), not with `int(...)` per micro-step.
- The FLOP count transformers keeps (`floating_point_ops`) walks every module of the model to count
  parameters at every micro-step; the count is taken once.
- A padded batch with nothing to pad (rows of one length) goes to the model without its all-ones
  attention mask (`MasklessWhenFull`): with a mask, attention takes the masked SDPA kernel (Unsloth
  expands the mask to a 4-D one); without one, the plain causal kernel a hand-written loop gets.
  The collated mask is still on the CPU, so looking at it costs no GPU sync.
- `logging_nan_inf_filter` is off (arguments.py): it compares every micro-step's loss with NaN on
  the host, a sync per micro-step, to hide a NaN loss that we would rather report.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

from slothctl.backends.device import on_cuda
from slothctl.training import private
from slothctl.training.batching import LengthGroupedBatches

# Read logged numbers one step late (above): None = on CUDA, where waiting costs; on CPU the numbers
# are ready when the step ends. tests/test_train_loop.py forces it on CPU to compare with transformers' logging.
READ_LOGS_LATE: bool | None = None


def dataset_lengths(dataset) -> "np.ndarray":
    """Tokens per row of the trainer's dataset, from its Arrow list offsets: no row is read (the
    dataset comes from Prepared.dataset, memory-mapped from the data cache)."""
    from slothctl.data.tables import row_lengths

    return row_lengths(dataset.with_format("arrow")[:])


def count_tokens(inputs: dict):
    """Real (non-pad) tokens in a batch: attention mask when padded (a tensor on the batch's device:
    reading it would wait for the GPU), the flat length when padding-free."""
    if "attention_mask" in inputs:
        return inputs["attention_mask"].sum()
    if "position_ids" in inputs:
        return int(inputs["position_ids"].numel())
    return int(inputs["input_ids"].numel())


class MasklessWhenFull:
    """The trainer's collator, minus the attention mask of a batch that has no padding: an all-ones
    mask changes nothing in causal attention but picks a slower kernel (module docstring). Tokens are
    then counted from the batch's shape (count_tokens)."""

    def __init__(self, collate) -> None:
        self.collate = collate

    def __call__(self, features):
        batch = self.collate(features)
        mask = batch.get("attention_mask")
        if mask is not None and mask.device.type == "cpu" and bool(mask.all()):
            del batch["attention_mask"]
        return batch

    def __getattr__(self, name: str):
        """The collator's own settings (e.g. `padding_free`), for code that reads them off the trainer's."""
        return getattr(self.collate, name)


def trainer_class() -> type:
    """TRL's SFTTrainer, subclassed. `plain_loss` (on CPU) uses transformers' own loss instead of
    TRL's fused log-prob loss, which needs Triton."""
    from transformers import Trainer
    from trl import SFTTrainer  # Unsloth's patched trainer when the unsloth backend was loaded first

    plain_loss = not on_cuda()

    class SlothctlTrainer(private.LateLogHook, private.TrainSamplerHook, SFTTrainer):
        slothctl_read_late = on_cuda() if READ_LOGS_LATE is None else READ_LOGS_LATE
        _parameters: int | None = None  # the model's parameters, counted once

        @property
        def tokens_seen(self) -> int:
            """Real tokens trained on in this process (reads the device: call it between steps)."""
            return int(self.slothctl_tokens)

        @tokens_seen.setter
        def tokens_seen(self, tokens: int) -> None:
            """Where a new trainer of the same run starts counting (after an out-of-memory halving)."""
            self.slothctl_tokens = tokens

        def slothctl_train_sampler(self, dataset):
            """Length-grouped batches in random order for `train_sampling_strategy = "group_by_length"`."""
            if self.args.train_sampling_strategy == "group_by_length" and dataset is not None:
                return LengthGroupedBatches(dataset_lengths(dataset),
                                            self.args.per_device_train_batch_size, self.args.seed,
                                            ranks=self.args.world_size)
            return None

        def create_model_card(self, *args, **kwargs):
            """TRL writes a model card into the run folder at every checkpoint; `slothctl push` writes its own."""

        def training_step(self, model, inputs, num_items_in_batch=None):
            self.slothctl_start_clock()
            self.slothctl_tokens = self.slothctl_tokens + count_tokens(inputs)
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

        if plain_loss:
            def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
                return Trainer.compute_loss(self, model, inputs, return_outputs=return_outputs,
                                            num_items_in_batch=num_items_in_batch)

    return SlothctlTrainer


def make_trainer(model: Any, tokenizer: Any, args: Any, train_dataset: Any, eval_dataset: Any, callbacks: list):
    """The trainer on these datasets (Arrow-backed, with input_ids and labels: TRL then trains on
    exactly these tokens and this mask) with our callbacks; transformers' console progress is
    removed (our view reports progress)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer = trainer_class()(
        model=model, args=args, processing_class=tokenizer, train_dataset=train_dataset,
        eval_dataset=eval_dataset, callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.data_collator = MasklessWhenFull(trainer.data_collator)
    return trainer
