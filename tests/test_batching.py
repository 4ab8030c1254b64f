"""How rows share batches: the strategy `auto` picks, and the length-grouped sampler."""

from __future__ import annotations

import json
import math
import random

from conftest import run_cli

from slothctl import config
from slothctl.training.arguments import batching_strategy
from slothctl.training.batching import LengthGroupedBatches, packed_rows, padding_fraction


def cfg_with(**train) -> config.Config:
    return config.build({"model": {"name": "m"}, "data": {"source": "d"}, "train": train}, "test")


def test_auto_is_padded_on_cpu_and_explicit_choices_win():
    assert batching_strategy(cfg_with().train, [10, 200, 30]) == "padded"
    assert batching_strategy(cfg_with(batching="padding_free").train, [10, 200]) == "padding_free"
    assert batching_strategy(cfg_with(packing=True, batching="padded").train, [10]) == "packed"


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


def test_packed_rows_match_trls_best_fit_decreasing():
    assert packed_rows([2048] * 5, 2048) == 5
    assert packed_rows([1000, 1000, 40, 8], 2048) == 1  # exactly 2048
    assert packed_rows([1000, 1000, 49], 2048) == 2
    assert packed_rows([700, 700, 700, 600, 600, 600], 2048) == 2  # 700+700+600 and 700+600+600
    assert packed_rows([1100, 1000, 1050], 2048) == 3  # no two fit together (1050 + 1000 = 2050)


def test_one_epoch_of_packed_rows_trains_one_epoch(project):
    """With packing, the planned steps count packed rows: one epoch ends at epoch 1.0, not ~4."""
    result = run_cli("train", "--json", "--set", "train.packing=true", "--set", "data.max_rows=48",
                     "--set", "train.epochs=1", "--set", "train.max_steps=0", cwd=project)
    assert result.returncode == 0, result.stderr[-3000:]
    steps = [e for e in result.json_lines() if e["event"] == "step"]
    summary = json.loads((project / "runs" / "proj" / "summary.json").read_text())
    assert steps[-1]["total_steps"] == summary["steps"] == len(steps) < 48 / 4  # 48 short rows pack into few
    assert abs(steps[-1]["epoch"] - 1.0) < 1e-6, steps[-1]
    assert all(math.isfinite(e["loss"]) for e in steps)
