"""The command tree. Read top to bottom, it is the table of contents of slothctl.

Commands load when used (see cli/commands.py): the summaries below are what `slothctl --help`
lists, and a test checks that each is the first line of its command's help.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, Optional

import typer

try:  # typer >= 0.24 vendors click: its exceptions are the ones raised (the one use of typer._click)
    from typer._click import echo
    from typer._click import exceptions as click_exceptions
    from typer._click.core import Command
except ImportError:  # pragma: no cover - older typer uses click itself
    from click import echo
    from click import exceptions as click_exceptions
    from click.core import Command

from slothctl import __version__, interrupts
from slothctl.cli import output
from slothctl.cli.commands import LazyCommands, epilog, new_app
from slothctl.errors import EXIT_INTERRUPTED, EXIT_RUNTIME, EXIT_USAGE, SlothctlError

COMMANDS = {  # name: ("module:command", summary)
    "init": ("slothctl.cli.init:init", "Create a project: DIR/slothctl.toml from a template, every key documented."),
    "data": ("slothctl.cli.data:data_app", "Look at the training data and format it once for train."),
    "train": ("slothctl.cli.train:train", "Train a LoRA adapter: checkpoints, adapter/ and summary.json go to "
                                          "runs/<name>/."),
    "resume": ("slothctl.cli.resume:resume", "Continue an interrupted run from its newest complete checkpoint to "
                                             "the end it was started for."),
    "chat": ("slothctl.cli.chat:chat", "Chat with the tuned model (the run's adapter on its base model), a merged "
                                       "model or a GGUF file."),
    "merge": ("slothctl.cli.merge:merge", "Merge the LoRA adapter into its base model: safetensors, tokenizer, "
                                          "generation config, checked."),
    "export": ("slothctl.cli.export:export_app", "Export the trained model: a merged folder, or GGUF files with an "
                                                 "Ollama Modelfile."),
    "push": ("slothctl.cli.push:push", "Upload the run's adapter (or merged model, or GGUF files) with a model card, "
                                       "private by default."),
    "pull": ("slothctl.cli.pull:pull", "Download a run folder from the [remote] runs volume, so chat, merge, export "
                                       "and push work on it here."),
    "doctor": ("slothctl.cli.doctor:doctor", "Check the installation: libraries, CUDA, Unsloth, the bundled model "
                                             "and the GGUF tools."),
}

app = new_app(
    name="slothctl",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(f"slothctl {__version__}")
        raise typer.Exit()


@app.callback(epilog=epilog(("slothctl init demo --example", "a project with a small bundled dataset"),
                            ("cd demo && slothctl train --max-steps 20", "a short real training"),
                            ("slothctl chat -p 'Why are sloths slow?'", "one answer from the tuned model")))
def root(
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True,
                                                    help="Print the version and exit.")] = None,
) -> None:
    """Fine-tune open LLMs with LoRA/QLoRA from one TOML file: init → train → chat → export → push."""


def command() -> Command:
    group = typer.main.get_command(app)
    group.commands = LazyCommands(COMMANDS)
    return group


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; every failure ends as one `Error:` line (and a `Hint:` line) on stderr and an
    exit code (0/1/2/130); in --json mode also as an error event on stdout."""
    args = list(sys.argv[1:] if argv is None else argv)
    output.current = output.Output(output.mode_from_args(args))  # so that usage errors use the mode too
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:  # a rank of torchrun keeps SIGTERM's default (training/ranks.py)
        interrupts.install()
    code = EXIT_RUNTIME
    try:
        code = command().main(args=args, prog_name="slothctl", standalone_mode=False)
        if code == EXIT_INTERRUPTED and interrupts.state.forced:  # typer returns 130 for a KeyboardInterrupt
            code = _fail(_stopped(), EXIT_INTERRUPTED)
    except typer.Abort:
        code = EXIT_INTERRUPTED
    except click_exceptions.NoArgsIsHelpError as exc:
        echo(exc.ctx.get_help() if exc.ctx else "Usage: slothctl COMMAND --help", err=True)
        code = EXIT_USAGE
    except click_exceptions.ClickException as exc:  # usage errors: unknown option, bad value
        context = getattr(exc, "ctx", None)
        hint = f"see `{context.command_path} --help`" if context is not None else None
        code = _fail(" ".join(exc.format_message().replace("Value error, ", "").split()), EXIT_USAGE, hint)
    except SlothctlError as exc:
        code = _fail(" ".join(exc.message.rstrip(".").split()), exc.exit_code, exc.hint)
    except interrupts.STOPPED:
        code = _fail(_stopped(), EXIT_INTERRUPTED)
    except Exception as exc:  # noqa: BLE001 - the last resort: one line, the traceback on request
        code = _unexpected(exc)
    finally:
        output.current.close()
    sys.exit(code if isinstance(code, int) else 0)


def _stopped() -> str:
    return f"stopped by {interrupts.state.forced}" if interrupts.state.forced else "interrupted"


def _fail(message: str, exit_code: int, hint: str | None = None) -> int:
    output.current.error(message, exit_code, hint)
    return exit_code


def _unexpected(exc: Exception) -> int:
    """A third-party exception: the table's line and hint, or "TypeName: message"; with
    SLOTHCTL_DEBUG set, the traceback first (and no hint to set it)."""
    from slothctl.cli.failures import explain

    debug = bool(os.environ.get("SLOTHCTL_DEBUG"))
    if debug:
        import traceback

        output.current.close()
        traceback.print_exc()
    known = explain(exc)
    if known is not None:
        return _fail(known.message, known.exit_code, known.hint)
    message = " ".join(str(exc).split()) or type(exc).__name__
    return _fail(f"{type(exc).__name__}: {message}", EXIT_RUNTIME,
                 None if debug else "set SLOTHCTL_DEBUG=1 to see the traceback")
