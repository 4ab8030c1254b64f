"""The one renderer of library events for people (json mode writes events as they are).

On a terminal, training is a live bar with loss, eval loss, learning rate, tokens/s, elapsed and
ETA; elsewhere (logs, CI) each logged step is one line. Status messages are dim lines, or, for
commands that ask for it (`transient_status`), only the text of a spinner on a terminal. Warnings
are always shown, even when quiet. Every message is printed as plain text, never as markup.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from slothctl.cli.output import styled
from slothctl.events import Event

if TYPE_CHECKING:
    from rich.console import Console

TRAINING = ("start", "step", "eval")
SILENT = ("stopped", "check")  # the command's last line (or its summary) says the same


def clock(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def step_line(d: dict[str, Any]) -> str:
    return (f"step {d['step']}/{d['total_steps']}  loss {d['loss']:.4f}  lr {d['lr']:.2e}  "
            f"{d['tokens_per_s']:,.0f} tok/s  elapsed {clock(d.get('elapsed'))}  eta {clock(d.get('eta'))}")


class EventView:
    """An `emit` callback: call it with events, `close()` it before printing anything else."""

    def __init__(self, console: Console, quiet: bool = False, transient_status: bool = False):
        self.console = console
        self.quiet = quiet
        self.transient_status = transient_status
        self.terminal = console.is_terminal
        self._bar = None  # (rich Progress, task id) while training on a terminal
        self._spinner = None  # rich Status while a transient status shows

    def __call__(self, event: Event) -> None:
        kind, message = event.kind, event.message
        if kind == "warning":
            self._line([("warning:", "yellow"), " ", message])
        elif kind == "error":  # a recoverable error inside a command (a bad chat turn)
            self._line([("Error:", "bold red"), " ", message])
        elif self.quiet or kind in SILENT:
            return
        elif kind in TRAINING:
            self._training(event)
        elif kind == "checkpoint":
            self._line([(f"checkpoint saved: {event.data['path']}", "dim")])
        elif kind == "stopping":
            self._line([(message, "yellow")])
        elif kind == "status" and self.transient_status:
            self._spin(message)
        elif message:
            self._line([(message, "dim")])

    def _line(self, parts) -> None:
        self.console.print(styled(parts), soft_wrap=True)

    def _spin(self, message: str) -> None:
        if not self.terminal or not message:
            return
        if self._spinner is None:
            self._spinner = self.console.status(styled(message))
            self._spinner.start()
        else:
            self._spinner.update(styled(message))

    def _training(self, event: Event) -> None:
        d = event.data
        if event.kind == "start":
            if self.terminal and self._bar is None:
                self._stop_spinner()
                bar = _progress(self.console)
                bar.start()
                self._bar = (bar, bar.add_task("train", total=d["total_steps"], completed=d["step"],
                                                metrics=""))
            return
        if event.kind == "step":
            if self._bar is not None:
                bar, task = self._bar
                metrics = f"loss {d['loss']:.4f}  lr {d['lr']:.2e}  {d['tokens_per_s']:,.0f} tok/s"
                bar.update(task, completed=d["step"], total=d["total_steps"], metrics=metrics, eta=d.get("eta"))
            else:
                self._line([step_line(d)])
        elif event.kind == "eval":
            if self._bar is not None:
                bar, task = self._bar
                bar.update(task, eval_loss=d["eval_loss"])
            self._line([("eval", "magenta"), f" step {d['step']}: eval_loss {d['eval_loss']:.4f}"])

    def _stop_spinner(self) -> None:
        if self._spinner is not None:
            self._spinner.stop()
            self._spinner = None

    def close(self) -> None:
        self._stop_spinner()
        if self._bar is not None:
            self._bar[0].stop()
            self._bar = None


def _progress(console: Console):
    """A rich Progress whose columns render numbers as Text (no markup templates)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TimeElapsedColumn

    class Label(ProgressColumn):
        def render(self, task):
            return styled([("train", "bold")])

    class Metrics(ProgressColumn):
        def render(self, task):
            fields = task.fields
            parts: list = [fields.get("metrics") or ""]
            if fields.get("eval_loss") is not None:
                parts += ["  eval ", (f"{fields['eval_loss']:.4f}", "magenta")]
            return styled(parts)

    class Eta(ProgressColumn):
        def render(self, task):
            return styled(f"eta {clock(task.fields.get('eta'))}")

    return Progress(Label(), BarColumn(), MofNCompleteColumn(), Metrics(), TimeElapsedColumn(), Eta(),
                    console=console, transient=False)
