"""The trainer both backends train with: TRL's SFTTrainer (Unsloth's patched one when unsloth was
imported first), subclassed to count the tokens it trains on, to batch rows of similar length
together, and to use the plain transformers loss on CPU. Its datasets are the tokenized rows; it
saves checkpoints itself and checkpoints.completion marks them complete."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

from slothctl.backends.device import on_cuda
from slothctl.training import private
from slothctl.training.batching import LengthGroupedBatches


def dataset_lengths(dataset) -> "np.ndarray":
    """Tokens per row of the trainer's dataset, from its Arrow list offsets: no row is read (the
    dataset comes from Prepared.dataset, memory-mapped from the data cache)."""
    from slothctl.data.tables import row_lengths

    return row_lengths(dataset.with_format("arrow")[:])


def count_tokens(inputs: dict) -> int:
    """Real (non-pad) tokens in a batch: attention mask when padded, the flat length when padding-free."""
    if "attention_mask" in inputs:
        return int(inputs["attention_mask"].sum())
    if "position_ids" in inputs:
        return int(inputs["position_ids"].numel())
    return int(inputs["input_ids"].numel())


def trainer_class() -> type:
    """TRL's SFTTrainer, subclassed. `plain_loss` (on CPU) uses transformers' own loss instead of
    TRL's fused log-prob loss, which needs Triton."""
    from transformers import Trainer
    from trl import SFTTrainer  # Unsloth's patched trainer when the unsloth backend was loaded first

    plain_loss = not on_cuda()

    class SlothctlTrainer(private.TrainSamplerHook, SFTTrainer):
        tokens_seen = 0

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
            self.tokens_seen += count_tokens(inputs)
            return super().training_step(model, inputs, num_items_in_batch)

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
    return trainer
