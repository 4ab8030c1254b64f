"""Where a training step's time goes: the torch profiler over a few steady-state steps of any
training command, so slothctl and the hand-written scripts can be compared kernel by kernel.

    python bench/profile_steps.py OUT.json --steps 5:8 -- -m slothctl train --json
    python bench/profile_steps.py OUT.json --steps 5:8 -- bench/raw_unsloth.py MODEL DATA RAW.json ...
    python bench/profile_steps.py --compare A.json B.json

The command runs in this process (after `import unsloth` where it imports, as both do first);
steps are hooked through transformers' callback handler, so nothing in the command changes.
"""

from __future__ import annotations

import argparse
import json
import runpy
import sys
import time
from pathlib import Path


def _hook(out: Path, first: int, last: int) -> None:
    """Profile from the start of step `first` + 1 to the end of step `last`; write the kernel totals."""
    import torch
    from transformers.trainer_callback import CallbackHandler

    cuda = torch.cuda.is_available()
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    state = {"profiler": None, "start": 0.0}
    step_begin, step_end = CallbackHandler.on_step_begin, CallbackHandler.on_step_end

    def on_step_begin(self, args, trainer_state, control):
        if trainer_state.global_step == first and state["profiler"] is None:
            sync()
            state["profiler"] = torch.profiler.profile(activities=activities)
            state["profiler"].__enter__()
            state["start"] = time.perf_counter()
        return step_begin(self, args, trainer_state, control)

    def on_step_end(self, args, trainer_state, control):
        result = step_end(self, args, trainer_state, control)
        if trainer_state.global_step == last and state["profiler"] is not None:
            sync()
            wall = time.perf_counter() - state["start"]
            state["profiler"].__exit__(None, None, None)
            _write(out, state["profiler"], wall, last - first)
            state["profiler"] = None
        return result

    CallbackHandler.on_step_begin, CallbackHandler.on_step_end = on_step_begin, on_step_end


def _write(out: Path, profiler, wall: float, steps: int) -> None:
    kernels, busy = {}, 0.0
    for event in profiler.key_averages():
        device_us = getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0)
        if device_us > 0:  # kernels, and the CPU-side ops that launched them (their kernels' time again)
            kernels[event.key] = {"device_ms_per_step": device_us / 1e3 / steps, "calls_per_step": event.count / steps}
            if "CPU" not in str(getattr(event, "device_type", "")):
                busy += device_us / 1e3 / steps  # device events only: the GPU's busy time
    out.write_text(json.dumps({"steps": steps, "wall_ms_per_step": wall * 1e3 / steps,
                               "device_busy_ms_per_step": busy, "kernels": kernels}, indent=1))


def run(out: Path, steps: str, command: list[str]) -> None:
    first, last = (int(x) for x in steps.split(":"))
    try:
        import unsloth  # noqa: F401  (before transformers, as the profiled commands do)
    except ImportError:
        pass
    _hook(out, first, last)
    if command[0] == "-m":
        sys.argv = [command[1], *command[2:]]
        target = lambda: runpy.run_module(command[1], run_name="__main__", alter_sys=True)  # noqa: E731
    else:
        sys.argv = command
        sys.path.insert(0, str(Path(command[0]).resolve().parent))
        target = lambda: runpy.run_path(command[0], run_name="__main__")  # noqa: E731
    try:
        target()
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise


def compare(a_path: Path, b_path: Path, rows: int = 25) -> None:
    a, b = json.loads(a_path.read_text()), json.loads(b_path.read_text())
    print(f"{'':58} {a_path.stem[:12]:>12} {b_path.stem[:12]:>12}")
    for key in ("wall_ms_per_step", "device_busy_ms_per_step"):
        print(f"{key:58} {a[key]:12.1f} {b[key]:12.1f}")
    names = set(a["kernels"]) | set(b["kernels"])

    def ms(side, name):
        return side["kernels"].get(name, {}).get("device_ms_per_step", 0.0)

    print("\nkernels with the largest difference (device ms per step; calls per step):")
    for name in sorted(names, key=lambda n: -abs(ms(a, n) - ms(b, n)))[:rows]:
        calls = [side["kernels"].get(name, {}).get("calls_per_step", 0) for side in (a, b)]
        print(f"{name[:58]:58} {ms(a, name):12.2f} {ms(b, name):12.2f}   {calls[0]:.0f} / {calls[1]:.0f}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--compare":
        compare(Path(sys.argv[2]), Path(sys.argv[3]))
        return
    split = sys.argv.index("--")
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--steps", default="5:8", help="FIRST:LAST, profile steps FIRST+1 .. LAST")
    args = parser.parse_args(sys.argv[1:split])
    run(Path(args.out).resolve(), args.steps, sys.argv[split + 1:])


if __name__ == "__main__":
    main()
