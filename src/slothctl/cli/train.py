"""`slothctl train`: train the LoRA adapter the project file describes (or continue its run)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from slothctl.cli.common import DEFAULT_CONFIG, ConfigOption, JsonOption, SetOption, load_config, start
from slothctl.cli.output import Output
from slothctl.cli.progress import TrainView

MaxStepsOption = Annotated[Optional[int], typer.Option(
    "--max-steps", min=1, help="Stop after N steps (same as --set train.max_steps=N); more than before trains longer.")]
ForceResumeOption = Annotated[bool, typer.Option(
    "--force-resume", help="Continue from the checkpoint even though the config changed.")]
GpusOption = Annotated[Optional[str], typer.Option(
    "--gpus", metavar="N|auto", help="Train on N GPUs of this machine, data parallel through torchrun (same as "
    "--set train.gpus=N); `auto` = every visible GPU. Without CUDA, N CPU processes.")]


def flag_overrides(max_steps: int | None, gpus: str | None) -> list[str]:
    return ([f"train.max_steps={max_steps}"] if max_steps else []) + ([f"train.gpus={gpus}"] if gpus else [])


def rank_arguments(command: str, config, sets: list[str] | None, max_steps: int | None, gpus: str | None,
                   *flags: str) -> list[str]:
    """The same command for each rank that torchrun starts (launcher.py)."""
    args = [command, "--config", str(config)]
    for value in sets or []:
        args += ["--set", value]
    if max_steps:
        args += ["--max-steps", str(max_steps)]
    if gpus:
        args += ["--gpus", gpus]
    return args + list(flags)


def run(out: Output, cfg, rank_args: list[str], **options):
    """Train in this process, or on several ranks started from here (train.gpus > 1)."""
    from slothctl.training import launcher

    with TrainView(out) as view:
        count = launcher.ranks_to_start(cfg.train.gpus)
        if count > 1:
            from slothctl.training.plan import resume_command

            return launcher.train_on_ranks(count, rank_args, view, resume_command(cfg))
        from slothctl.training.run import train as run_training

        return run_training(cfg, view, **options)


def render_result(out: Output, result) -> None:
    """The last line(s) of train and resume: numbers, where the adapter is, what to do next."""
    if result.already_complete:
        human = f"[green]Already complete[/]: {result.steps} steps\nAdapter: {result.adapter}\nNext: slothctl chat"
    else:
        loss = "-" if result.final_loss is None else f"{result.first_loss:.4f} → {result.final_loss:.4f}"
        evals = "" if result.eval_loss is None else f", eval loss {result.eval_loss:.4f}"
        early = " (stopped early)" if result.stopped_early else ""
        human = (f"[green]Done[/]: {result.steps} steps{early}, loss {loss}{evals}, {result.tokens_per_s:,.0f} tok/s, "
                 f"{result.seconds:.0f}s\nAdapter: {result.adapter}\nNext: slothctl chat")
    out.result({"event": "done", **result.to_json()}, human)


def train(
    config: ConfigOption = DEFAULT_CONFIG,
    sets: SetOption = None,
    max_steps: MaxStepsOption = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="Start over in a new run folder (<name>-2, -3, ...) "
                                        "instead of resuming the existing one.")] = False,
    force_resume: ForceResumeOption = False,
    gpus: GpusOption = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the resolved config and stop.")] = False,
    json_mode: JsonOption = False,
) -> None:
    """Train a LoRA adapter: checkpoints, adapter/ and summary.json go to runs/<name>/.

    A run folder with checkpoints of the same config is resumed (see `slothctl resume`).
    """
    out = start(json_mode)
    cfg = load_config(config, sets, flag_overrides(max_steps, gpus))
    if dry_run:
        from slothctl.config import to_toml

        out.result({"config": cfg.to_dict(), "run_dir": str(cfg.run_dir)}, to_toml(cfg))
        return
    if fresh and force_resume:
        from slothctl.errors import UsageError

        raise UsageError("--fresh and --force-resume exclude each other", "choose one")
    flags = ["--fresh"] * fresh + ["--force-resume"] * force_resume
    result = run(out, cfg, rank_arguments("train", config, sets, max_steps, gpus, *flags),
                 fresh=fresh, force_resume=force_resume)
    render_result(out, result)
