"""Experiment trackers ([train] report_to): checked before the model loads, set up for resuming.

TensorBoard event files go to runs/<name>/tensorboard/. A resumed run opens its writer with
`purge_step`, so TensorBoard hides what a killed run logged after the checkpoint it resumes from
(the same rule as metrics.jsonl). wandb runs keep one run id per run folder, so a resume continues
the same wandb run; without credentials it logs offline into runs/<name>/wandb/ (`wandb sync` later).
"""

from __future__ import annotations

import importlib.util
import os
import uuid
from pathlib import Path

from slothctl.errors import UsageError
from slothctl.events import Emit, status
from slothctl.runs import RunPaths, write_text_atomic

PACKAGES = {"tensorboard": ("tensorboard", "pip install 'slothctl[tensorboard]'"),
            "wandb": ("wandb", "pip install 'slothctl[wandb]'")}


def check_available(choice: str) -> None:
    """Exit 2 before anything heavy when the chosen tracker ([train] report_to) is not installed."""
    if choice not in PACKAGES:
        return
    package, install = PACKAGES[choice]
    if importlib.util.find_spec(package) is None:
        raise UsageError(f'[train] report_to = "{choice}" needs the {package} package, which is not installed',
                         f'{install}, or set report_to = "none"')


def _wandb_logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text(encoding="utf-8")
    except OSError:
        return False


def prepare_wandb(paths: RunPaths, emit: Emit) -> None:
    """Environment for transformers' WandbCallback: one run id per run folder, offline unless logged in."""
    id_file = paths.root / "wandb-run-id"
    if not id_file.is_file():
        write_text_atomic(id_file, uuid.uuid4().hex[:12] + "\n")
    os.environ["WANDB_RUN_ID"] = id_file.read_text(encoding="utf-8").strip()
    os.environ["WANDB_RESUME"] = "allow"
    os.environ.setdefault("WANDB_DIR", str(paths.root))
    os.environ.setdefault("WANDB_PROJECT", "slothctl")
    if os.environ.get("WANDB_MODE") is None and not _wandb_logged_in():
        os.environ["WANDB_MODE"] = "offline"
        status(emit, f"wandb: not logged in, logging offline to {paths.root / 'wandb'} (upload with `wandb sync`)")
    elif os.environ.get("WANDB_MODE") in ("offline", "dryrun"):
        status(emit, f"wandb: offline mode, logging to {paths.root / 'wandb'}")


def callbacks(choice: str, paths: RunPaths, resume_step: int | None) -> list:
    """Trainer callbacks for the tracker (TensorBoard: ours, writing to runs/<name>/tensorboard; wandb:
    transformers' own, through the trainer's report_to)."""
    if choice != "tensorboard":
        return []
    from transformers.integrations import TensorBoardCallback

    class RunTensorBoard(TensorBoardCallback):
        """transformers' callback with our writer (its `tb_writer` argument), opened when training starts."""

        def on_train_begin(self, args, state, control, **kwargs):
            if self.tb_writer is None:
                from torch.utils.tensorboard import SummaryWriter

                purge = resume_step + 1 if resume_step else None  # hide steps a killed run logged past its checkpoint
                self.tb_writer = SummaryWriter(log_dir=str(paths.tensorboard), purge_step=purge)
            super().on_train_begin(args, state, control, **kwargs)

    return [RunTensorBoard()]
