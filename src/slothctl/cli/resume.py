"""`slothctl resume`: continue the project's run from its newest complete checkpoint."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from slothctl.cli.commands import examples
from slothctl.cli.common import DEFAULT_CONFIG, ConfigOption, JsonOption, QuietOption, SetOption, load_config, start
from slothctl.cli.remote import DetachOption, RemoteOption
from slothctl.cli.train import ForceResumeOption, GpusOption, MaxStepsOption, flag_overrides, rank_arguments, \
    render_result, run


@examples(("slothctl resume", "continue from the newest complete checkpoint to the step the run was started for"),
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
    gpus: GpusOption = None,
    json_mode: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Continue an interrupted run from its newest complete checkpoint to the end it was started for.

    The run goes on with the values it was started with (its length, --set values and flags, as its
    checkpoint recorded them); --max-steps and --set here change them. How this machine runs it
    (model.backend, train.gpus, micro_batch, max_vram_fraction, data.num_proc) comes from the project file.
    """
    from slothctl.training.plan import given_keys

    out = start(json_mode, quiet)
    flags = flag_overrides(max_steps, gpus)
    cfg = load_config(config, sets, flags)
    given = given_keys(list(sets or [])) | {key for key, value in flags.values() if value is not None}
    if remote or detach:
        from slothctl.cli.remote import run_remotely

        return run_remotely(out, cfg, remote, "resume", detach=detach, sets=sets, max_steps=max_steps,
                            force_resume=force_resume, from_checkpoint=from_checkpoint)
    options = ["--force-resume"] * force_resume + (["--from", from_checkpoint] if from_checkpoint else [])
    result = run(out, cfg, rank_arguments("resume", config, sets, max_steps, gpus, *options),
                 force_resume=force_resume, from_checkpoint=from_checkpoint, resume_only=True, given=given)
    render_result(out, result)
