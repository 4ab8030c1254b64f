"""How `--help` looks: usage, description, options by panel, subcommands, then examples.

Our own few lines instead of typer's rich help, which imports rich.markdown and rich.traceback
and would make `slothctl --help` start twice as slowly. Help strings are plain text (no markup),
like every other string slothctl prints.
"""

from __future__ import annotations

import io
import shutil
import sys

from slothctl.cli.commands import EXAMPLE_SEPARATOR, Group

OPTION, ARGUMENT, COMMAND = "bold cyan", "bold yellow", "bold cyan"


def _paragraphs(text: str) -> list[str]:
    return [" ".join(block.split()) for block in text.strip().split("\n\n") if block.strip()]


def render(command, ctx) -> str:
    """The help page of `command` as text, with colours when stdout is a terminal."""
    from rich import box
    from rich.console import Console
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    width = min(shutil.get_terminal_size((100, 24)).columns, 110)
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, force_terminal=sys.stdout.isatty(), markup=False, emoji=False,
                      highlight=False)

    def panel(title: str, rows: list[tuple[str, str]], style: str) -> None:
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style=style, no_wrap=True)
        grid.add_column()
        for left, right in rows:
            grid.add_row(Text(left), Text(right))
        console.print(Panel(grid, title=Text(title), title_align="left", box=box.ROUNDED, border_style="dim"))

    usage = " ".join([ctx.command_path, *command.collect_usage_pieces(ctx)])
    console.print(Text.assemble(("Usage: ", "bold"), usage))
    for paragraph in _paragraphs(command.help or ""):
        console.print()
        console.print(Text(paragraph))
    console.print()

    arguments, panels = [], {}
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is None:
            continue
        if param.param_type_name == "argument":
            arguments.append(record)
        else:
            panels.setdefault(getattr(param, "rich_help_panel", None) or "Options", []).append(record)
    if arguments:
        panel("Arguments", arguments, ARGUMENT)
    for title, rows in panels.items():
        panel(title, rows, OPTION)
    if isinstance(command, Group):
        rows = [(name, command.summary(ctx, name)) for name in command.list_commands(ctx)]
        panel("Commands", rows, COMMAND)
    if command.epilog:
        pairs = [line.split(EXAMPLE_SEPARATOR, 1) + [""] for line in command.epilog.splitlines()]
        panel("Examples", [(pair[0], pair[1]) for pair in pairs], "bold")
    return buffer.getvalue().rstrip("\n")
