"""`slothctl init DIR`: write a commented project file (and, with --example, a small dataset)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from slothctl.cli.commands import examples
from slothctl.cli.common import JsonOption, QuietOption, SetOption, start

Template = Literal["chat", "alpaca", "qlora-8b"]  # the presets of slothctl.project


@examples(("slothctl init demo --example", "a project with a small bundled dataset, ready to train"),
          ("slothctl init . --template qlora-8b --dataset data/chat.jsonl", "QLoRA on an 8B model, your data"),
          ("slothctl init . --force --set lora.r=32", "rewrite slothctl.toml here with one value changed"))
def init(
    directory: Annotated[Path, typer.Argument(help="Project folder (created if missing).")] = Path("."),
    template: Annotated[Template, typer.Option("--template", "-t", help="Starting point.")] = "chat",
    model: Annotated[Optional[str], typer.Option(help="Model: embedded:smollm2-135m, a folder or a hub id.")] = None,
    dataset: Annotated[Optional[str], typer.Option(help="Training data: a file, a folder or a hub dataset id.")] = None,
    example: Annotated[bool, typer.Option("--example", help="Also write a small bundled dataset and use it.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing slothctl.toml.")] = False,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="File to write "
                                                   "(default: DIR/slothctl.toml).")] = None,
    sets: SetOption = None,
    json_mode: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Create a project: DIR/slothctl.toml from a template, every key documented."""
    out = start(json_mode, quiet)
    from slothctl.project import init_project

    written = init_project(directory, preset=template, model=model, dataset=dataset, example=example,
                           force=force, target=config, overrides=sets or [])
    parts: list = [("Created", "green"), f" {written['config']} (template: {written['template']})\n"]
    if written["data"]:
        parts += [("Created", "green"), f" {written['data']} (example dataset)\n"]
    folder = Path(written["config"]).parent
    cd = "" if folder.resolve() == Path.cwd().resolve() else f"cd {folder} && "
    parts.append(f"Next: {cd}slothctl train")
    out.result(written, parts)
