"""How rows of different lengths share a batch: what `batching = "auto"` picks and why, measured on
the batches the length-grouped sampler will really form, and the sampler itself. arguments.py turns
[train] packing / batching into a choice with these.

Lengths are any sequence of ints (a list, or a numpy array read from the data cache's offsets).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from slothctl.backends.device import on_cuda

STRATEGIES = ("padded", "length_grouped", "padding_free", "packed")
WINDOW = 50  # batches per sorted window of the length-grouped sampler
ONE_LENGTH = 0.9  # share of batches holding a single length from which rows count as "of one length"


def packed_rows(lengths: Sequence[int], seq_length: int) -> int:
    """How many rows TRL's packing (best-fit decreasing, the SFTTrainer default) makes of rows of
    these lengths: TRL's own pack_dataset, run on placeholder tokens."""
    import pyarrow as pa
    from datasets import Dataset
    from trl.data_utils import pack_dataset

    offsets = np.concatenate([[0], np.cumsum(np.asarray(lengths, dtype=np.int64))])
    ids = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(np.zeros(int(offsets[-1]), dtype=np.int32)))
    return len(pack_dataset(Dataset(pa.table({"input_ids": ids})), seq_length, "bfd"))


# ---- the length-grouped sampler's batches -----------------------------------------------------------------------

def shuffled_order(rows: int, seed: int) -> tuple[np.ndarray, object]:
    """The sampler's random row order for a seed (torch's generator, as the sampler has always used:
    a resumed run rebuilds exactly this order), and the generator to draw the batch order from."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(rows, generator=generator).numpy(), generator


def grouped_order(lengths: np.ndarray, order: np.ndarray, batch_size: int) -> np.ndarray:
    """`order` cut into windows of WINDOW batches, each window sorted by length, longest first (ties
    keep their order): consecutive runs of `batch_size` rows of the result are the batches."""
    window = WINDOW * batch_size
    key = -lengths[order].astype(np.int64)
    full = len(order) // window * window
    ranks = np.argsort(key[:full].reshape(-1, window), axis=1, kind="stable")
    ranks += np.arange(0, full, window, dtype=ranks.dtype)[:, None]
    tail = full + np.argsort(key[full:], kind="stable")
    return order[np.concatenate([ranks.ravel(), tail])]


@dataclass(frozen=True)
class BatchStats:
    """What batches of these rows cost: the pad share of padded batches, and the attention calls
    padding-free batches need without a varlen kernel (one per run of equal lengths in a batch)."""

    batches: int
    padding: float  # share of pad tokens in padded batches
    calls_per_batch: float  # runs of equal length per batch
    one_length: float  # share of batches whose rows all have one length


def batch_stats(lengths: np.ndarray, order: np.ndarray, batch_size: int) -> BatchStats:
    """Per-batch numbers of the batches `order` cut into runs of `batch_size` (vectorised: 100k rows
    take milliseconds)."""
    if len(order) == 0:
        return BatchStats(0, 0.0, 0.0, 1.0)
    sized = lengths[order].astype(np.int64)
    starts = np.arange(0, len(sized), batch_size)
    rows = np.diff(np.append(starts, len(sized)))
    slots = int((np.maximum.reduceat(sized, starts) * rows).sum())
    ordered = _sort_within(sized, batch_size)
    changes = np.concatenate([[0], (ordered[1:] != ordered[:-1]).astype(np.int64)])
    changes[starts] = 0  # a new batch is not a new run inside a batch
    extra_runs = np.add.reduceat(changes, starts)
    return BatchStats(len(starts), 1 - int(sized.sum()) / slots if slots else 0.0,
                      1 + float(extra_runs.mean()), float((extra_runs == 0).mean()))


def _sort_within(values: np.ndarray, batch_size: int) -> np.ndarray:
    """`values` with each run of `batch_size` sorted (so equal lengths in a batch sit together)."""
    full = len(values) // batch_size * batch_size
    return np.concatenate([np.sort(values[:full].reshape(-1, batch_size), axis=1).ravel(), np.sort(values[full:])])


class LengthGroupedBatches:
    """A sampler whose batches hold rows of similar length, in random batch order.

    Rows are shuffled, cut into windows of 50 batches, sorted by length inside each window and cut
    into batches; then the batches are shuffled. (transformers' LengthGroupedSampler keeps each
    window in descending length, so the loss curve follows the lengths.) The order depends only on
    the seed and the epoch (`set_epoch`), so a resumed run sees the same batches.

    On several ranks, accelerate deals the batches out in turn (batch i to rank i % ranks), so the
    batches are shuffled in runs of `ranks` neighbours of similar length: the ranks of one step get
    rows of similar length and none waits long for the others at the gradient exchange.
    """

    WINDOW = WINDOW

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, ranks: int = 1):
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size, self.seed, self.epoch, self.ranks = batch_size, seed, 0, ranks

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def batches(self) -> list[list[int]]:
        import torch

        order, generator = shuffled_order(len(self.lengths), self.seed + self.epoch)
        grouped = grouped_order(self.lengths, order, self.batch_size).tolist()
        batches = [grouped[i:i + self.batch_size] for i in range(0, len(grouped), self.batch_size)]
        if not batches:
            return []
        full, last = (batches[:-1], batches[-1:]) if len(batches[-1]) < self.batch_size else (batches, [])
        whole = len(full) // self.ranks * self.ranks
        steps = [full[i:i + self.ranks] for i in range(0, whole, self.ranks)]  # a batch for each rank
        shuffled = [batch for i in torch.randperm(len(steps), generator=generator).tolist() for batch in steps[i]]
        return shuffled + full[whole:] + last  # an incomplete step and a short batch stay last, as the loader expects

    def __iter__(self):
        return iter([i for batch in self.batches() for i in batch])


# ---- what `auto` picks ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Choice:
    """A batching strategy and the one-line reason `train` reports for it."""

    strategy: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"strategy": self.strategy, "reason": self.reason}


def varlen_attention_available() -> bool:
    """A variable-length attention kernel (FlashAttention) that makes padding-free batches cheap."""
    import importlib.util

    return on_cuda() and importlib.util.find_spec("flash_attn") is not None


def _percent(share: float) -> str:
    return f"{share:.1%}" if share < 0.1 else f"{share:.0%}"


def fastest(lengths: Sequence[int] | None, batch_size: int, seed: int = 3407, cuda: bool | None = None) -> Choice:
    """What `batching = "auto"` picks: what measured fastest (bench/results, README "Speed"), judged on
    the batches the length-grouped sampler forms for this data, seed and batch size in its first
    epoch (not on a global sort of all rows, whose padding shrinks as the dataset grows):

    - padding-free where a varlen attention kernel (FlashAttention) is installed;
    - padded batches, without an attention mask, when the rows really are of one length (e.g. long
      texts truncated to max_seq_length): at least 90% of the grouped batches hold a single length,
      so there is nothing to pad and the batch goes to the model without its all-ones mask
      (trainer.MasklessWhenFull): the plain causal kernel, the path a hand-written loop takes.
      Padding-free batches of such rows went through Unsloth's packed path instead (position ids,
      two host syncs and ~12 ms more GPU work per step on the Qwen3-1.7B shape, H200,
      bench/results/profiles/); padded batches with the mask were 26% slower than padding-free there;
    - otherwise padded batches of similar lengths: without a varlen kernel padding-free runs
      attention once per distinct length in a batch, and was 2.2x slower on chat data;
    - at batch size 1, plain padded batches: one row per batch, nothing to pad or group (padding-free
      would only add its per-row bookkeeping);
    - on CPU, plain padded batches in shuffled order (the speed-ups above were measured on GPUs;
      on CPU attention is a small part of a step).

    `cuda`: decide for a CUDA or CPU run (None: this machine), e.g. to plan for another GPU.
    """
    if not (on_cuda() if cuda is None else cuda):
        return Choice("padded", "on CPU: padded batches in shuffled order (length grouping and "
                                "padding-free were measured faster on GPUs only)")
    if varlen_attention_available():
        return Choice("padding_free", "FlashAttention is installed: rows are concatenated without padding "
                                      "and attended one by one")
    if batch_size == 1:
        return Choice("padded", "batch size 1: one row per batch, nothing to pad or group")
    if lengths is None or len(lengths) == 0:
        return Choice("length_grouped", "padded batches of rows of similar length")
    values = np.asarray(lengths, dtype=np.int64)
    order, _ = shuffled_order(len(values), seed)
    grouped = batch_stats(values, grouped_order(values, order, batch_size), batch_size)
    if grouped.one_length >= ONE_LENGTH:
        return Choice("length_grouped", f"the rows are of one length ({grouped.one_length:.0%} of the batches of "
                                        f"{batch_size} hold a single length): nothing to pad, batches go without "
                                        "an attention mask")
    shuffled = batch_stats(values, order, batch_size)
    return Choice("length_grouped", f"rows of many lengths (padding-free would attend {grouped.calls_per_batch:.1f} "
                                    f"times per batch of {batch_size}): padded batches of similar length, "
                                    f"{_percent(grouped.padding)} padding (shuffled batches: "
                                    f"{_percent(shuffled.padding)})")
