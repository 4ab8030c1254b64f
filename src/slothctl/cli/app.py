"""The command tree. Read top to bottom, it is the table of contents of slothctl."""

from __future__ import annotations

import os
import sys
import traceback
from typing import Annotated, Optional

import typer

try:  # typer >= 0.24 vendors click
    from typer._click import exceptions as click_exceptions
    from typer._click.core import Command
except ImportError:  # pragma: no cover - older typer uses click itself
    from click import exceptions as click_exceptions
    from click.core import Command

from slothctl import __version__
from slothctl.cli import output
from slothctl.cli.chat import chat
from slothctl.cli.data import data_app
from slothctl.cli.doctor import doctor
from slothctl.cli.export import export_app
from slothctl.cli.init import init
from slothctl.cli.merge import merge
from slothctl.cli.pull import pull
from slothctl.cli.push import push
from slothctl.cli.resume import resume
from slothctl.cli.train import train
from slothctl.errors import EXIT_INTERRUPTED, EXIT_RUNTIME, EXIT_USAGE, SlothctlError

app = typer.Typer(
    name="slothctl",
    help="Fine-tune open LLMs with LoRA/QLoRA from one TOML file: init → train → chat → export → push.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(f"slothctl {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True,
                                                    help="Print the version and exit.")] = None,
) -> None:
    """Fine-tune open LLMs with LoRA/QLoRA from one TOML file."""


app.command()(init)
app.add_typer(data_app, name="data")
app.command()(train)
app.command()(resume)
app.command()(chat)
app.command()(merge)
app.add_typer(export_app, name="export")
app.command()(push)
app.command()(pull)
app.command()(doctor)


def command() -> Command:
    return typer.main.get_command(app)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; every failure ends as one line on stderr and an exit code (0/1/2/130)."""
    try:
        code = command().main(args=argv, prog_name="slothctl", standalone_mode=False)
    except typer.Abort:
        code = EXIT_INTERRUPTED
    except click_exceptions.NoArgsIsHelpError as exc:
        print(exc.ctx.get_help() if exc.ctx else "Usage: slothctl COMMAND --help", file=sys.stderr)
        code = EXIT_USAGE
    except click_exceptions.ClickException as exc:  # usage errors: unknown option, bad value
        output.current.error(" ".join(exc.format_message().replace("Value error, ", "").split()), EXIT_USAGE)
        code = EXIT_USAGE
    except SlothctlError as exc:
        output.current.error(exc.one_line(), exc.exit_code)
        code = exc.exit_code
    except KeyboardInterrupt:
        output.current.error("interrupted", EXIT_INTERRUPTED)
        code = EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - the last resort: one line, details on request
        if os.environ.get("SLOTHCTL_DEBUG"):
            traceback.print_exc()
        message = " ".join(str(exc).split()) or type(exc).__name__
        output.current.error(f"{type(exc).__name__}: {message} (set SLOTHCTL_DEBUG=1 for the traceback)",
                             EXIT_RUNTIME)
        code = EXIT_RUNTIME
    sys.exit(code if isinstance(code, int) else 0)
