"""Options every command shares (--config, --set, --json) and the one way to load the project."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from slothctl.cli import output
from slothctl.config import DEFAULT_CONFIG_NAME

ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="Project file.", show_default=True)]
SetOption = Annotated[Optional[list[str]], typer.Option(
    "--set", metavar="SECTION.KEY=VALUE", help="Override a config value (repeatable), e.g. --set train.max_steps=10.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout (JSON / JSON lines).")]
DEFAULT_CONFIG = Path(DEFAULT_CONFIG_NAME)


def start(json_mode: bool) -> output.Output:
    """Set up this command's output (and with it, where errors go). In a rank of a run on several
    (torchrun), only rank 0 prints; every rank's error line is recorded for slothctl's launcher."""
    from slothctl.training import ranks

    if not ranks.distributed():
        output.current = output.Output(json_mode)
        return output.current
    ranks.die_with_parent()
    output.current = output.Output(json_mode, silent=not ranks.is_main(), on_error=ranks.record_failure)
    return output.current


def load_config(path: Path, sets: list[str] | None, extra: list[str] | None = None):
    """The project config with --set overrides and a command's own flags (highest precedence) applied."""
    from slothctl import config

    return config.load(path, list(sets or []) + list(extra or []))


def load_config_or_defaults(path: Path, sets: list[str] | None, extra: list[str] | None = None,
                            standalone: bool = False):
    """Like load_config; with `standalone` (the command was given everything it needs, e.g. a file to
    use) and no project file at the default place, the built-in defaults instead."""
    if standalone and path == DEFAULT_CONFIG and not path.exists():
        from slothctl import config

        raw = config.apply_overrides({"model": {"name": config.EMBEDDED_MODEL}, "data": {"source": "-"}},
                                     list(sets or []) + list(extra or []))
        return config.build(raw, "(built-in defaults)")
    return load_config(path, sets, extra)
