"""`slothctl train --gpus N`: the run on N data-parallel ranks of this machine, started through torchrun.

slothctl stays the parent. It starts `python -m torch.distributed.run --standalone --nproc-per-node N
-m slothctl train ... --json` as its child; every rank runs the same command (ranks.py says what
differs in a rank), rank 0 alone writes the run folder and prints events, and this process hands
those events to the same view as a one-process run. Then:

    first Ctrl-C / SIGTERM   sent on to torchrun as SIGINT, which passes it to every rank: they agree
                             on the step to stop after, rank 0 saves a checkpoint; exit 130
    second Ctrl-C            torchrun is killed, and every rank with it, at once; exit 130
    a rank fails             torchrun stops the others; one line names the rank and its error; exit 1
    kill -9 of slothctl      torchrun dies with it and the ranks with torchrun (PR_SET_PDEATHSIG, Linux)

What the ranks and torchrun print besides rank 0's events goes to a log file in a temporary folder,
which a failure names and a successful run removes. On a machine without CUDA, N means N CPU
processes (gloo): slower than one, there to try the setup (and to test it).
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slothctl.errors import EXIT_INTERRUPTED, EXIT_USAGE, Interrupted, RuntimeFailure, SlothctlError, UsageError
from slothctl.events import Emit, Event, status
from slothctl.training import ranks as ranks_mod

# Seconds torchrun gives the ranks to finish their step and save after Ctrl-C, before it kills them.
STOP_TIMEOUT = 900


def ranks_wanted(gpus: int | str) -> int:
    """[train] gpus as a number of ranks: `auto` is every visible CUDA GPU (1 without CUDA); more than
    the visible GPUs is refused. Without CUDA, a number N is N CPU processes."""
    if gpus == 1:
        return 1
    count = cuda_count()
    if gpus == "auto":
        return max(1, count)
    if count and int(gpus) > count:
        raise UsageError(f"[train] gpus = {gpus}, but {count} CUDA GPU{'s are' if count > 1 else ' is'} visible",
                         f"set --gpus {count} or --gpus auto (CUDA_VISIBLE_DEVICES chooses which)")
    return int(gpus)


def cuda_count() -> int:
    from slothctl.backends import cuda_available

    if not cuda_available():
        return 0
    import torch

    return torch.cuda.device_count()


def ranks_to_start(gpus: int | str) -> int:
    """How many ranks this command starts: 1 in a process that already is a rank (torchrun started it,
    and its --nproc-per-node decides), else [train] gpus (ranks_wanted)."""
    return 1 if "LOCAL_RANK" in os.environ else ranks_wanted(gpus)


def torchrun_command(ranks: int, args: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
            f"--shutdown-timeout={STOP_TIMEOUT}", "-m", "slothctl", *args, "--json"]


@dataclass
class Relay:
    """Rank 0's JSON lines turned back into events for the view; the result and what a stop needs kept."""

    emit: Emit
    result: dict | None = None
    checkpoint: str | None = None
    stopped: dict | None = None
    other: list[str] = field(default_factory=list)

    def line(self, text: str) -> None:
        try:
            record = json.loads(text)
        except ValueError:
            record = None
        if not isinstance(record, dict) or "event" not in record:
            self.other.append(text)  # not an event (nothing else should write there): kept for the log
            return
        kind = record.pop("event")
        if kind == "done":
            self.result = record
        elif kind == "error":
            return  # rank 0 also records it as a failure (ranks.record_failure), where every rank's is
        else:
            if kind == "checkpoint":
                self.checkpoint = record.get("path")
            elif kind == "stopped":
                self.stopped = record
            message = record.pop("message", "")
            self.emit(Event(kind, record, message))


class Signals:
    """While the ranks run: the first SIGINT/SIGTERM is passed to torchrun as SIGINT (a clean stop of
    every rank), a second kills torchrun (and so every rank) at once."""

    def __init__(self, child: subprocess.Popen):
        self.child, self.first, self.forced = child, None, None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.first is None:
            self.first = name
            self._send(signal.SIGINT)
        else:
            self.forced = name
            self._send(signal.SIGKILL)

    def _send(self, sig: signal.Signals) -> None:
        try:
            os.kill(self.child.pid, sig)
        except ProcessLookupError:
            pass

    def __enter__(self) -> "Signals":
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _dies_with(parent: int):
    """preexec_fn of the torchrun child: SIGKILL when this process dies (libc loaded before the fork)."""
    prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl if sys.platform.startswith("linux") else None

    def setup() -> None:
        if prctl is not None:
            prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
            if os.getppid() != parent:
                os._exit(1)
    return setup


def train_on_ranks(ranks: int, args: list[str], emit: Emit, resume: str):
    """Run `slothctl <args>` on `ranks` ranks through torchrun; returns rank 0's TrainResult. `resume` is
    the command that continues the run (for a second Ctrl-C, which leaves no rank to say it)."""
    from slothctl.training.run import TrainResult

    folder = Path(tempfile.mkdtemp(prefix="slothctl-ranks-"))
    log = folder / "ranks.log"
    where = f"{ranks} CUDA GPUs" if cuda_count() else f"{ranks} CPU processes (no CUDA GPU: gloo)"
    status(emit, f"Starting {ranks} ranks through torchrun on {where}; the output of every rank goes to {log}")
    env = {**os.environ, ranks_mod.FAILURES_ENV: str(folder)}
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // ranks)))
    relay = Relay(emit)
    with open(log, "wb") as log_file:
        child = subprocess.Popen(torchrun_command(ranks, args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=log_file, env=env, text=True, start_new_session=True,
                                 preexec_fn=_dies_with(os.getpid()))
    with Signals(child) as signals:
        for line in child.stdout:
            relay.line(line)
        code = child.wait()
    if relay.other:
        with open(log, "a", encoding="utf-8") as log_file:
            log_file.writelines(relay.other)
    if signals.forced:
        kept = f"the last complete checkpoint is {relay.checkpoint}" if relay.checkpoint else "no checkpoint was written"
        raise Interrupted(f"stopped at once by a second {signals.forced}; {kept}",
                          f"continue with: {resume}" if relay.checkpoint else None)
    failures = read_failures(folder)
    if code == 0 and relay.result is not None:
        shutil.rmtree(folder, ignore_errors=True)
        return TrainResult.from_json(relay.result)
    if signals.first:
        main = failures.get(0)
        if main and main["exit_code"] == EXIT_INTERRUPTED:
            raise Failure(main["message"], EXIT_INTERRUPTED, main.get("hint"))
        raise Interrupted(f"stopped by {signals.first} before training started" if relay.stopped is None
                          else f"stopped by {signals.first}")
    raise root_cause(failures, log, code)


class Failure(SlothctlError):
    """A rank's own error line, passed on with its exit code."""

    def __init__(self, line: str, exit_code: int, hint: str | None = None):
        super().__init__(line, hint)
        self.exit_code = exit_code


def read_failures(folder: Path) -> dict[int, dict[str, Any]]:
    """{rank: {"message", "exit_code", "time"}} of the ranks that recorded an error."""
    found = {}
    for path in folder.glob("rank-*.json"):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            found[int(record["rank"])] = record
        except (OSError, ValueError, KeyError):
            continue
    return found


TORCHRUN_FAILURE = re.compile(r"rank\s*:\s*(\d+) \(local_rank: \d+\)\s*exitcode\s*:\s*(-?\d+)")


def died_by_signal(log: Path) -> tuple[int, int] | None:
    """(rank, signal) of a rank that torchrun saw die by a signal it did not send (SIGKILL from the
    out-of-memory killer, SIGSEGV), from the failure report torchrun writes to its log."""
    try:
        text = log.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for rank, code in TORCHRUN_FAILURE.findall(text):
        if int(code) < 0 and -int(code) not in (signal.SIGTERM, signal.SIGINT):
            return int(rank), -int(code)
    return None


def root_cause(failures: dict[int, dict[str, Any]], log: Path, code: int) -> SlothctlError:
    """The one error to report when torchrun ended badly. A rank killed by a signal comes first (the
    errors of the others are its consequence: a peer gone); then the earliest error a rank recorded.
    The same bad input fails every rank alike, so it is reported as it is (exit 2)."""
    hint = f"the output of every rank is in {log}"
    killed = died_by_signal(log)
    if killed is not None:
        rank, sig = killed
        return RuntimeFailure(f"rank {rank} died by {signal.Signals(sig).name} (out of memory, or killed)", hint)
    if failures:
        first = min(failures.values(), key=lambda record: record.get("time", 0))
        if first["exit_code"] == EXIT_USAGE:
            return Failure(first["message"], EXIT_USAGE, first.get("hint"))
        return RuntimeFailure(f"rank {first['rank']} failed: {first['message']}", hint)
    return RuntimeFailure(f"torchrun ended with exit code {code} before the ranks reported anything", hint)
