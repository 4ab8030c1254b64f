"""How many tokens a micro-batch holds, for memory (the largest one) and for time (the mean one).

Rows of different lengths are batched the way slothctl's batching strategies do it (see
training/batching.py): padded in shuffled order, padded after grouping similar lengths,
padding-free (rows concatenated, attention per row) or packed into full sequences.
"""

from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass

STRATEGIES = ("padded", "length_grouped", "padding_free", "packed")
GROUP_WINDOW = 50  # batches per sorted window, as LengthGroupedBatches


@dataclass(frozen=True)
class TokenLoad:
    """One micro-batch. `peak_*` describe the largest one an epoch will meet, `mean_*` an average one."""

    peak_tokens: int  # positions, padding included: what stored activations scale with
    peak_rows: int  # rows (sequences) in it
    peak_row_length: int  # its longest row (padded batches: every row's length)
    mean_tokens: float  # positions computed, padding included
    mean_real_tokens: float  # tokens of the data
    mean_attention_pairs: float  # causal (query, key) pairs: attention FLOPs scale with these

    @property
    def padding_fraction(self) -> float:
        return 1 - self.mean_real_tokens / self.mean_tokens if self.mean_tokens else 0.0


def _pairs(length: int) -> int:
    return length * (length + 1) // 2


def token_load(micro_batch: int, seq_len: int, batching: str = "padded",
               lengths: tuple[int, ...] | None = None, seed: int = 3407) -> TokenLoad:
    """`lengths`: tokens of every training row (None: every row fills seq_len)."""
    if batching not in STRATEGIES:
        raise ValueError(f"batching must be one of {STRATEGIES}, not {batching!r}")
    if not lengths:
        tokens = micro_batch * seq_len
        return TokenLoad(tokens, micro_batch, seq_len, tokens, tokens, micro_batch * _pairs(seq_len))
    return _measured_load(micro_batch, seq_len, batching, tuple(lengths), seed)


@functools.lru_cache(maxsize=64)
def _measured_load(m: int, seq_len: int, batching: str, lengths: tuple[int, ...], seed: int) -> TokenLoad:
    clipped = [min(max(1, n), seq_len) for n in lengths]
    mean_len = sum(clipped) / len(clipped)
    pairs_per_row = sum(_pairs(n) for n in clipped) / len(clipped)
    longest = max(clipped)
    if batching == "padding_free":
        top = sum(sorted(clipped, reverse=True)[:m])
        return TokenLoad(top, min(m, len(clipped)), longest, m * mean_len, m * mean_len, m * pairs_per_row)
    if batching == "packed":
        total = sum(clipped)
        fill = total / (math.ceil(total / seq_len) * seq_len)
        real = m * seq_len * fill
        return TokenLoad(m * seq_len, m, seq_len, m * seq_len, real, real * pairs_per_row / mean_len)
    order = list(range(len(clipped)))
    random.Random(seed).shuffle(order)
    if batching == "length_grouped":
        window = GROUP_WINDOW * m
        grouped: list[int] = []
        for start in range(0, len(order), window):
            grouped += sorted(order[start:start + window], key=clipped.__getitem__, reverse=True)
        order = grouped
    batch_max = [max(clipped[i] for i in order[s:s + m]) for s in range(0, len(order) - m + 1, m)] or [longest]
    mean_max = sum(batch_max) / len(batch_max)
    mean_pairs = m * sum(_pairs(n) for n in batch_max) / len(batch_max)
    rows = min(m, len(clipped))
    return TokenLoad(rows * longest, rows, longest, m * mean_max, m * mean_len, mean_pairs)
