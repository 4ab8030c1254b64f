"""`slothctl push`: publish the run's adapter, merged model or GGUF files to the Hugging Face Hub."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from slothctl.cli.commands import examples
from slothctl.cli.common import (DEFAULT_CONFIG, ConfigOption, JsonOption, QuietOption, SetOption,
                                 load_config_or_defaults, start)

What = Literal["adapter", "merged", "gguf"]  # hub.WHATS


@examples(("slothctl push me/sloth-lora", "the run's adapter, with a model card, to a private repository"),
          ("slothctl push me/sloth-gguf --what gguf --public", "the GGUF files, public"),
          ("slothctl push me/sloth-lora --dry-run", "list what would be sent, send nothing"))
def push(
    repo_id: Annotated[Optional[str], typer.Argument(
        metavar="REPO_ID", help="owner/name on the Hub (default: [hub] repo_id).", show_default=False)] = None,
    what: Annotated[Optional[What], typer.Option(
        "--what", help="What to push (default: adapter; with --path, detected from the folder).")] = None,
    path: Annotated[Optional[Path], typer.Option("--path", help="Push this folder instead of the run's.")] = None,
    public: Annotated[Optional[bool], typer.Option(
        "--public/--private", help="Visibility of a new repository (default: [hub] private, which is true).",
        show_default=False)] = None,
    branch: Annotated[Optional[str], typer.Option(
        "--branch", "--revision", help="Commit to this branch (created if needed).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the files and sizes; send nothing.")] = False,
    config: ConfigOption = DEFAULT_CONFIG,
    sets: SetOption = None,
    json_mode: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Upload the run's adapter (or merged model, or GGUF files) with a model card, private by default."""
    out = start(json_mode, quiet)
    cfg = load_config_or_defaults(config, sets, standalone=path is not None)
    from slothctl import hub

    plan = hub.plan(cfg, repo_id, what=what, path=path, private=None if public is None else not public, branch=branch,
                    lookup=not dry_run, emit=out.event)
    if dry_run:
        listing = "\n".join(f"  {item['path']:<40} {hub.human_size(item['size']):>10}" for item in plan.listing())
        out.result({"dry_run": True, **plan.to_json(), "card": plan.files["README.md"].decode()},
                   f"Would push {plan.what} from {plan.folder} to {'private' if plan.private else 'public'} "
                   f"repository {plan.repo_id} (branch {plan.branch or 'main'}):\n{listing}\n"
                   f"  {'total':<40} {hub.human_size(plan.total_bytes):>10}")
        return
    result = hub.push(plan, emit=out.event, progress_bars=out.mode == "human" and out.err.is_terminal)
    out.result(result, [("Pushed", "green"), f" {len(result['files'])} files ({hub.human_size(result['total_bytes'])}) "
                                             f"to {result['url']} (branch {result['branch']}, "
                                             f"{'private' if result['private'] else 'public'})"])
