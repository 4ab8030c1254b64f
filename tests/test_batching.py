"""How rows share batches: the strategy `auto` picks, and the length-grouped sampler."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
from conftest import run_cli

from slothctl import config
from slothctl.training import batching
from slothctl.training.arguments import batching_choice
from slothctl.training.batching import LengthGroupedBatches, batch_stats, grouped_order, packed_rows


def cfg_with(**train) -> config.Config:
    return config.build({"model": {"name": "m"}, "data": {"source": "d"}, "train": train}, "test")


def test_auto_is_padded_on_cpu_and_explicit_choices_win():
    assert batching_choice(cfg_with().train, [10, 200, 30]).strategy == "padded"
    assert batching_choice(cfg_with(batching="padding_free").train, [10, 200]).strategy == "padding_free"
    assert batching_choice(cfg_with(packing=True, batching="padded").train, [10]).strategy == "packed"
    assert "packing = true" in batching_choice(cfg_with(packing=True).train, [10]).reason


def test_batch_stats_of_padded_batches():
    same = batch_stats(np.full(9, 2048), np.arange(9), 4)
    assert (same.batches, same.padding, same.calls_per_batch, same.one_length) == (3, 0.0, 1.0, 1.0)
    mixed = batch_stats(np.array([1, 3, 2, 4, 4]), np.arange(5), 2)  # batches (1,3) (2,4) (4)
    assert (mixed.padding, mixed.calls_per_batch, mixed.one_length) == pytest.approx((1 - 14 / 18, 5 / 3, 1 / 3))


# Lengths as a data set of each kind would have them (seeded): chat turns of log-normal length like
# bench/_shared.py's write_chat_rows (median ~280 tokens); long texts all truncated to max_seq_length;
# a mix of short and long rows (two log-normal modes).
def chat(n: int, rng) -> np.ndarray:
    return np.exp(rng.normal(np.log(279), 0.8, n)).astype(np.int64).clip(40, 2048)


def at_max_length(n: int, rng) -> np.ndarray:
    return np.full(n, 2048)


def bimodal(n: int, rng) -> np.ndarray:
    short = rng.random(n) < 0.5
    return np.where(short, np.exp(rng.normal(np.log(120), 0.3, n)),
                    np.exp(rng.normal(np.log(1200), 0.3, n))).astype(np.int64).clip(20, 2048)


def nearly_all_at_max_length(n: int, rng) -> np.ndarray:
    lengths = np.full(n, 2048)
    short = rng.choice(n, n // 100, replace=False)
    lengths[short] = rng.integers(100, 2000, len(short))
    return lengths


@pytest.fixture
def on_gpu_without_varlen(monkeypatch):
    monkeypatch.setattr(batching, "on_cuda", lambda: True)
    monkeypatch.setattr(batching, "varlen_attention_available", lambda: False)


# (strategy, how the reason starts): rows of one length are padded too, but nothing is padded (no mask)
EXPECTED = {chat: ("length_grouped", "rows of many lengths"), at_max_length: ("length_grouped", "the rows are of one"),
            bimodal: ("length_grouped", "rows of many lengths")}


@pytest.mark.parametrize("rows", [100, 1_000, 10_000, 100_000])
@pytest.mark.parametrize("kind", list(EXPECTED), ids=lambda f: f.__name__)
def test_auto_on_a_gpu_decides_from_the_batches_at_every_size(on_gpu_without_varlen, kind, rows):
    """The same data picks the same strategy at 100 and at 100,000 rows (a global sort of all rows
    used to predict less padding the more rows there were, and picked padding-free from ~1k chat rows)."""
    lengths = kind(rows, np.random.default_rng(rows))
    for batch_size in (1, 2, 8, 32):
        choice = batching.fastest(lengths, batch_size, seed=3407)
        expected, reason = ("padded", "batch size 1") if batch_size == 1 else EXPECTED[kind]
        assert choice.strategy == expected and choice.reason.startswith(reason), (kind.__name__, rows, batch_size,
                                                                                  choice)
        assert choice.reason and "\n" not in choice.reason


def test_auto_on_a_gpu_explains_itself(on_gpu_without_varlen, monkeypatch):
    rng = np.random.default_rng(0)
    grouped = batching.fastest(chat(10_000, rng), 8)
    assert grouped.reason.startswith("rows of many lengths") and "4.6% padding" in grouped.reason, grouped
    assert "(shuffled batches: 60%)" in grouped.reason
    one_length = batching.fastest(nearly_all_at_max_length(10_000, rng), 8)
    assert one_length.strategy == "length_grouped", one_length  # padded, and without a mask where nothing is padded
    assert one_length.reason.startswith("the rows are of one length (") and "without an attention mask" in one_length.reason
    assert batching.fastest(list(chat(50, rng)), 8).strategy == "length_grouped"  # a plain list works too
    monkeypatch.setattr(batching, "varlen_attention_available", lambda: True)
    assert batching.fastest(chat(1_000, rng), 8).strategy == "padding_free"


def test_the_choice_is_quick_at_100k_rows(on_gpu_without_varlen):
    import time

    lengths = chat(100_000, np.random.default_rng(1))
    batching.fastest(lengths[:10], 8)  # torch imported
    started = time.perf_counter()
    batching.fastest(lengths, 8)
    assert time.perf_counter() - started < 2.0  # ~0.1 s on a busy 2-core machine


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
    assert LengthGroupedBatches(np.array(lengths), 8, 3407).batches() == batches  # lengths from the cache
    sampler.set_epoch(1)
    assert sampler.batches() != batches


def test_length_grouped_batches_are_what_they_always_were():
    """The sampler was rewritten with numpy: a run resumed across the change sees the same batches."""
    import torch

    def reference(lengths, batch_size, seed):  # the Python version it replaced
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(lengths), generator=generator).tolist()
        batches, window = [], 50 * batch_size
        for start in range(0, len(order), window):
            rows = sorted(order[start:start + window], key=lengths.__getitem__, reverse=True)
            batches += [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]
        full, last = (batches[:-1], batches[-1:]) if len(batches[-1]) < batch_size else (batches, [])
        return [full[i] for i in torch.randperm(len(full), generator=generator).tolist()] + last

    rng = random.Random(1)
    for rows in (1, 7, 401, 1003):
        for batch_size in (1, 3, 8):
            lengths = [rng.choice([5, 10, 10, 2048, rng.randint(1, 3000)]) for _ in range(rows)]
            assert LengthGroupedBatches(lengths, batch_size, 3407).batches() == reference(lengths, batch_size, 3407)
    grouped = grouped_order(np.array([3, 1, 2]), np.array([2, 0, 1]), 2)
    assert grouped.tolist() == [0, 2, 1]  # one window, longest first


def test_packed_rows_match_trls_best_fit_decreasing():
    assert packed_rows([2048] * 5, 2048) == 5
    assert packed_rows([1000, 1000, 40, 8], 2048) == 1  # exactly 2048
    assert packed_rows([1000, 1000, 49], 2048) == 2
    assert packed_rows([700, 700, 700, 600, 600, 600], 2048) == 2  # 700+700+600 and 700+600+600
    assert packed_rows([1100, 1000, 1050], 2048) == 3  # no two fit together (1050 + 1000 = 2050)


@pytest.mark.slow  # not in CI (./scripts/test -m slow runs these)
def test_one_epoch_of_packed_rows_trains_one_epoch(project):
    """With packing, the planned steps count packed rows: one epoch ends at epoch 1.0, not ~4."""
    result = run_cli("train", "--json", "--set", "train.packing=true", "--set", "data.max_rows=48",
                     "--set", "train.epochs=1", "--set", "train.max_steps=0", cwd=project)
    assert result.returncode == 0, result.stderr[-3000:]
    events = result.json_lines()
    steps = [e for e in events if e["event"] == "step"]
    start = next(e for e in events if e["event"] == "start")
    assert start["batching"] == {"strategy": "packed", "reason": "[train] packing = true: rows packed into full "
                                                                  "sequences"}  # train says what it chose, and why
    assert any(e["event"] == "status" and e["message"].startswith("Batching packed: ") for e in events)
    summary = json.loads((project / "runs" / "proj" / "summary.json").read_text())
    assert steps[-1]["total_steps"] == summary["steps"] == len(steps) < 48 / 4  # 48 short rows pack into few
    assert abs(steps[-1]["epoch"] - 1.0) < 1e-6, steps[-1]
    assert all(math.isfinite(e["loss"]) for e in steps)
