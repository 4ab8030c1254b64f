"""Ctrl-C and SIGTERM during training: the first asks for a clean stop, the second stops at once.

While the training loop runs (`armed`), the first SIGINT or SIGTERM only records itself; the
trainer finishes the step it is in, saves a checkpoint and stops (callbacks.RunControl). A second
signal raises KeyboardInterrupt wherever the program is, so a checkpoint being written is abandoned
(never counted complete, see checkpoints.py) and the previous checkpoint stays as it was. Before
and after the loop there is nothing to save, so any signal stops at once.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class GracefulStop:
    def __init__(self, signals: tuple[signal.Signals, ...] = SIGNALS) -> None:
        self.signals = signals  # on several ranks, SIGINT alone (ranks.stop_signals)
        self.requested: str | None = None  # name of the first signal, once one came
        self.forced: str | None = None  # name of the signal that stopped at once
        self.armed = False
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.armed and self.requested is None:
            self.requested = name
            return
        self.forced = name
        raise KeyboardInterrupt(name)

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():  # signals can only be caught there
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        self.armed = False
