"""One output object for every command: people get rich text, scripts get JSON on stdout.

In `--json` mode stdout carries nothing but JSON: the process's file descriptor 1 is pointed at
stderr, so whatever a library prints (banners, C-level logs) lands there, and JSON is written to
a private copy of the original stdout.

A `silent` output (the ranks but rank 0 of a run on several, training/ranks.py) writes nothing to
stdout at all and only its error line to stderr; `on_error` is told that line too.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Callable, TextIO

from rich.console import Console

from slothctl.events import Event


class Output:
    def __init__(self, json_mode: bool = False, silent: bool = False,
                 on_error: Callable[[str, int], None] | None = None):
        self.json_mode = json_mode
        self.on_error = on_error
        self.err = Console(stderr=True, highlight=False)
        self._json_stream: TextIO = sys.stdout
        if json_mode or silent:
            self._json_stream = _private_stdout()
            self.out = self.err
        else:
            self.out = Console(highlight=False)
        if silent:
            self._json_stream = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - for the process's life
            self.out = Console(file=self._json_stream)

    def json(self, obj: dict[str, Any]) -> None:
        self._json_stream.write(json.dumps(obj, default=str) + "\n")
        self._json_stream.flush()

    def event(self, event: Event) -> None:
        """A progress event as a JSON line (json mode) or a plain line on stderr."""
        if self.json_mode:
            self.json(event.to_json())
        elif event.kind == "warning":
            self.err.print(f"[yellow]warning:[/] {event.message}")
        elif event.message:
            self.err.print(f"[dim]{event.message}[/]")

    def result(self, obj: dict[str, Any], human: str | None = None) -> None:
        """A command's final result: the object in json mode, else the human text on stdout."""
        if self.json_mode:
            self.json(obj)
        elif human is not None:
            self.out.print(human)

    def error(self, line: str, exit_code: int) -> None:
        self.err.print(f"[bold red]Error:[/] {line}", soft_wrap=True, markup=True, highlight=False) \
            if self.err.is_terminal else print(f"Error: {line}", file=sys.stderr, flush=True)
        if self.json_mode:
            self.json({"event": "error", "message": line, "exit_code": exit_code})
        if self.on_error is not None:
            self.on_error(line, exit_code)


def _private_stdout() -> TextIO:
    """Duplicate fd 1 for JSON, then send fd 1 to stderr. Falls back to sys.stdout when it is not fd 1."""
    try:
        if sys.stdout.fileno() != 1:
            return sys.stdout
    except (AttributeError, OSError, ValueError):
        return sys.stdout
    sys.stdout.flush()
    private = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)
    return private


current = Output()  # replaced by each command; used by the error handler in app.main
