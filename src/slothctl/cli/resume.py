"""`slothctl resume`: continue the project's run from its newest complete checkpoint."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from slothctl.cli.commands import examples
from slothctl.cli.common import DEFAULT_CONFIG, ConfigOption, JsonOption, QuietOption, SetOption, load_config, start
from slothctl.cli.remote import DetachOption, RemoteOption
from slothctl.cli.train import ForceResumeOption, MaxStepsOption, render_result


@examples(("slothctl resume", "continue from the newest complete checkpoint"),
          ("slothctl resume --from 4", "continue from checkpoint-4 (newer ones are set aside)"),
          ("slothctl resume --max-steps 400", "train on to step 400"))
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
    quiet: QuietOption = False,
) -> None:
    """Continue an interrupted run from its newest complete checkpoint to the configured end."""
    out = start(json_mode, quiet)
    cfg = load_config(config, sets, {"--max-steps": ("train.max_steps", max_steps)})
    if remote or detach:
        from slothctl.cli.remote import run_remotely

        return run_remotely(out, cfg, remote, "resume", detach=detach, sets=sets, max_steps=max_steps,
                            force_resume=force_resume, from_checkpoint=from_checkpoint)
    from slothctl.training.run import train as run_training

    result = run_training(cfg, out.event, force_resume=force_resume, from_checkpoint=from_checkpoint,
                          resume_only=True)
    render_result(out, result)
