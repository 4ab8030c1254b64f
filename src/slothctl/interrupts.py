"""Ctrl-C and SIGTERM: every command ends with exit 130 and one line, whatever it was doing, and leaves
no temporary folder behind.

A signal handler that raises (Python's own for SIGINT) can land anywhere, also in a `__del__`, where
Python prints "Exception ignored in ..." and carries on as if nothing had happened: 4 of 17 Ctrl-C
during model loading were lost that way, and training then ran to the end. So there are two modes:

- immediate (`install`, every command, from app.main): SIGINT raises KeyboardInterrupt and SIGTERM
  Terminated, at once. Light commands need no more, and chat keeps its Ctrl-C: it ends a reply and
  is forgiven at the prompt.
- deferred (`deferred()`: train/resume, merge, export, data format): the first signal only records
  itself, and the code calls `check()` at safe points (between model-load phases, data batches,
  merge and export phases, while waiting for a subprocess), which raises Interrupted there. While
  the training loop runs (`armed`) the first signal asks for a clean stop instead: the step ends and
  a checkpoint is saved (callbacks.RunControl). A second signal stops at once (the handler raises);
  should that land in a `__del__`, the next `check()` raises all the same.

Temporary folders are runs.atomic_dir's: removed as the exception passes through (a signal is one
now) and named with the pid, so the next run removes those of a process that is gone (SIGKILL).

For tests, SLOTHCTL_TEST_HOLD=MOMENT:FILE makes `hold(MOMENT)` write FILE and wait there for a signal
(60 s at most): a test signals at that moment without racing the process. The moments: `model_loading`
(train, before the backend loads), `data_preparing` (before rows are tokenized), `merging` (inside
the temporary folder, before the merge), `exporting` (inside export gguf's temporary folder), `rotation` (runs.rotate_checkpoints, an old
checkpoint renamed aside but not yet deleted).
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Iterator

from slothctl.errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)
HOLD_ENV = "SLOTHCTL_TEST_HOLD"


class Terminated(BaseException):
    """SIGTERM, raised at once. Not a KeyboardInterrupt: chat forgives those, and SIGTERM must end it."""


STOPPED = (KeyboardInterrupt, Terminated)  # what a handler raises at once


@dataclass
class State:
    requested: str | None = None  # the first signal while deferred
    forced: str | None = None  # a signal that was raised at once
    handled: bool = False  # the training loop took `requested` as its clean stop
    armed: bool = False  # the training loop runs: the first signal is a clean stop after the step
    deferring: tuple[int, ...] = ()  # the signals deferred now

    @property
    def pending(self) -> str | None:
        """The signal that `check` raises for, if any."""
        return self.forced or (None if self.handled else self.requested)


state = State()


def _handle(signum: int, frame: FrameType | None) -> None:
    name = signal.Signals(signum).name
    if signum in state.deferring and state.requested is None:
        state.requested = name
        return
    state.forced = name
    if signum == signal.SIGTERM:
        raise Terminated(name)
    raise KeyboardInterrupt(name)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()  # signals can only be caught there


def install() -> None:
    """Immediate mode for this process: SIGINT → KeyboardInterrupt, SIGTERM → Terminated."""
    if _main_thread():
        for sig in SIGNALS:
            signal.signal(sig, _handle)


@contextlib.contextmanager
def deferred(signals: tuple[signal.Signals, ...] = SIGNALS) -> Iterator[State]:
    """Heavy work: `signals` only record themselves until a `check()` (on several ranks, SIGINT
    alone: SIGTERM is torchrun stopping the survivors of a failed rank, at once: ranks.stop_signals)."""
    main = _main_thread()
    previous = {sig: signal.getsignal(sig) for sig in signals} if main else {}
    outer = state.deferring
    state.deferring = tuple(int(sig) for sig in signals)
    if main:
        for sig in signals:
            signal.signal(sig, _handle)
    try:
        yield state
    finally:
        state.deferring = outer
        state.armed = False
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def deferring(function):
    """`function` runs in deferred mode (merge, export: their temporary folder goes with the exception)."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with deferred():
            return function(*args, **kwargs)
    return wrapper


def reset() -> None:
    """Forget earlier signals (a new piece of work in the same process, e.g. a test)."""
    state.requested = state.forced = None
    state.handled = state.armed = False


def check(doing: str, hint: str | None = None) -> None:
    """A safe point: raise Interrupted ("stopped by SIGTERM while ...") if a signal came."""
    name = state.pending
    if name:
        raise Interrupted(f"stopped by {name} {doing}", hint)


def hold(moment: str) -> None:
    """Tests only (SLOTHCTL_TEST_HOLD=MOMENT:FILE): at MOMENT, write FILE and wait for a signal."""
    wanted, _, marker = os.environ.get(HOLD_ENV, "").partition(":")
    if wanted != moment or not marker:
        return
    Path(marker).write_text(str(os.getpid()), encoding="utf-8")
    deadline = time.monotonic() + 60
    while state.requested is None and state.forced is None and time.monotonic() < deadline:
        time.sleep(0.02)


def run(cmd: list[str], doing: str, **options) -> subprocess.CompletedProcess:
    """subprocess.run(cmd, capture_output=True, text=True, **options) that, on a signal, ends the child
    and raises Interrupted (a child of the terminal's process group gets Ctrl-C itself and fails:
    that failure is the signal's, not a crash)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **options)
    try:
        while True:
            try:
                out, err = proc.communicate(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                if state.pending:
                    proc.terminate()
                    try:
                        proc.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                    check(doing)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    check(doing)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
