"""A `slothctl ... --json` training run in a subprocess whose events can be waited for, so a test can
send it real signals (SIGKILL, SIGINT, SIGTERM) at a known point of training.

A test synchronises on an event, not on timing: `freeze_on(predicate)` stops the whole process group
(SIGSTOP: the training process, and the ranks under a launcher) as soon as the reader sees the event's
line, before the test even gets it; signals sent then are handled where the event was written, once
`thaw()` continues the group (SIGKILL needs no thawing). A busy machine cannot let the loop run on to
the next step in between."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from conftest import strict_json


class TrainingProcess:
    def __init__(self, *args: str, cwd: Path, code: str | None = None):
        """`slothctl ARGS --json`; with `code`, `python -c CODE ARGS --json` (a test's wrapper of the CLI)."""
        command = ["-c", code] if code is not None else ["-m", "slothctl"]
        self.proc = subprocess.Popen([sys.executable, *command, *args, "--json"], cwd=cwd,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ),
                                     start_new_session=True)  # its own process group: freeze_on stops all of it
        self.events: list[dict] = []
        self._freeze = None  # predicate on events: SIGSTOP the group when one matches
        self.frozen = False
        self._lines: queue.Queue = queue.Queue()
        self._stderr: list[str] = []
        threading.Thread(target=self._pump, args=(self.proc.stdout, self._lines), daemon=True).start()
        threading.Thread(target=self._pump_err, daemon=True).start()

    def _pump(self, stream, lines: queue.Queue) -> None:
        for line in stream:
            if self._freeze is not None and line.strip() and self._freeze(strict_json(line)):
                self._freeze = None
                self._group(signal.SIGSTOP)
                self.frozen = True
            lines.put(line)
        lines.put(None)

    def _group(self, sig: signal.Signals) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:  # every process of the group is gone
            pass

    def freeze_on(self, predicate) -> None:
        """Stop the process group (SIGSTOP) when an event satisfies `predicate`, as soon as its line is read."""
        self._freeze = predicate

    def thaw(self) -> None:
        """Continue the frozen group: signals sent meanwhile are handled now, where it stopped."""
        self.frozen = False
        self._group(signal.SIGCONT)

    def _pump_err(self) -> None:
        for line in self.proc.stderr:
            self._stderr.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self._stderr)

    def wait_for(self, predicate, timeout: float = 600) -> dict:
        """Read events until one satisfies `predicate`; returns it (fails if the process ends first)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                line = self._lines.get(timeout=1)
            except queue.Empty:
                continue
            if line is None:
                self.proc.wait(timeout=60)
                raise AssertionError(f"process ended (rc {self.proc.returncode}) before the awaited event:\n"
                                     f"{self.stderr[-3000:]}")
            if line.strip():
                event = strict_json(line)
                self.events.append(event)
                if predicate(event):
                    return event
        raise AssertionError(f"timed out waiting for an event; last: {self.events[-3:]}")

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def finish(self, timeout: float = 600) -> int:
        """Wait for the end; collect the remaining events. Returns the exit code."""
        if self.frozen:  # e.g. ranks left behind by a SIGKILL of their launcher: let them notice it
            self.thaw()
        rc = self.proc.wait(timeout=timeout)
        while True:
            try:
                line = self._lines.get(timeout=10)
            except queue.Empty:
                break
            if line is None:
                break
            if line.strip():
                self.events.append(strict_json(line))
        time.sleep(0.2)  # let the stderr reader drain
        return rc

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.events if e.get("event") == kind]

    def ctrl_c_after_step(self, step: int, ranks_timeout: float = 30) -> int:
        """A run on several ranks: Ctrl-C once `step` is logged; asserts exit 130 and that every rank
        (every process under slothctl) is gone. Returns the step the run stopped after."""
        import psutil

        self.freeze_on(lambda e: e["event"] == "step" and e["step"] == step)
        self.wait_for(lambda e: e["event"] == "step" and e["step"] == step)
        family = psutil.Process(self.proc.pid).children(recursive=True)
        self.signal(signal.SIGINT)
        self.thaw()
        assert self.finish() == 130, self.stderr[-4000:]
        assert not psutil.wait_procs(family, timeout=ranks_timeout)[1]
        return self.of("stopped")[-1]["step"]
