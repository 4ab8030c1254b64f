"""`slothctl train`: train the LoRA adapter the project file describes (or continue its run)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from slothctl.cli.commands import examples
from slothctl.cli.common import DEFAULT_CONFIG, ConfigOption, Flags, JsonOption, QuietOption, SetOption, load_config, \
    start
from slothctl.cli.output import Output
from slothctl.cli.remote import DetachOption, RemoteOption

MaxStepsOption = Annotated[Optional[int], typer.Option(
    "--max-steps", min=1, help="Stop after N steps (same as --set train.max_steps=N); more than before trains longer.")]
ForceResumeOption = Annotated[bool, typer.Option(
    "--force-resume", help="Continue from the checkpoint even though the config changed.")]
GpusOption = Annotated[Optional[str], typer.Option(
    "--gpus", metavar="N|auto", help="Train on N GPUs of this machine, data parallel through torchrun (same as "
    "--set train.gpus=N); `auto` = every visible GPU. Without CUDA, N CPU processes.")]


def flag_overrides(max_steps: int | None, gpus: str | None) -> Flags:
    return {"--max-steps": ("train.max_steps", max_steps), "--gpus": ("train.gpus", gpus)}


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
    from slothctl.training import arguments, launcher

    count = launcher.ranks_to_start(arguments.gpus_requested(cfg.train))
    if count > 1:
        from slothctl.training.plan import resume_command

        return launcher.train_on_ranks(count, rank_args, out.event, resume_command(cfg))
    from slothctl.training.run import train as run_training

    return run_training(cfg, out.event, **options)


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


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def render_preview(found) -> str:
    """The dry run's estimate as TOML comments (stderr): `--dry-run > f.toml 2>&1` stays valid TOML."""
    memory = found.memory
    where = f"{found.gpu.name} ({_gib(found.gpu.memory_bytes)})" if found.gpu else "CPU (no GPU here; --gpu NAME plans for one)"
    lines = [f"Plan for {where}: {found.backend} backend, {found.optim}"]
    if memory is None or memory.estimate is None:
        reason = found.unavailable or (memory.unavailable if memory else None)
        if memory is not None:
            lines.append(memory.layout.describe())
        lines.append(f"no memory estimate: {reason}")
        return "\n".join(f"# {line}" for line in lines)
    est, layout = memory.estimate, memory.layout
    why = {"auto": "auto: the largest that fits", "fixed": "micro_batch", "configured": "batch_size as configured"}
    lines.append(f"{layout.describe()} ({why.get(layout.source, layout.source)})")
    lines.append(f"{'part':18} {'GiB':>8}")
    lines += [f"  {part:16} {size / 2**30:8.2f}" for part, size in est.breakdown.items() if size]
    budget = f"; budget {memory.max_vram_fraction:.0%} = {_gib(est.budget_bytes)}" if est.budget_bytes else ""
    verdict = {True: ": fits", False: ": will not fit", None: ""}[est.fits]
    lines.append(f"  {'peak':16} {est.peak_vram_bytes / 2**30:8.2f}  ({est.peak_at}){budget}{verdict}")
    total = f", {_clock(est.total_seconds)} to the end" if est.total_seconds is not None else ""
    lines.append(f"{est.tokens_per_step:,.0f} tokens per step ({est.real_tokens_per_step:,.0f} real), {found.steps} steps "
                 f"of {found.train_rows} rows, {est.step_seconds:.2f} s per step{total} (estimated, "
                 f"{est.tokens_per_second:,.0f} tokens/s)")
    if est.fits is False:
        from slothctl.training.out_of_memory import set_options, user_settings

        lines.append("changes that fit:" if memory.fixes else "no change found that fits")
        lines += [f"  {change.summary}: {set_options(user_settings(change.settings))}" for change in memory.fixes]
    lines += [f"note: {note}" for note in est.notes]
    return "\n".join(f"# {line}" for line in lines)


@examples(("slothctl train", "train the project in this folder (or continue its run)"),
          ("slothctl train --max-steps 20 --set lora.r=8", "a short run with a smaller adapter"),
          ("slothctl train --dry-run --gpu T4 > resolved.toml",
           "the memory and time estimate for a T4 (stderr), the resolved config as a TOML file"))
def train(
    config: ConfigOption = DEFAULT_CONFIG,
    sets: SetOption = None,
    max_steps: MaxStepsOption = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="Start over in a new run folder (<name>-2, -3, ...) "
                                        "instead of resuming the existing one.")] = False,
    force_resume: ForceResumeOption = False,
    gpus: GpusOption = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the resolved config as TOML on stdout and the "
                                          "memory and time estimate on stderr (with --remote: what would run "
                                          "where), then stop.")] = False,
    gpu: Annotated[Optional[str], typer.Option("--gpu", metavar="NAME", help="With --dry-run: plan for this GPU "
                                               "(H200, H100, A100-80GB, L40S, RTX 4090, T4, ...) instead of the "
                                               "one present. (--gpus N trains on N GPUs.)")] = None,
    remote: RemoteOption = None,
    detach: DetachOption = False,
    json_mode: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Train a LoRA adapter: checkpoints, adapter/ and summary.json go to runs/<name>/.

    A run folder with checkpoints of the same config is resumed (see `slothctl resume`).
    """
    out = start(json_mode, quiet)
    cfg = load_config(config, sets, flag_overrides(max_steps, gpus))
    if gpu and not dry_run:
        from slothctl.errors import UsageError

        raise UsageError("--gpu NAME plans a dry run for another GPU", "add --dry-run, or use --gpus N to train on N GPUs")
    if dry_run and not (remote or detach):
        from slothctl.config import to_toml
        from slothctl.events import ignore
        from slothctl.training.preview import preview

        found = preview(cfg, gpu, ignore)  # stderr holds only the TOML comments below
        if not out.json_mode:
            out.note(render_preview(found))
        out.text({"config": cfg.to_dict(), "run_dir": str(cfg.run_dir), **found.to_dict()}, to_toml(cfg))
        return
    if fresh and force_resume:
        from slothctl.errors import UsageError

        raise UsageError("--fresh and --force-resume exclude each other", "choose one")
    if remote or detach:
        from slothctl.cli.remote import run_remotely

        return run_remotely(out, cfg, remote, "train", dry_run=dry_run, detach=detach, sets=sets, max_steps=max_steps,
                            fresh=fresh, force_resume=force_resume)
    flags = ["--fresh"] * fresh + ["--force-resume"] * force_resume
    result = run(out, cfg, rank_arguments("train", config, sets, max_steps, gpus, *flags),
                 fresh=fresh, force_resume=force_resume)
    render_result(out, result)
