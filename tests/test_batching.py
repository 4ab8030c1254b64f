"""How rows share batches: the strategy `auto` picks, and the length-grouped sampler."""

from __future__ import annotations

import random

from slothctl import config
from slothctl.backends.common import LengthGroupedBatches, batching_strategy, padding_fraction


def cfg_with(**train) -> config.Config:
    return config.build({"model": {"name": "m"}, "data": {"source": "d"}, "train": train}, "test")


def test_auto_is_padded_on_cpu_and_explicit_choices_win():
    assert batching_strategy(cfg_with(), [10, 200, 30]) == "padded"
    assert batching_strategy(cfg_with(batching="padding_free"), [10, 200]) == "padding_free"
    assert batching_strategy(cfg_with(packing=True, batching="padded"), [10]) == "packed"


def test_padding_fraction_of_grouped_batches():
    assert padding_fraction([2048] * 9, 4) == 0.0
    assert padding_fraction([1, 3, 2, 4], 2) == 1 - 10 / 12  # batches (1,2) and (3,4): 2x2 + 2x4 slots


def test_length_grouped_batches_are_similar_shuffled_complete_and_seeded():
    rng = random.Random(0)
    lengths = [rng.randint(10, 2000) for _ in range(1003)]
    sampler = LengthGroupedBatches(lengths, batch_size=8, seed=3407)
    batches = sampler.batches()
    assert sorted(i for b in batches for i in b) == list(range(1003))
    assert all(len(b) == 8 for b in batches[:-1]) and len(batches[-1]) == 1003 % 8
    grouped = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    assert 1 - sum(lengths) / grouped < 0.05  # random batches would pad ~45%
    firsts = [max(lengths[i] for i in b) for b in batches[:50]]
    assert firsts != sorted(firsts, reverse=True)  # not one long-to-short sweep
    assert LengthGroupedBatches(lengths, 8, 3407).batches() == batches  # same seed, same epoch: same order
    sampler.set_epoch(1)
    assert sampler.batches() != batches
