"""One run on several data-parallel ranks (torchrun, DDP): who this process is, and the few points
where the ranks of a run must agree.

Under torchrun every rank runs the same `slothctl train`; the HF Trainer (through accelerate) wraps
the model in DistributedDataParallel and gives each rank a disjoint share of every global batch
(batch_size x gradient_accumulation_steps x ranks). What slothctl adds, all no-ops on one rank:

    start()          the process group (gloo on CPU, NCCL on CUDA), this rank's GPU, and a small gloo
                     group for coordination; the rank dies with its launcher (Linux)
    is_main()        rank 0: the one that plans the run, writes the run folder and reports events
    main_first(fn)   caches (model download or conversion, the formatted data) filled by the first
                     rank of each host while the others wait, then read by them
    from_main(fn)    a decision taken by rank 0 (the run plan) and handed to every rank
    any_rank(flag)   a stop request seen by any rank stops all of them after the same step
    total(n)         a count summed over the ranks (trained tokens)

Signals: in a rank, SIGINT asks for a clean stop (the launcher forwards the user's Ctrl-C to every
rank through torchrun) and SIGTERM stops at once: torchrun sends it to the other ranks when one
fails, and they cannot finish a step without it.

Failures: a rank started by slothctl's launcher (launcher.py) writes its error line to
$SLOTHCTL_RANK_FAILURES/rank-<N>.json, so the launcher can say which rank failed and why.

Only os and json are imported at the top: the CLI asks `world_size()` before anything heavy.
"""

from __future__ import annotations

import json
import os
import signal
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, TypeVar

T = TypeVar("T")

FAILURES_ENV = "SLOTHCTL_RANK_FAILURES"
# The coordination group waits for rank 0's model download and data preparation, which can take
# hours on a slow link; a rank that dies is noticed by torchrun, which stops the others, not by this.
COORDINATION_TIMEOUT = timedelta(hours=12)

_coordination = None  # the gloo group of start()


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def distributed() -> bool:
    return world_size() > 1


def is_main() -> bool:
    return rank() == 0


def stop_signals() -> tuple[signal.Signals, ...]:
    """The signals that ask training for a clean stop: SIGINT and SIGTERM on one rank; SIGINT alone
    on several (SIGTERM is torchrun stopping the survivors of a failed rank: at once)."""
    return (signal.SIGINT,) if distributed() else (signal.SIGINT, signal.SIGTERM)


def die_with_parent() -> None:
    """Linux: this process gets SIGKILL when its parent dies (prctl PR_SET_PDEATHSIG), so the ranks of
    a launcher killed with kill -9 do not train on as orphans. Elsewhere, nothing."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        return
    if os.getppid() == 1:  # the parent died before the call: nobody is left to wait for this process
        os._exit(1)


def start() -> None:
    """Join the run's process group (once per process): NCCL on CUDA (this rank's GPU = LOCAL_RANK),
    gloo on CPU, plus a gloo group for coordination (CPU-side flags and objects, long timeout)."""
    global _coordination
    if not distributed() or _coordination is not None:
        return
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank())
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    _coordination = dist.new_group(backend="gloo", timeout=COORDINATION_TIMEOUT)
    if not torch.cuda.is_available():
        # A resumed optimizer is loaded onto args.device, which accelerate calls `cpu:0` on several CPU
        # ranks; torch.load knows only `cpu`. This lets it read `cpu:N` as the CPU (public torch API).
        torch.serialization.register_package(
            100, lambda storage: None, lambda storage, location: storage if location.startswith("cpu:") else None)


def _group():
    start()
    return _coordination


def barrier() -> None:
    if distributed():
        import torch.distributed as dist

        dist.barrier(group=_group())


def main_first(fn: Callable[[], T]) -> T:
    """`fn()` on the first rank of each host, then on the others: what it caches (the model, the
    formatted data) is prepared once per host and read from the cache by the other ranks."""
    if not distributed():
        return fn()
    first = local_rank() == 0
    result = fn() if first else None
    barrier()
    return result if first else fn()


def from_main(fn: Callable[[], T]) -> T:
    """`fn()` on rank 0, its result handed to every rank (it must pickle). When rank 0 fails, the
    others wait here until torchrun stops them."""
    if not distributed():
        return fn()
    import torch.distributed as dist

    box = [fn() if is_main() else None]
    dist.broadcast_object_list(box, src=0, group=_group())
    return box[0]


def any_rank(flag: bool) -> bool:
    """True on every rank when it is true on any: every rank must stop after the same step."""
    if not distributed():
        return flag
    return total(int(flag)) > 0


def total(count: int) -> int:
    """`count` summed over the ranks (every rank must call it at the same point)."""
    if not distributed():
        return count
    import torch
    import torch.distributed as dist

    value = torch.tensor([count], dtype=torch.int64)
    dist.all_reduce(value, group=_group())
    return int(value.item())


# ---- what the ranks tell the user ----------------------------------------------------------------------------------

def global_batch(batch_size: int, accumulation: int, ranks: int | None = None) -> dict[str, int]:
    ranks = world_size() if ranks is None else ranks
    return {"world_size": ranks, "global_batch": batch_size * accumulation * ranks}


def describe(batch_size: int, accumulation: int) -> str:
    """`2 ranks, global batch 16 = 2 x 4 x 2` (micro-batch x accumulation x ranks); empty on one rank."""
    if not distributed():
        return ""
    ranks = world_size()
    return f"{ranks} ranks, global batch {batch_size * accumulation * ranks} = {batch_size} x {accumulation} x {ranks}"


def changed_world_size(checkpoint: str, info: dict[str, Any], batch_size: int, accumulation: int) -> str | None:
    """The warning for a checkpoint written by another number of ranks: the global batch changes, so
    the rest of the run differs from one continued on the same number (and sees the data in another order)."""
    before, now = int(info.get("world_size") or 1), world_size()
    if before == now:
        return None
    per_rank = batch_size * accumulation
    return (f"{checkpoint} was written by {before} rank{'s' * (before > 1)} (global batch {per_rank * before}); "
            f"this run has {now} (global batch {per_rank * now}): the rest of the run differs from one "
            f"continued on {before}, and the data order is not continued exactly")


def record_failure(line: str, exit_code: int, hint: str | None = None) -> None:
    """This rank's error line (and hint) for slothctl's launcher (when it started this rank)."""
    folder = os.environ.get(FAILURES_ENV)
    if not folder or not distributed():
        return
    try:
        Path(folder, f"rank-{rank()}.json").write_text(json.dumps(
            {"rank": rank(), "message": line, "hint": hint, "exit_code": exit_code, "time": time.time()}), encoding="utf-8")
    except OSError:
        pass
