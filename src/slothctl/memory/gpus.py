"""GPUs to plan for: memory and dense 16-bit tensor throughput, by name.

Memory is what torch reports as total (a little under the marketing size); TFLOP/s are the
vendors' dense (no sparsity) bf16 figures, fp16 for GPUs without bf16 (T4, V100), with fp32
accumulation for the GeForce cards. The CPU entry is a rough figure for a many-core server.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from slothctl.errors import UsageError

GIB = 2**30


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_bytes: int | None  # None: the CPU, whose memory is the machine's RAM
    tflops: float  # dense 16-bit tensor throughput (fp32 for the CPU)
    bf16: bool = True

    @property
    def is_cpu(self) -> bool:
        return self.memory_bytes is None

    def to_dict(self) -> dict:
        return {"name": self.name, "memory_bytes": self.memory_bytes, "tflops": self.tflops, "bf16": self.bf16}


def _gib(x: float) -> int:
    return int(x * GIB)


# name, memory GiB, TFLOP/s, bf16, aliases (matched after dropping case, spaces, dashes and "NVIDIA")
_TABLE: list[tuple[str, float | None, float, bool, tuple[str, ...]]] = [
    ("B200", 178.4, 2250.0, True, ("B200",)),
    ("H200", 139.8, 989.0, True, ("H200", "H200SXM", "H200NVL", "GH200")),
    ("H100-80GB", 79.2, 989.0, True, ("H100", "H100SXM", "H10080GB", "H10080GBHBM3", "H100SXM580GB")),
    ("H100-PCIe", 79.2, 756.0, True, ("H100PCIE", "H100PCIE80GB")),
    ("H100-NVL", 93.1, 835.0, True, ("H100NVL",)),
    ("A100-80GB", 79.2, 312.0, True, ("A10080GB", "A100SXM480GB", "A10080GBPCIE", "A100PCIE80GB")),
    ("A100-40GB", 39.4, 312.0, True, ("A10040GB", "A100SXM440GB", "A100PCIE40GB")),
    ("L40S", 44.4, 362.0, True, ("L40S",)),
    ("L40", 44.4, 181.0, True, ("L40",)),
    ("A6000", 47.4, 155.0, True, ("A6000", "RTXA6000")),
    ("L4", 22.0, 121.0, True, ("L4",)),
    ("A10G", 22.0, 70.0, True, ("A10G",)),
    ("A10", 22.0, 125.0, True, ("A10",)),
    ("RTX 5090", 31.4, 209.0, True, ("RTX5090", "GEFORCERTX5090", "5090")),
    ("RTX 4090", 23.6, 165.0, True, ("RTX4090", "GEFORCERTX4090", "4090")),
    ("RTX 3090", 23.6, 71.0, True, ("RTX3090", "GEFORCERTX3090", "3090")),
    ("V100-32GB", 31.7, 125.0, False, ("V10032GB", "V100SXM232GB", "V100PCIE32GB")),
    ("V100-16GB", 15.8, 125.0, False, ("V10016GB", "V100SXM216GB", "V100PCIE16GB")),
    ("T4", 14.6, 65.0, False, ("T4", "TESLAT4")),
    ("CPU", None, 1.0, True, ("CPU",)),
]
AMBIGUOUS = {"A100": ("A100-40GB", "A100-80GB"), "V100": ("V100-16GB", "V100-32GB")}


def _key(name: str) -> str:
    return re.sub(r"[^A-Z0-9]", "", name.upper().replace("NVIDIA", ""))


def _entry(row) -> Gpu:
    name, memory, tflops, bf16, _ = row
    return Gpu(name, None if memory is None else _gib(memory), tflops, bf16)


def _aliases(name: str) -> tuple[str, ...]:
    return next(row[4] for row in _TABLE if row[0] == name)


def names() -> list[str]:
    return [row[0] for row in _TABLE]


def lookup(name: str) -> Gpu:
    """The table entry for `--gpu NAME` (case, spaces and dashes do not matter). Exit 2 for an unknown name."""
    key = _key(name)
    for row in _TABLE:
        if key == _key(row[0]) or key in row[4]:
            return _entry(row)
    if key in AMBIGUOUS:
        raise UsageError(f"--gpu {name} is ambiguous", f"say which: {', '.join(AMBIGUOUS[key])}")
    raise UsageError(f"unknown GPU `{name}`", f"known: {', '.join(names())}")


def for_device(device_name: str, total_bytes: int) -> Gpu:
    """The GPU that is present, as torch names it, with its measured memory; throughput from the table
    by name (the closest family), else a generic 100 TFLOP/s (an unknown GPU)."""
    key = _key(device_name)
    for family, variants in AMBIGUOUS.items():  # "NVIDIA A100": the variant whose memory is nearest
        if family in key and not any(alias in key for v in variants for alias in _aliases(v)):
            found = min((lookup(v) for v in variants), key=lambda g: abs(g.memory_bytes - total_bytes))
            return Gpu(device_name, total_bytes, found.tflops, found.bf16)
    best = None
    for row in _TABLE[:-1]:
        for alias in (_key(row[0]), *row[4]):
            if alias and alias in key and (best is None or len(alias) > best[0]):
                best = (len(alias), row)
    if best is not None:
        found = _entry(best[1])
        return Gpu(device_name, total_bytes, found.tflops, found.bf16)
    return Gpu(device_name, total_bytes, 100.0)
