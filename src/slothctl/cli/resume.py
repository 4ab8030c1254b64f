"""`slothctl resume`: continue the project's run from its newest complete checkpoint."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from slothctl.cli.common import DEFAULT_CONFIG, ConfigOption, JsonOption, SetOption, load_config, start
from slothctl.cli.progress import TrainView
from slothctl.cli.remote import DetachOption, RemoteOption
from slothctl.cli.train import ForceResumeOption, MaxStepsOption, render_result


def resume(
    config: ConfigOption = DEFAULT_CONFIG,
    sets: SetOption = None,
    from_checkpoint: Annotated[Optional[str], typer.Option(
        "--from", metavar="CHECKPOINT", help="Resume from this checkpoint: a step (4), a name (checkpoint-4) or "
        "a folder. Default: the newest complete one.")] = None,
    max_steps: MaxStepsOption = None,
    force_resume: ForceResumeOption = False,
    remote: RemoteOption = None,
    detach: DetachOption = False,
    json_mode: JsonOption = False,
) -> None:
    """Continue an interrupted run from its newest complete checkpoint to the configured end."""
    out = start(json_mode)
    cfg = load_config(config, sets, [f"train.max_steps={max_steps}"] if max_steps else None)
    if remote or detach:
        from slothctl.cli.remote import run_remotely

        return run_remotely(out, cfg, remote, "resume", detach=detach, sets=sets, max_steps=max_steps,
                            force_resume=force_resume, from_checkpoint=from_checkpoint)
    from slothctl.training.run import train as run_training

    with TrainView(out) as view:
        result = run_training(cfg, view, force_resume=force_resume, from_checkpoint=from_checkpoint,
                              resume_only=True)
    render_result(out, result)
