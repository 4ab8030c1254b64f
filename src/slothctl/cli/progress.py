"""The live training view: a progress bar with loss, eval loss, learning rate, tokens/s, elapsed and ETA.

On a terminal it redraws in place (rich Live); otherwise (logs, CI) each logged step is one line.
Evaluations, checkpoints and the Ctrl-C notices are printed as lines in both cases.
"""

from __future__ import annotations

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from slothctl.cli.output import Output
from slothctl.events import Event


def _fmt_eta(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class TrainView:
    """An `emit` callback for training events; use as a context manager around the run."""

    def __init__(self, out: Output):
        self.out = out
        self.live = not out.json_mode and out.err.is_terminal
        self.progress = Progress(
            TextColumn("[bold]train[/]"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss [cyan]{task.fields[loss]}[/]  eval [magenta]{task.fields[eval]}[/]  "
                       "lr {task.fields[lr]}  {task.fields[tps]} tok/s"),
            TimeElapsedColumn(), TextColumn("eta {task.fields[eta]}"),
            console=out.err, transient=False, disable=not self.live)
        self.task = None

    def __enter__(self):
        if self.live:
            self.progress.start()
        return self

    def __exit__(self, *exc):
        if self.live:
            self.progress.stop()

    def _print(self, text: str) -> None:
        (self.progress.console if self.live else self.out.err).print(text)

    def __call__(self, event: Event) -> None:
        if self.out.json_mode:
            self.out.json(event.to_json())
            return
        d = event.data
        if event.kind == "start":
            self.task = self.progress.add_task("train", total=d["total_steps"], completed=d["step"],
                                               loss="-", eval="-", lr="-", tps="-", eta="-")
        elif event.kind == "step":
            loss, lr, tps = f"{d['loss']:.4f}", f"{d['lr']:.2e}", f"{d['tokens_per_s']:,.0f}"
            if self.live and self.task is not None:
                self.progress.update(self.task, completed=d["step"], total=d["total_steps"], loss=loss, lr=lr,
                                     tps=tps, eta=_fmt_eta(d.get("eta")))
            else:
                self._print(f"step {d['step']}/{d['total_steps']}  loss {loss}  lr {lr}  {tps} tok/s  "
                            f"elapsed {_fmt_eta(d.get('elapsed'))}  eta {_fmt_eta(d.get('eta'))}")
        elif event.kind == "eval":
            if self.live and self.task is not None:
                self.progress.update(self.task, eval=f"{d['eval_loss']:.4f}")
            self._print(f"[magenta]eval[/] step {d['step']}: eval_loss {d['eval_loss']:.4f}")
        elif event.kind == "checkpoint":
            self._print(f"[dim]checkpoint saved: {d['path']}[/]")
        elif event.kind == "warning":
            self._print(f"[yellow]warning:[/] {event.message}")
        elif event.kind == "stopping":
            self._print(f"[yellow]{event.message}[/]")
        elif event.kind == "stopped":
            pass  # the command's last line (exit 130) says the same, with the resume command
        elif event.message:
            self._print(f"[dim]{event.message}[/]")
