"""The trainer both backends train with: TRL's SFTTrainer (Unsloth's patched one when unsloth was
imported first), subclassed to count the tokens it trains on, to batch rows of similar length
together, and to use the plain transformers loss on CPU. Its datasets are the tokenized rows."""

from __future__ import annotations

from typing import Any

from slothctl.backends.device import on_cuda
from slothctl.data.encode import Encoded
from slothctl.training.batching import LengthGroupedBatches


def to_dataset(examples: list[Encoded]):
    """The tokenized rows as a `datasets.Dataset` with input_ids and labels: TRL then skips its own
    tokenization and trains on exactly these tokens and this mask."""
    from datasets import Dataset

    return Dataset.from_dict({"input_ids": [e.input_ids for e in examples],
                              "labels": [e.labels for e in examples]})


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

    class SlothctlTrainer(SFTTrainer):
        tokens_seen = 0

        def _get_train_sampler(self, train_dataset=None):
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            if self.args.train_sampling_strategy == "group_by_length" and dataset is not None:
                return LengthGroupedBatches([len(ids) for ids in dataset["input_ids"]],
                                            self.args.per_device_train_batch_size, self.args.seed,
                                            ranks=self.args.world_size)
            return super()._get_train_sampler(train_dataset)

        def training_step(self, model, inputs, num_items_in_batch=None):
            self.tokens_seen += count_tokens(inputs)
            return super().training_step(model, inputs, num_items_in_batch)

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
