"""Ctrl-C and SIGTERM at any moment (issue 14, item 3): exit 130, one `Error:` line, an error event with
--json, no temporary folder left; and leftovers of a killed process are removed by the next run.

Each signal is sent at a named moment: SLOTHCTL_TEST_HOLD=MOMENT:FILE makes the process write FILE
there and wait for the signal (interrupts.hold), so nothing races. After the signal the process
carries on with the phase it is in (model loading, data preparation, merging) and stops at the next
safe point: the signal must not be lost on the way (it was, in a `__del__`, 4 of 17 times).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import final_error, make_project, run_cli, strict_json
from slothctl.interrupts import HOLD_ENV


class Held:
    """`slothctl ARGS --json` started with a hold at `moment`; `stop(sig)` signals it there."""

    def __init__(self, tmp_path: Path, moment: str, *args: str, cwd: Path, env: dict | None = None):
        self.marker = tmp_path / f"held-{moment}"
        self.proc = subprocess.Popen([sys.executable, "-m", "slothctl", *args, "--json"], cwd=cwd, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env={**os.environ, **(env or {}), HOLD_ENV: f"{moment}:{self.marker}"})

    def stop(self, sig: signal.Signals, timeout: float = 300) -> tuple[int, list[dict], str]:
        deadline = time.time() + timeout
        while not self.marker.exists():
            assert self.proc.poll() is None, self.proc.communicate()[1][-3000:]
            assert time.time() < deadline, "the process never reached the moment"
            time.sleep(0.05)
        self.proc.send_signal(sig)
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, [strict_json(line) for line in out.splitlines() if line.strip()], err


def assert_stopped(code: int, events: list[dict], stderr: str, sig: signal.Signals, doing: str) -> None:
    assert code == 130, stderr[-3000:]
    line = final_error(stderr)
    assert line == f"Error: stopped by {sig.name} {doing}", stderr[-3000:]
    assert "Exception ignored" not in stderr
    assert events[-1] == {"event": "error", "message": line.removeprefix("Error: "), "hint": None, "exit_code": 130}
    assert not [e for e in events if e["event"] in ("step", "done")]


SLOW = pytest.mark.slow  # not in CI (./scripts/test -m slow runs these): the other signal of a case in CI


@pytest.mark.parametrize("sig", [pytest.param(signal.SIGINT, marks=SLOW), signal.SIGTERM])
def test_a_signal_while_the_model_loads_stops_the_run(tmp_path, embedded_model, sig):
    project = make_project(tmp_path / "load", "train.max_steps=2")
    held = Held(tmp_path, "model_loading", "train", cwd=project)
    assert_stopped(*held.stop(sig), sig, "while loading the model")
    assert not list((project / "runs" / "load").glob("checkpoint-*"))


@pytest.mark.parametrize("command,sig", [pytest.param(("train",), signal.SIGTERM, marks=SLOW),
                                         (("data", "format"), signal.SIGINT)])
def test_a_signal_while_the_data_is_prepared_stops_the_command(tmp_path, embedded_model, command, sig):
    project = make_project(tmp_path / "data", "train.max_steps=2")
    cache = tmp_path / "cache"  # empty: the data is prepared, not read from the cache
    held = Held(tmp_path, "data_preparing", *command, cwd=project, env={"SLOTHCTL_DATA_CACHE": str(cache)})
    assert_stopped(*held.stop(sig), sig, "while preparing the data")
    assert not cache.exists() or not any(cache.iterdir())


@pytest.mark.parametrize("sig", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=SLOW)])
def test_a_signal_while_merging_leaves_no_temporary_folder(tmp_path, trained_run, sig):
    target = tmp_path / "out" / "merged"
    held = Held(tmp_path, "merging", "merge", "--out", str(target), cwd=trained_run)
    assert_stopped(*held.stop(sig), sig, "while merging (nothing was written)")
    assert not target.parent.exists() or not list(target.parent.iterdir())  # no .merged.tmp-<pid>-*


def test_the_next_run_removes_a_killed_process_s_temporary_folder(tmp_path, trained_run):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that no process has now
    target = tmp_path / "merged"
    leftover = tmp_path / f".merged.tmp-{gone.pid}-x1y2"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"\0" * 1024)
    alive = tmp_path / f".merged.tmp-{os.getpid()}-a1b2"  # a process that still runs: left alone
    alive.mkdir()
    result = run_cli("merge", "--precision", "lora", "--no-check", "--out", str(target), cwd=trained_run)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not leftover.exists() and alive.exists() and (target / "adapter_config.json").is_file()


def reading_stdin(pid: int) -> bool:
    """The process's main thread waits in read(0, ...) (Linux x86-64: syscall 0)."""
    fields = Path(f"/proc/{pid}/syscall").read_text().split()
    return fields[0] == "0" and int(fields[1], 16) == 0


@pytest.mark.slow  # not in CI (./scripts/test -m slow runs these)
@pytest.mark.skipif(not Path("/proc/self/syscall").exists() or os.uname().machine != "x86_64",
                    reason="waits for the prompt through /proc/PID/syscall (Linux x86-64)")
def test_chat_forgives_ctrl_c_at_its_prompt_and_ends_on_sigterm(trained_run):
    """As before: Ctrl-C at the prompt is forgiven (Ctrl-D or /exit leaves); SIGTERM ends chat with exit 130."""
    proc = subprocess.Popen([sys.executable, "-m", "slothctl", "chat", "--json"], cwd=trained_run, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def ask_help() -> dict:
        proc.stdin.write("/help\n")
        proc.stdin.flush()
        return strict_json(proc.stdout.readline())

    assert ask_help()["event"] == "help"  # loaded and answering
    while not reading_stdin(proc.pid):  # back at the prompt (not still between the answer and the prompt)
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    seen = []
    while not seen or "(Ctrl-D or /exit to leave)" not in seen[-1]:  # forgiven: said on stderr
        seen.append(proc.stderr.readline())
        assert seen[-1], (proc.wait(), proc.stdout.read(), "".join(seen))
    assert ask_help()["event"] == "help"  # still there
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-3000:]
    assert final_error(err) == "Error: stopped by SIGTERM"
    assert strict_json(out.splitlines()[-1])["exit_code"] == 130
