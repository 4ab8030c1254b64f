"""Private hooks of transformers, TRL and Unsloth that slothctl still uses, each because no public
way does the job. tests/test_private.py checks each against the installed libraries, so an upgrade
that changes one fails loudly instead of training differently."""

from __future__ import annotations

from typing import Any


def bind_unsloth_savers(model: Any) -> None:
    """`unsloth.save.patch_saving_functions`: PeftModel.from_pretrained leaves Unsloth's savers bound
    to the base model, which refuses to save while it holds LoRA layers; this binds them to the
    PeftModel, as Unsloth's own get_peft_model does. Unsloth has no public call for it."""
    from unsloth.save import patch_saving_functions

    patch_saving_functions(model)
