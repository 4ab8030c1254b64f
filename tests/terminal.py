"""Run slothctl with a pseudo-terminal as stderr (and stdout, unless it goes to a file), as a person
at a terminal would: rich then styles, measures the width and animates, as it does for people."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from dataclasses import dataclass
from pathlib import Path

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


@dataclass
class TerminalResult:
    returncode: int
    raw: str  # what the terminal received, escape codes included

    @property
    def text(self) -> str:
        """The terminal's text without escape codes, one entry per line."""
        return ANSI.sub("", self.raw).replace("\r\n", "\n").replace("\r", "\n")

    @property
    def lines(self) -> list[str]:
        return [line.rstrip() for line in self.text.splitlines() if line.strip()]


def run_terminal(*args: str, cwd: Path | str | None = None, stdout: Path | None = None, columns: int = 60,
                 env: dict | None = None, timeout: float = 600) -> TerminalResult:
    """`python -m slothctl ARGS` with a `columns`-wide pseudo-terminal as stderr, and as stdout unless
    `stdout` names a file to redirect it to (like `> file` in a shell)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    full_env = {key: value for key, value in os.environ.items()
                if key not in ("NO_COLOR", "FORCE_COLOR", "COLUMNS", "LINES", "TERM")}
    full_env.update({"TERM": "xterm-256color", **(env or {})})
    out = open(stdout, "w") if stdout is not None else slave
    try:
        proc = subprocess.Popen([sys.executable, "-m", "slothctl", *args], cwd=cwd, env=full_env,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=slave, close_fds=True)
    finally:
        os.close(slave)
        if stdout is not None:
            out.close()
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        returncode = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    return TerminalResult(returncode, b"".join(chunks).decode("utf-8", "replace"))
