"""The output sink: every command's results, events and errors leave the process through here.

Three modes:
- human (default): results on stdout, progress and errors on stderr, styled on a terminal;
- json (`--json`): stdout carries nothing but JSON lines (events, the result, the error); the
  process's fd 1 is pointed at stderr so that whatever a library prints lands there;
- quiet (`--quiet`): no progress and no result text; warnings and errors still go to stderr.

Payload text (messages, paths, values, answers) is never read as rich markup: every string is
printed as a plain `Text` (or written raw); only the prefixes this module adds (`Error:`, `Hint:`,
`warning:`) and the styles set in code are coloured. Machine-readable text (the `--dry-run` TOML,
chat answers) is written raw, unwrapped, in every mode but json. rich itself is imported on first
use, so a command's `--help` does not pay for it.

`SilentOutput` (every rank but rank 0 of a run on several GPUs, training/ranks.py) prints nothing
but its error line (on stderr); `on_error` is told that line too.
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import TYPE_CHECKING, Any, Callable, Literal, TextIO

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

    from slothctl.cli.progress import EventView
    from slothctl.events import Event

Mode = Literal["human", "json", "quiet"]
Part = str | tuple[str, str]  # a plain string, or (text, rich style) for a coloured piece


class Output:
    def __init__(self, mode: Mode = "human", aside_events: bool = False,
                 on_error: Callable[[str, int, str | None], None] | None = None):
        """`aside_events`: library events are an aside for people, for commands whose stdout is one
        document (data inspect) or only answers (chat): `--json` keeps them off stdout (warnings go
        to stderr as text), and status messages only animate a spinner on a terminal."""
        self.mode: Mode = mode
        self.aside_events = aside_events
        self.on_error = on_error
        self._json_stream: TextIO | None = None
        self._out: Console | None = None
        self._err: Console | None = None
        self._view: EventView | None = None

    @property
    def json_mode(self) -> bool:
        return self.mode == "json"

    @property
    def quiet(self) -> bool:
        return self.mode == "quiet"

    def activate(self) -> Output:
        """Called when a command starts: in json mode, reserve stdout for JSON from now on."""
        if self.json_mode and self._json_stream is None:
            self._json_stream = _private_stdout()
        return self

    # ---- the consoles (rich is imported here, on first use) -------------------------------------------------------
    @property
    def err(self) -> Console:
        if self._err is None:
            self._err = _console(sys.stderr)
        return self._err

    @property
    def out(self) -> Console:
        """Human results (never used in json mode: stdout is JSON's)."""
        if self._out is None:
            self._out = _console(sys.stdout)
        return self._out

    # ---- what commands call -----------------------------------------------------------------------------------------
    def json(self, obj: dict[str, Any]) -> None:
        """One JSON line on stdout; NaN and infinities become null (strict JSON)."""
        stream = self._json_stream or sys.stdout
        stream.write(dumps(obj) + "\n")
        stream.flush()

    def event(self, event: Event) -> None:
        """The `emit` callback every library call gets: one renderer for every kind of event."""
        if self.json_mode and not self.aside_events:
            self.json(event.to_json())
            return
        if self._view is None:
            from slothctl.cli.progress import EventView

            self._view = EventView(self.err, quiet=self.mode != "human", transient_status=self.aside_events)
        self._view(event)

    def result(self, obj: dict[str, Any] | None, human: RenderableType | list[Part] | None = None) -> None:
        """A command's final result: `obj` in json mode, else `human` on stdout (nothing when quiet).

        `human` is a string or a list of parts (each a string, or (text, style)); both are plain
        text, never markup. A rich renderable built in code (a table) is printed as it is."""
        self.close()
        if self.json_mode:
            if obj is not None:
                self.json(obj)
        elif not self.quiet and isinstance(human, (str, list)):
            self.out.print(styled(human), soft_wrap=True)  # a long path stays one line, even in a file
        elif not self.quiet and human is not None:
            self.out.print(human)  # laid out to the terminal's width

    def text(self, obj: dict[str, Any], text: str) -> None:
        """Machine-readable text (TOML, an answer): `obj` in json mode, else `text` raw on stdout."""
        self.close()
        if self.json_mode:
            self.json(obj)
            return
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        sys.stdout.flush()

    def stream(self, text: str) -> None:
        """A piece of a streamed answer, raw on stdout (as it comes, no newline added)."""
        self.close()
        sys.stdout.write(text)
        sys.stdout.flush()

    def note(self, message: str) -> None:
        """An aside for people on stderr (e.g. "(interrupted)"), dimmed; nothing when quiet."""
        if not self.quiet:
            self.close()
            self.err.print(styled([(message, "dim")]), soft_wrap=True)

    def error(self, message: str, exit_code: int, hint: str | None = None) -> None:
        """`Error: message` (and `Hint: hint` on its own line) on stderr; in json mode also the
        error event on stdout."""
        self.close()
        self.err.print(styled([("Error:", "bold red"), " ", message]), soft_wrap=True)
        if hint:
            self.err.print(styled([("Hint:", "bold cyan"), " ", hint]), soft_wrap=True)
        if self.json_mode:
            self.json({"event": "error", "message": message, "hint": hint, "exit_code": exit_code})
        if self.on_error is not None:
            self.on_error(message, exit_code, hint)

    def close(self) -> None:
        """Stop live displays (a progress bar, a spinner) so that the next line prints below them."""
        if self._view is not None:
            self._view.close()


class SilentOutput(Output):
    """A rank that is not rank 0: its error line only (rank 0 reports everything else)."""

    def json(self, obj: dict[str, Any]) -> None:
        pass

    def event(self, event: Event) -> None:
        pass

    def result(self, obj: dict[str, Any] | None, human: RenderableType | list[Part] | None = None) -> None:
        pass

    def text(self, obj: dict[str, Any], text: str) -> None:
        pass

    def stream(self, text: str) -> None:
        pass

    def note(self, message: str) -> None:
        pass


def styled(parts: str | list[Part]):
    """Plain text with optional styled pieces, as a rich Text: nothing in it is read as markup."""
    from rich.text import Text

    if isinstance(parts, str):
        return Text(parts)
    return Text.assemble(*parts)


def finite(obj: Any) -> Any:
    """`obj` with every NaN / infinity (at any depth) replaced by None: JSON has no such numbers."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: finite(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(value) for value in obj]
    return obj


def dumps(obj: Any) -> str:
    """Strict JSON (no NaN): what `--json` writes and what scripts can parse with any parser."""
    return json.dumps(finite(obj), default=str, allow_nan=False)


def _console(stream: TextIO) -> Console:
    from rich.console import Console

    # markup/emoji off: a `[lora]` or `:x:` in a message is text; highlight off: no guessed colours.
    return Console(file=stream, markup=False, emoji=False, highlight=False)


_private: TextIO | None = None


def _private_stdout() -> TextIO:
    """Duplicate fd 1 for JSON (once per process), then send fd 1 to stderr. Falls back to
    sys.stdout when it is not fd 1 (e.g. captured in-process)."""
    global _private
    if _private is not None:
        return _private
    try:
        if sys.stdout.fileno() != 1:
            return sys.stdout
    except (AttributeError, OSError, ValueError):
        return sys.stdout
    sys.stdout.flush()
    _private = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)
    return _private


def mode_from_args(args: list[str]) -> Mode:
    """The mode a command line asks for, read before it is parsed, so that even a usage error
    (`--bogus`, `--max-steps abc`) is reported in that mode."""
    args = args[:args.index("--")] if "--" in args else args
    if "--json" in args:
        return "json"
    return "quiet" if "--quiet" in args else "human"


current = Output()  # replaced by each command (common.start); used by the error handler in app.main
