"""The remote side: what runs inside the Modal container, as plain Python (no Modal import).

`run_remote(job)` is the Modal Function's body. It runs the job's slothctl command in a child
process (`python -m slothctl ... --json`), the same command a user runs locally, and passes each of
its JSON events on: to stdout (the container's log, `modal app logs`) and to the caller's events
queue (the live view at home). Modal runs the function again after a failure (`[remote] retries`) or
a preemption, with the same job; every such retry continues from the newest complete checkpoint on
the runs volume through `slothctl resume`, so a retry never starts over. A marker file per job on the
runs volume tells a retry from a first attempt and keeps the run name `--fresh` chose.

Run locally for tests (and debugging): `python -m slothctl.remote.worker JOB.json`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from slothctl.errors import EXIT_OK, EXIT_USAGE, RuntimeFailure

MARKERS = ".slothctl-remote"  # folder of job markers in the runs volume (not part of any run folder)
STOP_GRACE_S = 120  # how long a stopped child may take to finish its step and save a checkpoint


class AttemptFailed(RuntimeFailure):
    """The command failed at run time (or was killed): raised so that Modal retries the job."""


def marker_path(job: dict[str, Any]) -> Path:
    return Path(job["runs_dir"]) / MARKERS / f"{job['id']}.json"


def _has_checkpoint(run_dir: Path) -> bool:
    from slothctl.runs import RunPaths

    return RunPaths(run_dir).latest_checkpoint() is not None


def _fresh_name(job: dict[str, Any]) -> str:
    """The folder `--fresh` starts in, chosen once (a retry must find the same run, not another new one)."""
    from slothctl import config as config_mod
    from slothctl.training.plan import has_content, next_free_name

    cfg = config_mod.load(job["config"], job["sets"])
    return next_free_name(cfg) if has_content(cfg.run_dir) else cfg.output.name


def attempt_commands(job: dict[str, Any], marker: dict[str, Any]) -> list[list[str]]:
    """The slothctl commands of this attempt (`marker["attempt"]` counts from 1). A first attempt runs
    the job as asked (`--fresh` becomes the run name chosen for it); a retry of train or resume
    continues that run from its newest complete checkpoint (`resume`, without `--from`), or trains it
    from the start when no checkpoint was completed. `export gguf` is preceded by `export prepare`
    (once per cache volume)."""
    sets, flags = list(job["sets"]), list(job["args"])
    if job["command"] == "export-gguf":
        return [["export", "prepare", "--json"], _argv(["export", "gguf"], job, sets, flags)]
    command = [job["command"]]
    if job["command"] in ("train", "resume"):
        if marker["run"] != job["run"]:
            sets.append(f"output.name={marker['run']}")
        if job["max_steps"]:
            flags += ["--max-steps", str(job["max_steps"])]
        if job["force_resume"]:
            flags.append("--force-resume")
        if marker["attempt"] > 1:
            command = ["resume"] if _has_checkpoint(Path(job["runs_dir"]) / marker["run"]) else ["train"]
        elif job["from"]:
            flags += ["--from", str(job["from"])]
    return [_argv(command, job, sets, flags)]


def _argv(command: list[str], job: dict[str, Any], sets: list[str], flags: list[str]) -> list[str]:
    argv = [*command, "--config", job["config"], "--json", *flags]
    for value in sets:
        argv += ["--set", value]
    return argv


def _advance_marker(job: dict[str, Any]) -> dict[str, Any]:
    """Count this attempt in the job's marker on the runs volume (the first attempt creates it and
    chooses the run folder)."""
    from slothctl.runs import write_json_atomic

    path = marker_path(job)
    if path.is_file():
        marker = json.loads(path.read_text(encoding="utf-8"))
    else:
        marker = {"job": job["id"], "command": job["command"], "attempt": 0,
                  "run": _fresh_name(job) if job["command"] == "train" and job["fresh"] else job["run"]}
    marker["attempt"] += 1
    write_json_atomic(path, marker)
    return marker


def _child_environment() -> dict[str, str]:
    """This process's environment with this slothctl first on the path (in the container it is
    mounted at /root/slothctl, which is not on a child's path by itself)."""
    import slothctl

    env = dict(os.environ)
    package_parent = str(Path(slothctl.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_job(job: dict[str, Any], send: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """One attempt at `job`: each JSON event of the child goes to `send`. Returns {"exit_code", "run",
    "attempt", "done"}; raises AttemptFailed when a command failed at run time or was killed."""
    marker = _advance_marker(job)
    commands = attempt_commands(job, marker)
    if marker["attempt"] > 1:
        send({"event": "status", "attempt": marker["attempt"],
              "message": f"Attempt {marker['attempt']} (the previous one stopped): slothctl {commands[-1][0]}"})
    os.makedirs(job["cwd"], exist_ok=True)
    result = {"exit_code": EXIT_OK, "run": marker["run"], "attempt": marker["attempt"], "done": None}
    for argv in commands:
        result["exit_code"], result["done"] = _run_child(argv, job["cwd"], send)
        if result["exit_code"] == EXIT_USAGE:  # bad input: a retry would not help
            return result
        if result["exit_code"] != EXIT_OK:  # a failure or a signal (a preemption's): retried, from the checkpoint
            raise AttemptFailed(f"slothctl {' '.join(argv[:2])} ended with exit code {result['exit_code']} "
                                f"(attempt {marker['attempt']})")
    return result


def _run_child(argv: list[str], cwd: str, send: Callable[[dict[str, Any]], None]) -> tuple[int, dict | None]:
    """Run `python -m slothctl ARGV`, passing its JSON events on; returns (exit code, its done event)."""
    child = subprocess.Popen([sys.executable, "-m", "slothctl", *argv], cwd=cwd, env=_child_environment(),
                             stdout=subprocess.PIPE, text=True, bufsize=1)
    done = None
    try:
        for line in child.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                event = {"event": "status", "message": line}
            if event.get("event") == "done":
                done = event
            send(event)
        return child.wait(), done
    finally:
        _stop(child)


def _stop(child: subprocess.Popen) -> None:
    """The caller is going away (cancelled, interrupted): let the child save a checkpoint, then end it."""
    if child.poll() is not None:
        return
    child.send_signal(signal.SIGINT)
    try:
        child.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def run_remote(job: dict[str, Any], events=None) -> dict[str, Any]:
    """The Modal Function: one attempt at `job`, its events printed (container log) and put on the
    `events` queue when there is one (a `modal.Queue`; a detached run has none). A queue that fails
    (the caller left) is dropped; training goes on."""
    queue = [events] if events is not None else []

    def send(event: dict[str, Any]) -> None:
        print(json.dumps(event, default=str), flush=True)
        if queue:
            try:
                queue[0].put(event, block=False)
            except Exception:  # noqa: BLE001 - the follower is gone or the queue is full: keep training
                queue.clear()

    started = time.time()
    result = run_job(job, send)
    result["seconds"] = round(time.time() - started, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    """`python -m slothctl.remote.worker JOB.json`: one attempt, as Modal would make it, with
    events as JSON lines on stdout; the exit code is the command's."""
    args = sys.argv[1:] if argv is None else argv
    job = json.loads(Path(args[0]).read_text(encoding="utf-8"))
    try:
        return run_remote(job)["exit_code"]
    except AttemptFailed as exc:
        print(exc.message, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
