"""`slothctl resume`: continue the project's run from its newest complete checkpoint."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from slothctl.cli.common import DEFAULT_CONFIG, ConfigOption, JsonOption, SetOption, load_config, start
from slothctl.cli.train import ForceResumeOption, GpusOption, MaxStepsOption, flag_overrides, rank_arguments, \
    render_result, run


def resume(
    config: ConfigOption = DEFAULT_CONFIG,
    sets: SetOption = None,
    from_checkpoint: Annotated[Optional[str], typer.Option(
        "--from", metavar="CHECKPOINT", help="Resume from this checkpoint: a step (4), a name (checkpoint-4) or "
        "a folder. Default: the newest complete one.")] = None,
    max_steps: MaxStepsOption = None,
    force_resume: ForceResumeOption = False,
    gpus: GpusOption = None,
    json_mode: JsonOption = False,
) -> None:
    """Continue an interrupted run from its newest complete checkpoint to the configured end."""
    out = start(json_mode)
    cfg = load_config(config, sets, flag_overrides(max_steps, gpus))
    flags = ["--force-resume"] * force_resume + (["--from", from_checkpoint] if from_checkpoint else [])
    result = run(out, cfg, rank_arguments("resume", config, sets, max_steps, gpus, *flags),
                 force_resume=force_resume, from_checkpoint=from_checkpoint, resume_only=True)
    render_result(out, result)
