"""Kill a training at random moments and resume it each time (issue 14's proof): every run must end
with the uninterrupted run's adapter, to the bit, and no resume may fail.

A real `slothctl train` on the embedded model (float32, checkpoints every step, one kept: every
step writes a checkpoint and rotates the previous one away) is SIGKILLed (the whole process group)
after a random delay drawn over a whole uninterrupted run's duration, so kills land during the
model load, data preparation, steps, checkpoint writes and rotation; then `resume` (or `train`
again when no checkpoint was complete yet) runs, and is itself killed, until --kills per run are
spent; the last resume runs to the end. The moment of each kill is the last event the run had
printed (--json).

    python bench/faults.py --kills 30 --runs 3 --out bench/results/faults-cpu2-DATE.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SETS = ("model.max_seq_length=128", "train.batch_size=4", "train.gradient_accumulation_steps=1",
        "train.gradient_checkpointing=false", "data.eval_fraction=0.0", "model.dtype=float32",
        "train.max_steps=8", "train.save_steps=1", "train.save_total_limit=1")


def slothctl(*args: str, cwd: Path, stderr) -> subprocess.Popen:
    """Its own process group (a kill takes every process it started); stderr to a file (never a full pipe)."""
    return subprocess.Popen([sys.executable, "-m", "slothctl", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=stderr, text=True, start_new_session=True)


def make_project(folder: Path) -> Path:
    sets = [arg for s in SETS for arg in ("--set", s)]
    subprocess.run([sys.executable, "-m", "slothctl", "init", str(folder), "--example", *sets], check=True,
                   capture_output=True)
    return folder


def last_event_reader(proc: subprocess.Popen, seen: list[str]) -> threading.Thread:
    """Collect the --json events' names (the kill's moment is the last one)."""
    def pump() -> None:
        for line in proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            seen.append(str(event.get("event")) + (f":{event['step']}" if "step" in event else ""))
    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    return thread


def run_folder(project: Path) -> Path:
    return next(p for p in (project / "runs").iterdir() if p.is_dir())


def has_checkpoint(project: Path) -> bool:
    runs = project / "runs"
    return runs.is_dir() and any(c.name.startswith("checkpoint-") and (c / "slothctl_checkpoint.json").is_file()
                                 for r in runs.iterdir() if r.is_dir() for c in r.iterdir())


def attempt(project: Path, kill_after: float | None) -> dict:
    """One train/resume; killed after `kill_after` seconds unless None. Returns what happened."""
    command = "resume" if has_checkpoint(project) else "train"
    errors = tempfile.TemporaryFile("w+")
    proc = slothctl(command, "--json", cwd=project, stderr=errors)
    seen: list[str] = []
    reader = last_event_reader(proc, seen)
    started = time.monotonic()
    killed = False
    if kill_after is not None:
        try:
            proc.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            killed = True
    proc.wait()
    reader.join(timeout=5)
    errors.seek(0)
    stderr = errors.read()
    return {"command": command, "killed": killed, "after_s": round(time.monotonic() - started, 2),
            "moment": seen[-1] if seen else "before any event", "returncode": proc.returncode,
            "error": "" if killed or proc.returncode == 0 else stderr[-600:]}


def adapter_tensors(project: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run_folder(project) / "adapter" / "adapter_model.safetensors"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=30)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    import torch

    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="slothctl-faults-"))
    try:
        reference = make_project(work / "reference")
        started = time.monotonic()
        whole = attempt(reference, None)
        duration = time.monotonic() - started
        assert whole["returncode"] == 0, whole["error"]
        expected = adapter_tensors(reference)
        print(f"uninterrupted run: {duration:.1f} s", flush=True)
        runs = []
        for run in range(args.runs):
            project = make_project(work / f"run{run}")
            kills = args.kills // args.runs + (1 if run < args.kills % args.runs else 0)
            attempts = []
            while sum(a["killed"] for a in attempts) < kills:
                result = attempt(project, rng.uniform(0.5, duration))
                attempts.append(result)
                print(f"run {run}: {json.dumps(result)}", flush=True)
                if not result["killed"] and result["returncode"] == 0:  # it finished before its kill: start over
                    shutil.rmtree(project / "runs")
            final = attempt(project, None)
            attempts.append(final)
            print(f"run {run}: {json.dumps(final)}", flush=True)
            got = adapter_tensors(project) if final["returncode"] == 0 else {}
            equal = bool(got) and got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)
            runs.append({"attempts": attempts, "adapter_equal": equal})
        failed = [a for r in runs for a in r["attempts"] if not a["killed"] and a["returncode"] != 0]
        result = {"date": datetime.date.today().isoformat(), "command": " ".join(sys.argv),
                  "settings": SETS, "uninterrupted_s": round(duration, 1),
                  "kills": sum(a["killed"] for r in runs for a in r["attempts"]),
                  "moments": sorted({a["moment"].split(":")[0] for r in runs for a in r["attempts"] if a["killed"]}),
                  "failed_resumes": len(failed), "adapters_equal": [r["adapter_equal"] for r in runs], "runs": runs}
        print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))
        if args.out:
            args.out.write_text(json.dumps(result, indent=1) + "\n")
        sys.exit(0 if not failed and all(result["adapters_equal"]) else 1)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
