"""`slothctl train`: train the LoRA adapter the project file describes (or continue its run)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from slothctl.cli.commands import examples
from slothctl.cli.common import DEFAULT_CONFIG, ConfigOption, JsonOption, QuietOption, SetOption, load_config, start
from slothctl.cli.output import Output
from slothctl.cli.remote import DetachOption, RemoteOption

MaxStepsOption = Annotated[Optional[int], typer.Option(
    "--max-steps", min=1, help="Stop after N steps (same as --set train.max_steps=N); more than before trains longer.")]
ForceResumeOption = Annotated[bool, typer.Option(
    "--force-resume", help="Continue from the checkpoint even though the config changed.")]


def render_result(out: Output, result) -> None:
    """The last line(s) of train and resume: numbers, where the adapter is, what to do next."""
    if result.already_complete:
        human = [("Already complete", "green"), f": {result.steps} steps"]
    else:
        loss = "-" if result.final_loss is None else f"{result.first_loss:.4f} → {result.final_loss:.4f}"
        evals = "" if result.eval_loss is None else f", eval loss {result.eval_loss:.4f}"
        early = " (stopped early)" if result.stopped_early else ""
        human = [("Done", "green"), f": {result.steps} steps{early}, loss {loss}{evals}, "
                                    f"{result.tokens_per_s:,.0f} tok/s, {result.seconds:.0f}s"]
    out.result({"event": "done", **result.to_json()}, human + [f"\nAdapter: {result.adapter}\nNext: slothctl chat"])


@examples(("slothctl train", "train the project in this folder (or continue its run)"),
          ("slothctl train --max-steps 20 --set lora.r=8", "a short run with a smaller adapter"),
          ("slothctl train --dry-run > resolved.toml", "the resolved config, as a TOML file"))
def train(
    config: ConfigOption = DEFAULT_CONFIG,
    sets: SetOption = None,
    max_steps: MaxStepsOption = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="Start over in a new run folder (<name>-2, -3, ...) "
                                        "instead of resuming the existing one.")] = False,
    force_resume: ForceResumeOption = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the resolved config (with --remote: what would "
                                          "run where) and stop.")] = False,
    remote: RemoteOption = None,
    detach: DetachOption = False,
    json_mode: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Train a LoRA adapter: checkpoints, adapter/ and summary.json go to runs/<name>/.

    A run folder with checkpoints of the same config is resumed (see `slothctl resume`).
    """
    out = start(json_mode, quiet)
    cfg = load_config(config, sets, {"--max-steps": ("train.max_steps", max_steps)})
    if dry_run and not (remote or detach):
        from slothctl.config import to_toml

        out.text({"config": cfg.to_dict(), "run_dir": str(cfg.run_dir)}, to_toml(cfg))
        return
    if fresh and force_resume:
        from slothctl.errors import UsageError

        raise UsageError("--fresh and --force-resume exclude each other", "choose one")
    if remote or detach:
        from slothctl.cli.remote import run_remotely

        return run_remotely(out, cfg, remote, "train", dry_run=dry_run, detach=detach, sets=sets, max_steps=max_steps,
                            fresh=fresh, force_resume=force_resume)
    from slothctl.training.run import train as run_training

    result = run_training(cfg, out.event, fresh=fresh, force_resume=force_resume)
    render_result(out, result)
