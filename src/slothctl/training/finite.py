"""A run stops at the first non-finite loss (NaN or infinity) instead of training on: once the loss is
NaN the gradients are, and after one optimizer step so is every LoRA weight, so a checkpoint or an
adapter written after it is garbage that still loads. The check costs one read of the device per
logged step (the loss is read then anyway) and one per checkpoint (are the trainable weights finite?),
never one per micro-step. The error (exit 1) names the step and the last good checkpoint, which is
kept; nothing is saved after the bad step.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from slothctl.errors import RuntimeFailure


def failure(what: str, step: int, checkpoint: Path | None) -> RuntimeFailure:
    kept = f"the last good checkpoint is {checkpoint}" if checkpoint else "no checkpoint was written"
    return RuntimeFailure(f"{what} at step {step}: training stopped, nothing saved after it; {kept}",
                          "lower train.learning_rate (or look at the rows of that step), then continue with: "
                          "slothctl resume --force-resume" if checkpoint else
                          "lower train.learning_rate (or look at the rows of that step) and train again")


def weights_finite(model: Any) -> bool:
    """Whether every trainable weight is finite (one device read for all of them)."""
    import torch

    flags = [torch.isfinite(p).all() for p in model.parameters() if p.requires_grad]
    return bool(torch.stack(flags).all()) if flags else True


def check_parameters(model: Any, step: int, checkpoint: Path | None) -> None:
    """Raise before anything is saved from weights that are not finite."""
    if not weights_finite(model):
        raise failure("the LoRA weights became NaN or infinite", step, checkpoint)


def _latest(args) -> Path | None:
    from slothctl.runs import RunPaths

    return RunPaths(Path(args.output_dir)).latest_checkpoint()


def guard():
    """A TrainerCallback that stops at a non-finite logged loss or gradient norm (before the progress
    callback writes it), and before a checkpoint of weights that are not finite. It goes before the
    checkpoint completion and progress callbacks (run.setup_trainer)."""
    from transformers import TrainerCallback

    class Finite(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            for key in ("loss", "grad_norm"):
                value = (logs or {}).get(key)
                if value is not None and not math.isfinite(float(value)):
                    what = "the loss" if key == "loss" else "the gradient norm"
                    raise failure(f"{what} became {float(value)}", state.global_step, _latest(args))

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if control.should_save and model is not None:
                check_parameters(model, state.global_step, _latest(args))

    return Finite()
