"""How commands are declared: loaded on first use, with examples, and help rendered by `cli.help`.

`slothctl --help` must start about as fast as importing typer and rich, so the root group knows
its commands by name and one-line summary only (`LazyCommands`); a command's module (and what it
imports) loads when that command runs, shows its help, or the completion scripts are generated.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any, Callable, Iterator

import typer
from typer.core import TyperCommand, TyperGroup

EXAMPLE_SEPARATOR = "  # "


class Command(TyperCommand):
    def format_help(self, ctx, formatter) -> None:
        from slothctl.cli.help import render

        formatter.write(render(self, ctx))


class Group(TyperGroup):
    def format_help(self, ctx, formatter) -> None:
        from slothctl.cli.help import render

        formatter.write(render(self, ctx))

    def list_commands(self, ctx) -> list[str]:
        return list(self.commands)  # names only: a lazy command is not loaded to be listed

    def summary(self, ctx, name: str) -> str:
        """The one-line help of a subcommand, without loading it when it is lazy."""
        if isinstance(self.commands, LazyCommands):
            return self.commands.summary(name)
        command = self.commands[name]
        return command.get_short_help_str(limit=200)


def examples(*pairs: tuple[str, str]) -> Callable:
    """Attach `--help` examples to a command function: (command line, what it does) pairs."""
    def mark(function: Callable) -> Callable:
        function.examples = pairs  # type: ignore[attr-defined]
        return function
    return mark


def epilog(*pairs: tuple[str, str]) -> str | None:
    """Examples as click's epilog text, one "command  # what" line each (cli.help lays them out)."""
    return "\n".join(f"{line}{EXAMPLE_SEPARATOR}{what}" for line, what in pairs) or None


def new_app(**settings: Any) -> typer.Typer:
    """A Typer app (the root or a group such as `data`) whose help is ours and whose errors are app.main's."""
    return typer.Typer(cls=Group, rich_markup_mode=None, add_completion=False, pretty_exceptions_enable=False,
                       **settings)


def register(app: typer.Typer, function: Callable, name: str | None = None, **settings: Any) -> None:
    app.command(name, cls=Command, epilog=epilog(*getattr(function, "examples", ())), **settings)(function)


class LazyCommands(Mapping):
    """The root group's commands: name → "module:attribute" (a command function or a Typer group)
    and its one-line summary; the click command is built when first looked up."""

    def __init__(self, table: dict[str, tuple[str, str]]):
        self.table = table
        self.loaded: dict[str, Any] = {}

    def summary(self, name: str) -> str:
        return self.table[name][1]

    def __getitem__(self, name: str):
        if name not in self.loaded:
            if name not in self.table:
                raise KeyError(name)
            self.loaded[name] = load(name, self.table[name][0])
        return self.loaded[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.table)

    def __len__(self) -> int:
        return len(self.table)


def load(name: str, target: str):
    """The click command for "module:attribute"."""
    module, attribute = target.split(":")
    obj = getattr(importlib.import_module(module), attribute)
    if not isinstance(obj, typer.Typer):
        single = new_app()
        register(single, obj, name)
        obj = single
    command = typer.main.get_command(obj)
    command.name = name
    return command
