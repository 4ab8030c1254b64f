"""Options every command shares (--config, --set, --json, --quiet) and the one way to load the project."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from slothctl.cli import output
from slothctl.config import DEFAULT_CONFIG_NAME

ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="Project file.", show_default=True)]
SetOption = Annotated[Optional[list[str]], typer.Option(
    "--set", metavar="SECTION.KEY=VALUE", help="Override a config value (repeatable), e.g. --set train.max_steps=10.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout (JSON / JSON lines).")]
QuietOption = Annotated[bool, typer.Option("--quiet", help="No progress and no summary; warnings and errors only.")]
DEFAULT_CONFIG = Path(DEFAULT_CONFIG_NAME)
Flags = dict[str, tuple[str, Any]]  # a command's flags that set config keys: {"--temperature": ("chat.temperature", 0.7)}


def start(json_mode: bool, quiet: bool = False, aside_events: bool = False) -> output.Output:
    """Set up this command's output (and with it, where errors go); `aside_events`: see output.Output.
    In a rank of a run on several GPUs (torchrun), only rank 0 prints; every rank's error line is
    recorded for slothctl's launcher."""
    from slothctl.training import ranks

    if json_mode and quiet:
        from slothctl.errors import UsageError

        raise UsageError("--json and --quiet exclude each other", "choose one")
    mode = "json" if json_mode else "quiet" if quiet else "human"
    if not ranks.distributed():
        output.current = output.Output(mode, aside_events=aside_events).activate()
        return output.current
    ranks.die_with_parent()
    kind = output.Output if ranks.is_main() else output.SilentOutput
    output.current = kind(mode, aside_events=aside_events, on_error=ranks.record_failure).activate()
    return output.current


def _overrides(sets: list[str] | None, flags: Flags | None) -> tuple[list[str], dict[str, str]]:
    """--set values, then the flags given (highest precedence); and which override came from which flag."""
    given = {flag: f"{key}={value}" for flag, (key, value) in (flags or {}).items() if value is not None}
    return list(sets or []) + list(given.values()), {text: flag for flag, text in given.items()}


def _flag_error(exc, by_override: dict[str, str]):
    """A config error caused by a command's own flag, reported as that flag (not as a --set)."""
    from slothctl.errors import UsageError

    for text, flag in by_override.items():
        if exc.where == f"--set {text}":
            return UsageError(f"{flag} {text.split('=', 1)[1]}: {exc.problem}", exc.hint)
    return exc


def load_config(path: Path, sets: list[str] | None, flags: Flags | None = None):
    """The project config with --set overrides and a command's own flags (highest precedence) applied."""
    from slothctl import config
    from slothctl.errors import ConfigError

    overrides, by_override = _overrides(sets, flags)
    try:
        return config.load(path, overrides)
    except ConfigError as exc:
        raise _flag_error(exc, by_override) from None


def load_config_or_defaults(path: Path, sets: list[str] | None, flags: Flags | None = None,
                            standalone: bool = False):
    """Like load_config; with `standalone` (the command was given everything it needs, e.g. a file to
    use) and no project file at the default place, the built-in defaults instead."""
    if standalone and path == DEFAULT_CONFIG and not path.exists():
        from slothctl import config
        from slothctl.errors import ConfigError

        overrides, by_override = _overrides(sets, flags)
        try:
            raw = config.apply_overrides({"model": {"name": config.EMBEDDED_MODEL}, "data": {"source": "-"}},
                                         overrides)
            return config.build(raw, "(built-in defaults)")
        except ConfigError as exc:
            raise _flag_error(exc, by_override) from None
    return load_config(path, sets, flags)
