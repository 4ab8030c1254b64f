"""Where a training step's time goes: a few steady-state steps of any training command, profiled in
its own process, so slothctl, the notebook-style script and the hand-written loop can be compared
kernel by kernel and sync by sync.

    python bench/profile_steps.py OUT.json --steps 5:8 -- -m slothctl train --json
    python bench/profile_steps.py OUT.json --steps 5:8 -- bench/raw_unsloth.py MODEL DATA RAW.json ...
    python bench/profile_steps.py OUT.json --steps 5:8 -- bench/raw_loop.py MODEL DATA RAW.json ...
    python bench/profile_steps.py OUT.json --steps 5:8 --python -- ...   # cProfile: the Python side (CPU too)
    python bench/profile_steps.py --compare A.json B.json [C.json]

The command runs in this process (after `import unsloth` where it imports, as they all do first).
Steps are hooked through transformers' callback handler, or `_shared.STEP_HOOKS` for loops without a
Trainer, so nothing in the command changes. Steps FIRST+1 .. LAST are profiled.

With the torch profiler (the default) OUT.json holds, per step: wall time; the GPU's busy time (the
union of its kernels and copies) and idle time, and what the CPU was doing while the GPU idled;
the host-device syncs (`.item()`, `.cpu()`, stream syncs) and where in Python each came from
(torch's sync debug mode); kernel times and counts. With --python it holds cProfile's heaviest
functions per step instead.
"""

from __future__ import annotations

import argparse
import json
import runpy
import sys
import time
import traceback
import warnings
from collections import Counter, defaultdict
from pathlib import Path

# One `.item()` shows as aten::item, aten::_local_scalar_dense and cudaStreamSynchronize; the window's
# own end adds one cudaDeviceSynchronize.
SYNC_OPS = ("aten::_local_scalar_dense", "cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize",
            "cudaMemcpy")


class _Window:
    """Starts a measurement at the beginning of step FIRST + 1 and ends it after step LAST."""

    def __init__(self, first: int, last: int, start, stop):
        self.first, self.last, self.start, self.stop, self.open = first, last, start, stop, False

    def on_step_begin(self, step: int) -> None:
        if step == self.first and not self.open:
            self.open = True
            self.start()

    def on_step_end(self, step: int) -> None:
        if step == self.last and self.open:
            self.open = False
            self.stop()


def _hook(window: _Window) -> None:
    """Call the window at every optimizer step of a Trainer (its callback handler) or of a loop that
    calls `_shared.STEP_HOOKS`."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _shared

    class LoopHook:
        on_step_begin, on_step_end = window.on_step_begin, window.on_step_end

    _shared.STEP_HOOKS.append(LoopHook())
    try:
        from transformers.trainer_callback import CallbackHandler
    except ImportError:
        return
    step_begin, step_end = CallbackHandler.on_step_begin, CallbackHandler.on_step_end

    def on_step_begin(self, args, trainer_state, control):
        window.on_step_begin(trainer_state.global_step)
        return step_begin(self, args, trainer_state, control)

    def on_step_end(self, args, trainer_state, control):
        result = step_end(self, args, trainer_state, control)
        window.on_step_end(trainer_state.global_step)
        return result

    CallbackHandler.on_step_begin, CallbackHandler.on_step_end = on_step_begin, on_step_end


# ---- the torch profiler: kernels, GPU idle time, syncs ------------------------------------------------------------

class SyncSites:
    """Where host-device syncs come from: torch's sync debug mode warns at each one; the Python stack
    at the warning names the caller (the innermost frames outside torch)."""

    def __init__(self):
        self.sites: Counter = Counter()
        self._show = None

    def __enter__(self):
        import torch

        self._show = warnings.showwarning
        warnings.showwarning = self._record
        self._filters = warnings.filters[:]
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc):
        import torch

        torch.cuda.set_sync_debug_mode("default")
        warnings.showwarning = self._show
        warnings.filters[:] = self._filters

    def _record(self, message, category, filename, lineno, file=None, line=None):
        if "synchronizing" not in str(message):
            return self._show(message, category, filename, lineno, file, line)
        frames = [f for f in traceback.extract_stack()[:-1]
                  if "/torch/" not in f.filename and not f.filename.endswith(("warnings.py", "profile_steps.py"))]
        self.sites[" <- ".join(f"{Path(f.filename).parent.name}/{Path(f.filename).name}:{f.lineno} {f.name}"
                               for f in reversed(frames[-3:]))] += 1


def _union(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[tuple[float, float]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def summarize(events, wall: float, steps: int, sites: Counter) -> dict:
    """Per-step numbers from the profiler's events (times in microseconds)."""
    from torch.autograd import DeviceType

    device = [e for e in events if e.device_type != DeviceType.CPU]  # kernels, copies, memsets
    host = [e for e in events if e.device_type == DeviceType.CPU]
    busy_spans = _union([(e.time_range.start, e.time_range.end) for e in device])
    start = min((e.time_range.start for e in host), default=0.0)
    end = max([e.time_range.end for e in host] + [s[1] for s in busy_spans], default=start)
    gaps, cursor = [], start
    for span_start, span_end in busy_spans:
        if span_start > cursor:
            gaps.append((cursor, span_start))
        cursor = max(cursor, span_end)
    if end > cursor:
        gaps.append((cursor, end))
    busy = sum(e - s for s, e in busy_spans)
    top = [e for e in host if e.cpu_parent is None]
    idle_by_op: dict[str, float] = defaultdict(float)
    for gap_start, gap_end in gaps:
        covered = 0.0
        for op in top:
            overlap = min(gap_end, op.time_range.end) - max(gap_start, op.time_range.start)
            if overlap > 0:
                idle_by_op[op.name] += overlap
                covered += overlap
        if gap_end - gap_start > covered:
            idle_by_op["(no torch op: Python)"] += gap_end - gap_start - covered
    kernels: dict[str, dict] = {}
    for e in device:
        entry = kernels.setdefault(e.name, {"device_ms_per_step": 0.0, "calls_per_step": 0.0})
        entry["device_ms_per_step"] += (e.time_range.end - e.time_range.start) / 1e3 / steps
        entry["calls_per_step"] += 1 / steps
    cpu_self: Counter = Counter()
    for e in host:
        cpu_self[e.name] += e.self_cpu_time_total / 1e3 / steps
    syncs = Counter(e.name for e in host if e.name in SYNC_OPS)
    return {"steps": steps, "wall_ms_per_step": wall * 1e3 / steps,
            "device_busy_ms_per_step": busy / 1e3 / steps,
            "device_idle_ms_per_step": sum(e - s for s, e in gaps) / 1e3 / steps,
            "idle_while_cpu_in": {k: v / 1e3 / steps for k, v in sorted(idle_by_op.items(), key=lambda kv: -kv[1])[:20]},
            "syncs_per_step": {k: v / steps for k, v in syncs.most_common()},
            "sync_sites_per_step": {k: v / steps for k, v in sites.most_common(20)},
            "cpu_self_ms_per_step": dict(cpu_self.most_common(25)),
            "kernels": dict(sorted(kernels.items(), key=lambda kv: -kv[1]["device_ms_per_step"]))}


def torch_window(out: Path, first: int, last: int) -> _Window:
    import torch

    cuda = torch.cuda.is_available()
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    state: dict = {}

    def start():
        sync()
        state["sites"] = SyncSites().__enter__() if cuda else None
        state["profiler"] = torch.profiler.profile(activities=activities)
        state["profiler"].__enter__()
        state["start"] = time.perf_counter()

    def stop():
        sync()
        wall = time.perf_counter() - state["start"]
        state["profiler"].__exit__(None, None, None)
        sites = state["sites"]
        if sites is not None:
            sites.__exit__(None, None, None)
        result = summarize(state["profiler"].events(), wall, last - first, sites.sites if sites else Counter())
        out.write_text(json.dumps(result, indent=1))

    return _Window(first, last, start, stop)


# ---- cProfile: the Python side --------------------------------------------------------------------------------------

def python_window(out: Path, first: int, last: int) -> _Window:
    import cProfile
    import pstats

    state: dict = {}

    def start():
        state["profile"] = cProfile.Profile()
        state["start"] = time.perf_counter()
        state["profile"].enable()

    def stop():
        state["profile"].disable()
        wall = time.perf_counter() - state["start"]
        steps = last - first
        stats = pstats.Stats(state["profile"]).stats
        rows = []
        for (filename, line, name), (calls, _, tottime, cumtime, _) in stats.items():
            where = "/".join(Path(filename).parts[-2:]) if filename != "~" else "builtin"
            rows.append({"function": f"{where}:{line} {name}", "calls_per_step": calls / steps,
                         "self_ms_per_step": tottime * 1e3 / steps, "total_ms_per_step": cumtime * 1e3 / steps})
        out.write_text(json.dumps({"steps": steps, "wall_ms_per_step": wall * 1e3 / steps,
                                   "by_self_time": sorted(rows, key=lambda r: -r["self_ms_per_step"])[:60],
                                   "by_total_time": sorted(rows, key=lambda r: -r["total_ms_per_step"])[:120]},
                                  indent=1))

    return _Window(first, last, start, stop)


def run(out: Path, steps: str, command: list[str], python: bool = False) -> None:
    first, last = (int(x) for x in steps.split(":"))
    try:
        import unsloth  # noqa: F401  (before transformers, as the profiled commands do)
    except (ImportError, NotImplementedError):
        pass
    _hook((python_window if python else torch_window)(out, first, last))
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


def compare(paths: list[Path], rows: int = 25) -> None:
    sides = [json.loads(p.read_text()) for p in paths]
    names = [p.stem.rsplit("-", 1)[-1][:14] for p in paths]
    print(f"{'per step':58}" + "".join(f"{n:>15}" for n in names))
    for key in ("wall_ms_per_step", "device_busy_ms_per_step", "device_idle_ms_per_step"):
        print(f"{key:58}" + "".join(f"{s.get(key, 0):15.1f}" for s in sides))
    for section, title in (("syncs_per_step", "host-device syncs per step"),
                           ("sync_sites_per_step", "where they come from"),
                           ("idle_while_cpu_in", "GPU idle ms per step, by what the CPU was doing")):
        keys = sorted({k for s in sides for k in s.get(section, {})},
                      key=lambda k: -max(s.get(section, {}).get(k, 0) for s in sides))[:12]
        if keys:
            print(f"\n{title}:")
        for key in keys:
            print(f"  {key[-56:]:56}" + "".join(f"{s.get(section, {}).get(key, 0):15.2f}" for s in sides))

    def ms(side, name):
        return side["kernels"].get(name, {}).get("device_ms_per_step", 0.0)

    kernels = set().union(*(s["kernels"] for s in sides))
    print("\nkernels with the largest difference (device ms per step; calls per step):")
    for name in sorted(kernels, key=lambda n: -(max(ms(s, n) for s in sides) - min(ms(s, n) for s in sides)))[:rows]:
        calls = " / ".join(f"{s['kernels'].get(name, {}).get('calls_per_step', 0):.0f}" for s in sides)
        print(f"  {name[:56]:56}" + "".join(f"{ms(s, name):15.2f}" for s in sides) + f"   {calls}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--compare":
        compare([Path(p) for p in sys.argv[2:]])
        return
    split = sys.argv.index("--")
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--steps", default="5:8", help="FIRST:LAST, profile steps FIRST+1 .. LAST")
    parser.add_argument("--python", action="store_true", help="cProfile the Python side instead")
    args = parser.parse_args(sys.argv[1:split])
    run(Path(args.out).resolve(), args.steps, sys.argv[split + 1:], python=args.python)


if __name__ == "__main__":
    main()
