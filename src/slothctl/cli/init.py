"""`slothctl init DIR`: write a commented project file (and, with --example, a small dataset)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from slothctl.cli.common import JsonOption, SetOption, start

Template = Literal["chat", "alpaca", "qlora-8b"]  # the presets of slothctl.project


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
) -> None:
    """Create a project: DIR/slothctl.toml from a template, every key documented."""
    out = start(json_mode)
    from slothctl.project import init_project

    written = init_project(directory, preset=template, model=model, dataset=dataset, example=example,
                           force=force, target=config, overrides=sets or [])
    lines = [f"[green]Created[/] {written['config']} (template: {written['template']})"]
    if written["data"]:
        lines.append(f"[green]Created[/] {written['data']} (example dataset)")
    folder = Path(written["config"]).parent
    cd = "" if folder.resolve() == Path.cwd().resolve() else f"cd {folder} && "
    lines.append(f"Next: {cd}slothctl train")
    out.result(written, "\n".join(lines))
