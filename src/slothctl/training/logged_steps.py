"""A logged step's numbers on their way from the GPU to the host, read a step later without waiting
(trainer.py says why), and the clock that turns the GPU's timing events into wall times."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any


@dataclass
class LoggedStep:
    """A logged step whose numbers are on their way from the device."""

    step: int
    epoch: float | None
    steps: int  # optimizer steps the loss sums over
    learning_rate: float | None
    values: Any  # float64 tensor on the host (pinned): loss sum, then gradient norm and tokens where on the device
    on_host: dict  # gradient norm and tokens that were host numbers already
    arrived: Any  # CUDA event after the copy; None on CPU
    ended: Any  # CUDA timing event at the step's end; on CPU the wall time

    @classmethod
    def queue(cls, tr_loss, grad_norm, tokens, *, step: int, epoch, steps: int, learning_rate) -> LoggedStep:
        import torch

        on_device, on_host = [tr_loss.detach()], {}
        for name, value in (("grad_norm", grad_norm), ("tokens", tokens)):
            if isinstance(value, torch.Tensor):
                on_device.append(value.detach())
            else:
                on_host[name] = value
        stacked = torch.stack([v.to(torch.float64).reshape(()) for v in on_device])
        if stacked.is_cuda:
            values = stacked.to("cpu", non_blocking=True)  # into pinned memory, without waiting
            arrived, ended = torch.cuda.Event(), torch.cuda.Event(enable_timing=True)
            arrived.record()
            ended.record()
        else:
            values, arrived, ended = stacked, None, time.time()
        return cls(step, epoch, steps, learning_rate, values, on_host, arrived, ended)

    def read(self, clock: Clock) -> tuple[dict[str, float], float, float, int]:
        """The logs transformers would write for this step, the loss summed over its steps, when it
        ended (wall time) and the real tokens trained through it."""
        if self.arrived is not None:
            self.arrived.synchronize()  # returns at once when read a step later
        values = iter(self.values.tolist())
        loss_sum = next(values)
        grad_norm = next(values) if "grad_norm" not in self.on_host else self.on_host["grad_norm"]
        tokens = next(values) if "tokens" not in self.on_host else self.on_host["tokens"]
        logs: dict[str, float] = {"loss": loss_sum / self.steps}
        if grad_norm is not None:
            logs["grad_norm"] = grad_norm
        if self.learning_rate is not None:
            logs["learning_rate"] = self.learning_rate
        return logs, loss_sum, clock.wall(self.ended), int(tokens)


class Clock:
    """Wall times of step ends measured on the GPU: a CUDA event recorded at the first micro-step
    anchors the events recorded at step ends to the wall clock."""

    def __init__(self):
        self.origin = None  # (wall time, CUDA event)

    def start(self) -> None:
        import torch

        if self.origin is None and torch.cuda.is_available():
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.origin = (time.time(), event)

    def wall(self, ended) -> float:
        if isinstance(ended, float) or self.origin is None:
            return float(ended) if isinstance(ended, float) else time.time()
        started, event = self.origin
        return started + event.elapsed_time(ended) / 1e3
