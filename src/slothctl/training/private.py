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

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Hook:
    """`target` ("module:Qualified.name") takes at least `parameters`, in this order. `caller`, when set,
    is a function whose source must still mention the hook, i.e. transformers still calls it."""

    target: str
    parameters: tuple[str, ...]
    why: str
    private: bool = True
    caller: str = ""


HOOKS = (
    Hook("transformers.trainer:Trainer._get_train_sampler", ("self", "train_dataset"),
         "The sampler of the training data loader. Length-grouped batches in random order "
         "(batching.LengthGroupedBatches) need their own sampler; transformers' group_by_length keeps "
         "each window in descending length, and the only public alternative, overriding "
         "get_train_dataloader, would copy its data loader set-up (accelerate, seeding, workers).",
         caller="transformers.trainer:Trainer.get_train_dataloader"),
    Hook("unsloth.save:patch_saving_functions", ("model",),
         "PeftModel.from_pretrained leaves Unsloth's savers bound to the base model, which refuses to save "
         "while it holds LoRA layers; this binds them to the PeftModel, as Unsloth's get_peft_model does. "
         "Unsloth has no public call for it (4-bit merge, backends/unsloth.py)."),
    Hook("trl:SFTTrainer.compute_loss", ("self", "model", "inputs", "return_outputs", "num_items_in_batch"),
         "Overridden on CPU with transformers' plain loss: TRL's fused log-prob loss needs Triton.",
         private=False),
    Hook("transformers.trainer:Trainer.training_step", ("self", "model", "inputs", "num_items_in_batch"),
         "Overridden to count the tokens trained on (tokens/s).", private=False),
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


def bind_unsloth_savers(model: Any) -> None:
    """Unsloth's savers bound to a PeftModel loaded with PeftModel.from_pretrained (see HOOKS)."""
    from unsloth.save import patch_saving_functions

    patch_saving_functions(model)
