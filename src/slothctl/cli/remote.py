"""`--remote modal` of train, resume, merge and export gguf: plan, launch, render (library: slothctl.remote)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import typer

from slothctl.cli.output import Output
from slothctl.events import Event

Provider = Literal["modal"]  # config.RemoteConfig.provider
RemoteOption = Annotated[Optional[Provider], typer.Option(
    "--remote", help="Run on a cloud GPU, as [remote] describes (needs pip install 'slothctl[modal]').")]
DetachOption = Annotated[bool, typer.Option(
    "--detach", help="With --remote: start the run and return at once; prints how to follow it.")]


def run_remotely(out: Output, cfg, provider: str | None, command: str, *, dry_run: bool = False,
                 detach: bool = False, local_only: dict[str, Any] | None = None, **job: Any) -> None:
    """Plan the remote `command` (train, resume, merge, export-gguf); print the plan (--dry-run) or run it.
    `local_only` are the command's options that name local folders, refused with --remote."""
    from slothctl.errors import UsageError
    from slothctl.remote import plan as remote_plan

    if provider is None:
        raise UsageError("--detach needs --remote modal")
    given = [flag for flag, value in (local_only or {}).items() if value is not None]
    if given:
        raise UsageError(f"{given[0]} names a local folder; with --remote the run folder on the volume is used",
                         f"drop {given[0]}, or run without --remote")
    plan = remote_plan.plan(cfg, remote_plan.make_job(cfg, command, **job))
    for note in plan.notes:
        out.event(Event("warning", {}, note))
    if dry_run:
        out.result({"dry_run": True, **plan.to_json()}, describe(plan))
        return
    from slothctl.remote import modal_app

    training = command in ("train", "resume")
    def ask() -> str:
        out.close()  # end the live view before asking
        return ask_stop_or_detach(out)

    outcome = modal_app.launch(plan, out.event, detach=detach, on_interrupt=ask)
    if isinstance(outcome, modal_app.Detached):
        out.result(outcome.to_json(), (
            f"Detached: the run goes on on Modal (app {outcome.app_id}, call {outcome.call_id}).\n"
            f"Follow it: modal app logs {outcome.app_id}\nStop it:   modal app stop {outcome.app_id}\n"
            f"Fetch it:  slothctl pull {outcome.run}  (what is on the volume so far, or all of it once done)"))
        return
    done, run = outcome.get("done") or {}, outcome["run"]
    out.event(Event("status", {"run": run},
                    f"The run is on the Modal Volume {plan.volumes[plan.runs_mount]}; copy it here with: "
                    f"slothctl pull {run}"))
    if training and "steps" in done:
        from slothctl.cli.train import render_result

        render_result(out, _train_result(done))
    else:
        out.result({"event": "done", **done, "run": run},
                   [("Done on Modal", "green"), f": {done.get('out') or run}"])


def remote_flags(**values: Any) -> list[str]:
    """A command's own options as arguments for the remote command: `quant=["q8_0"]` → --quant q8_0."""
    args: list[str] = []
    for name, value in values.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            args.append(flag)
        elif isinstance(value, list):
            for item in value:
                args += [flag, str(item)]
        elif value not in (None, False):
            args += [flag, str(value)]
    return args


def ask_stop_or_detach(out: Output) -> str:
    """Ctrl-C during a remote run: "stop" it or "detach" from it. Without a terminal to ask on, stop."""
    if out.json_mode or not out.err.is_terminal:
        return "stop"
    try:
        from slothctl.cli.output import styled

        answer = out.err.input(styled(["\nCtrl-C: ", ("s", "bold"), "top the remote run (it saves a checkpoint) or ",
                                       ("d", "bold"), "etach and leave it running? [s/D] "]))
    except (KeyboardInterrupt, EOFError):
        return "stop"
    return "stop" if answer.strip().lower().startswith("s") else "detach"


def describe(plan) -> str:
    """The plan in a few lines, for --dry-run."""
    from slothctl.remote.plan import CACHE_MOUNT
    from slothctl.remote.worker import attempt_commands

    job = plan.job
    command = attempt_commands(job, {"attempt": 1, "run": job["run"]})[-1]
    retries = f"{plan.retries} retries, each continuing from the newest checkpoint" if plan.retries else "no retries"
    total = sum(u.size for u in plan.uploads)
    lines = [
        f"Would run on Modal (nothing was contacted): slothctl {' '.join(command)}"
        + (" (--fresh: a new run folder on the volume)" if job["fresh"] else ""),
        f"  gpu       {plan.gpu}, timeout {plan.timeout_s / 3600:g} h per attempt, {retries}",
        f"  image     debian slim, Python {plan.python}; pip install (as {plan.requirements_from} declares): "
        f"{' '.join(plan.packages)}",
    ]
    if plan.no_deps_packages:
        lines.append(f"            pip install --no-deps: {' '.join(plan.no_deps_packages)}")
    if plan.export_packages:
        lines.append(f"            pip install (export gguf): {' '.join(plan.export_packages)}")
    lines.append("  volumes   " + ", ".join(
        f"{name} at {path}" + (" (SLOTHCTL_CACHE, HF_HOME)" if path == CACHE_MOUNT else " ([output] dir)")
        for path, name in plan.volumes.items()))
    lines.append(f"  secrets   {', '.join(plan.secrets) or 'none'}")
    lines.append(f"  uploads   slothctl from {plan.source}" + (f", templates from {plan.templates}" if plan.templates else ""))
    lines.append(f"            {len(plan.uploads)} files, {total / 1e6:,.2f} MB:")
    lines += [f"            {u.path} ({u.size:,} bytes)" for u in plan.uploads]
    return "\n".join(lines)


def _train_result(done: dict[str, Any]):
    """The remote run's `done` event as the TrainResult that train and resume render."""
    from slothctl.training.run import TrainResult

    return TrainResult(run_dir=Path(done["run_dir"]), adapter=Path(done["adapter"]), steps=done["steps"],
                       first_loss=done.get("first_loss"), final_loss=done.get("final_loss"),
                       eval_loss=done.get("eval_loss"), tokens_per_s=done.get("tokens_per_s") or 0.0,
                       seconds=done.get("seconds") or 0.0, resumed_from=done.get("resumed_from"),
                       stopped_early=bool(done.get("stopped_early")),
                       already_complete=bool(done.get("already_complete")))
