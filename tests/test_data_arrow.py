"""The flat data path: rows reach the trainer as Arrow memory-mapped from the data cache (never as
Python lists), with the lengths and the data hash that the row-by-row code computed."""

from __future__ import annotations

import hashlib
import json
import random
from array import array
from pathlib import Path

import numpy as np
import pytest

from conftest import make_project, run_python
from data_files import config_for, sharegpt, write_jsonl
from slothctl import config
from slothctl.data import formatted, prepare, split_mask, tables
from slothctl.data.tokenizer import load_text_tokenizer

WORDS = "the sloth hangs in a green tree and sleeps most of the day while rain falls".split()


def rowwise_hash(examples) -> str:
    """The data hash as slothctl computed it row by row, from Python lists (checkpoints carry it)."""
    digest = hashlib.sha256()
    for example in examples:
        digest.update(array("q", example.input_ids).tobytes())
        digest.update(array("q", example.labels).tobytes())
        digest.update(b"|")
    return digest.hexdigest()[:16]


def mapped_ranges(path: str) -> list[tuple[int, int]]:
    """Address ranges at which this process maps `path`."""
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        if line.endswith(path):
            start, end = line.split()[0].split("-")
            ranges.append((int(start, 16), int(end, 16)))
    return ranges


def in_file_mapping(table, path: str) -> bool:
    """Whether every token buffer of the Arrow table lies inside the memory map of `path`."""
    ranges = mapped_ranges(path)
    buffers = [buffer for column in table.columns for chunk in column.chunks
               for buffer in chunk.buffers() if buffer is not None and buffer.size]
    return bool(ranges and buffers) and all(any(a <= b.address and b.address + b.size <= z for a, z in ranges)
                                            for b in buffers)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    """Conversations of varied length (some truncated at 128 tokens), one without a reply, one invalid."""
    rng = random.Random(5)

    def text(low: int, high: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))

    rows = [sharegpt(*[turn for _ in range(rng.randint(1, 2)) for turn in (("human", text(2, 12)),
                                                                             ("gpt", text(1, 40)))])
            for _ in range(40)]
    rows[7] = sharegpt(("human", "no reply"))
    rows[21] = {"conversation": []}
    return write_jsonl(tmp_path_factory.mktemp("arrow") / "chat.jsonl", rows)


def test_lengths_and_hash_from_buffers_equal_the_row_wise_ones(tmp_path, data_file, embedded_model, monkeypatch):
    monkeypatch.setenv("SLOTHCTL_DATA_CACHE", str(tmp_path / "cache"))
    cfg = config_for(data_file, embedded_model, eval_fraction=0.2, max_seq_length=128)
    tok = load_text_tokenizer(str(embedded_model))
    fresh = prepare(cfg, tok)
    kept = np.sort(fresh.row_numbers)  # training rows first, then eval rows: each in source order
    is_eval = split_mask(len(kept), 0.2, cfg.data.seed)
    assert fresh.row_numbers.tolist() == kept[~is_eval].tolist() + kept[is_eval].tolist()
    assert (fresh.train_rows, fresh.eval_rows) == (30, 8) and 8 not in kept and 22 not in kept
    examples = fresh.train
    lengths = [len(e.input_ids) for e in examples]
    assert fresh.train_lengths.tolist() == lengths and max(lengths) == 128 and min(lengths) < 100
    assert fresh.train_hash == rowwise_hash(examples)

    stored, hit = formatted(cfg, tok), formatted(cfg, tok)  # a miss (prepared, stored, mapped), then a hit
    assert (stored.cache["hit"], hit.cache["hit"]) == (False, True)
    for prepared in (stored, hit):
        assert prepared.arrays is None and in_file_mapping(prepared.table, prepared.mapped_file)
        assert prepared.train_lengths.tolist() == lengths and prepared.train_hash == fresh.train_hash
        assert prepared.report == fresh.report and prepared.row_numbers.tolist() == fresh.row_numbers.tolist()
    assert tables.fingerprint(hit.tokens, 0, hit.train_rows) == fresh.train_hash  # recomputed from the file
    assert hit.train == examples and hit.eval == fresh.eval


def test_the_datasets_are_memory_mapped_slices_of_the_cache_file(tmp_path, data_file, embedded_model, monkeypatch):
    from datasets.table import MemoryMappedTable

    monkeypatch.setenv("SLOTHCTL_DATA_CACHE", str(tmp_path / "cache"))
    cfg = config_for(data_file, embedded_model, eval_fraction=0.2, max_seq_length=128)
    tok = load_text_tokenizer(str(embedded_model))
    fresh = prepare(cfg, tok)
    formatted(cfg, tok)  # a miss: stored
    hit = formatted(cfg, tok)
    train, evaluation = hit.dataset("train"), hit.dataset("eval")
    assert hit.mapped_file == str(Path(hit.cache["path"]) / "tokens.arrow")
    for dataset, rows in ((train, fresh.train), (evaluation, fresh.eval)):
        assert isinstance(dataset.data, MemoryMappedTable) and dataset.cache_files == [{"filename": hit.mapped_file}]
        assert in_file_mapping(dataset.data.table, hit.mapped_file)
        assert {name: str(feature) for name, feature in dataset.features.items()} == {
            "input_ids": "List(Value('int32'))", "labels": "List(Value('int32'))"}
        assert len(dataset) == len(rows)
        assert dataset[len(rows) - 1] == {"input_ids": rows[-1].input_ids, "labels": rows[-1].labels}
    assert [train[0]["input_ids"], evaluation[0]["labels"]] == [fresh.train[0].input_ids, fresh.eval[0].labels]
    in_memory = prepare(cfg, tok).dataset("train")  # not cached (e.g. a read-only cache): over the arrays
    assert in_memory.cache_files == [] and in_memory[3] == train[3]
    no_eval = formatted(config_for(data_file, embedded_model, max_seq_length=128), tok)
    assert no_eval.dataset("eval") is None and len(no_eval.dataset("train")) == 38


RECORD_TRAINER = """
import json, os, sys
import transformers
os.environ["SLOTHCTL_DATA_CACHE"] = {cache!r}
original = transformers.Trainer.train
def train(self, *args, **kwargs):  # what the trainer got, recorded as training starts
    sampler = self._get_train_sampler()
    with open({record!r}, "w") as handle:
        json.dump(dict(train_files=self.train_dataset.cache_files, eval_files=self.eval_dataset.cache_files,
                       rows=len(self.train_dataset), sampler=type(sampler).__name__,
                       lengths=[int(n) for n in sampler.lengths]), handle)
    return original(self, *args, **kwargs)
transformers.Trainer.train = train
sys.argv = ["slothctl", "train", "--max-steps", "1", "--json"]
from slothctl.cli.app import main
sys.exit(main())
"""


def test_the_trainer_trains_on_the_cache_file_without_copying_it(tmp_path, embedded_model, monkeypatch):
    """One real step: TRL keeps the memory-mapped datasets as they are (no row-by-row preparation) and
    the length-grouped sampler gets the cached lengths."""
    project = make_project(tmp_path / "proj", "data.eval_fraction=0.1", "train.skip_eval=true",
                           "train.batching=length_grouped", "model.max_seq_length=64")
    cache_dir, record = tmp_path / "cache", tmp_path / "seen.json"
    result = run_python(RECORD_TRAINER.format(cache=str(cache_dir), record=str(record)), cwd=project)
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(record.read_text())
    events = result.json_lines()
    assert events[-1]["event"] == "done" and events[-1]["steps"] == 1

    monkeypatch.setenv("SLOTHCTL_DATA_CACHE", str(cache_dir))
    hit = formatted(config.load(project / "slothctl.toml"), load_text_tokenizer(str(embedded_model)))
    assert hit.cache["hit"] is True  # the entry train wrote
    assert seen["train_files"] == seen["eval_files"] == [{"filename": hit.mapped_file}]
    assert seen["rows"] == hit.train_rows and seen["sampler"] == "LengthGroupedBatches"
    assert seen["lengths"] == hit.train_lengths.tolist()
