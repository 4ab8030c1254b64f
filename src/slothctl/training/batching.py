"""How rows of different lengths share a batch: what the rows' lengths say about it (packing, padding)
and the length-grouped sampler. arguments.py turns [train] packing / batching into a choice with these."""

from __future__ import annotations

from slothctl.backends.device import on_cuda

STRATEGIES = ("padded", "length_grouped", "padding_free", "packed")


def packed_rows(lengths: list[int], seq_length: int) -> int:
    """How many rows TRL's packing (best-fit decreasing, the SFTTrainer default) makes of rows of
    these lengths: TRL's own pack_dataset, run on placeholder tokens."""
    import numpy as np
    import pyarrow as pa
    from datasets import Dataset
    from trl.data_utils import pack_dataset

    offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
    ids = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(np.zeros(int(offsets[-1]), dtype=np.int32)))
    return len(pack_dataset(Dataset(pa.table({"input_ids": ids})), seq_length, "bfd"))


def padding_fraction(lengths: list[int], batch_size: int) -> float:
    """Share of pad tokens when rows of similar length share batches (what length grouping achieves)."""
    ordered = sorted(lengths)
    padded = sum(max(chunk) * len(chunk) for chunk in
                 (ordered[i:i + batch_size] for i in range(0, len(ordered), batch_size)))
    return 1 - sum(ordered) / padded if padded else 0.0


def varlen_attention_available() -> bool:
    """A variable-length attention kernel (FlashAttention) that makes padding-free batches cheap."""
    import importlib.util

    return on_cuda() and importlib.util.find_spec("flash_attn") is not None


def fastest(lengths: list[int] | None, batch_size: int) -> str:
    """What `batching = "auto"` picks: what measured fastest (bench/results, README "Speed"):

    - padding-free where a varlen attention kernel (FlashAttention) is installed;
    - padding-free when the rows are all (nearly) one length, e.g. long texts truncated to
      max_seq_length: there is nothing to pad, and it was 26% faster than padded batches
      (Qwen3-1.7B shape, H200);
    - otherwise padded batches of similar lengths: without a varlen kernel padding-free runs
      attention segment by segment and was 2.2x slower on chat data;
    - on CPU, plain padded batches in shuffled order.
    """
    if varlen_attention_available():
        return "padding_free"
    if not on_cuda():
        return "padded"  # measured on GPUs only; on CPU, the plain shuffled order
    if lengths is not None and len(lengths) and padding_fraction(lengths, batch_size) < 0.02:
        return "padding_free"
    return "length_grouped"


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

    WINDOW = 50

    def __init__(self, lengths: list[int], batch_size: int, seed: int, ranks: int = 1):
        self.lengths, self.batch_size, self.seed, self.epoch, self.ranks = lengths, batch_size, seed, 0, ranks

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def batches(self) -> list[list[int]]:
        import torch

        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        window = self.WINDOW * self.batch_size
        batches = []
        for start in range(0, len(order), window):
            rows = sorted(order[start:start + window], key=self.lengths.__getitem__, reverse=True)
            batches += [rows[i:i + self.batch_size] for i in range(0, len(rows), self.batch_size)]
        full, last = (batches[:-1], batches[-1:]) if len(batches[-1]) < self.batch_size else (batches, [])
        whole = len(full) // self.ranks * self.ranks
        steps = [full[i:i + self.ranks] for i in range(0, whole, self.ranks)]  # a batch for each rank
        shuffled = [batch for i in torch.randperm(len(steps), generator=generator).tolist() for batch in steps[i]]
        return shuffled + full[whole:] + last  # an incomplete step and a short batch stay last, as the loader expects

    def __iter__(self):
        return iter([i for batch in self.batches() for i in batch])
