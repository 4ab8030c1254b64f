"""The data pipeline: source rows → standard messages → chat template → tokens + loss mask → split.

`prepare` is what `data inspect` reports on, what `data format` caches and what `train` trains on,
so what is inspected is what is trained.

Rows that cannot be used are dropped and counted, never silently: rows that do not fit the format
or are empty (`invalid`) and rows with nothing to train on (`no_trained_tokens`); `strict` turns
them into an error. Problems of the whole dataset are errors right away: an unknown role name, a
chat template that cannot render a row, no usable row at all.
"""

from __future__ import annotations

import math
import os
import random
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from slothctl import interrupts
from slothctl.config import Config
from slothctl.data import formats, tables
from slothctl.data.encode import Encoded, Segmenter, TemplateFailure, Tokenized, tokenize
from slothctl.data.report import Problem, build_report
from slothctl.data.sources import Rows, read_source, resolve_source
from slothctl.data.templates import (ChatTemplate, choose_for_text_tokenizer, pad_for, system_turns,
                                     template_or_none_for_text)
from slothctl.data.tokenizer import FAST_ENGINE_MIN_ROWS, TextTokenizer
from slothctl.errors import DataError
from slothctl.events import Emit, ignore, status, warning

CHUNK = 2048  # rows tokenized per batch call
IN_FLIGHT = 2  # chunks being tokenized at once (_encode_in_process)


@dataclass
class Prepared:
    """The tokenized dataset: the kept rows (training rows first, then eval rows, each group in
    source order), the split, and the report about all rows.

    The rows are held either as flat numpy arrays (`arrays`: just prepared) or as the data cache's
    memory-mapped Arrow table (`mapped`: read from the cache); `tokens` and `table` derive one from
    the other only when asked. What the trainer needs (`dataset`, `train_lengths`, `train_hash`)
    never turns rows into Python objects.
    """

    source: str
    format: str
    detection: str
    template: ChatTemplate | None
    rows: int
    row_numbers: np.ndarray  # 1-based source row of each kept row
    is_eval: np.ndarray  # per kept row: False for the first `train_rows` rows, True for the rest
    full_lengths: np.ndarray  # per kept row, tokens before truncation
    invalid: list[Problem]
    no_trained_tokens: list[Problem]
    report: dict
    arrays: Tokenized | None = field(default=None, repr=False)
    mapped: Any = field(default=None, repr=False)  # pyarrow.Table memory-mapped from `mapped_file`
    mapped_file: str | None = None
    stored_train_hash: str | None = None  # the cache stores it, so a hit reads no token to resume
    cache: dict | None = field(default=None)  # {"key", "path", "hit"} once cached
    fingerprint: dict = field(default_factory=dict)  # of the source as read (not cached)
    origins: list[str] = field(default_factory=list)  # of every source row (not cached)
    suspects: list[DataError] = field(default_factory=list)  # the source read, but maybe not as meant (cached:
    # a cache hit warns again, and refuses under strict, as reading the source did)

    @property
    def truncated(self) -> int:
        return self.report["truncated"]

    @property
    def train_rows(self) -> int:
        return int(np.count_nonzero(~self.is_eval))

    @property
    def eval_rows(self) -> int:
        return len(self.is_eval) - self.train_rows

    @property
    def tokens(self) -> Tokenized:
        """The kept rows as flat arrays (copied out of the cache file when read from there)."""
        if self.arrays is None:
            self.arrays = tables.to_tokenized(self.mapped, self.full_lengths)
        return self.arrays

    @property
    def table(self):
        """The kept rows as an Arrow table with input_ids and labels (see tables.py)."""
        if self.mapped is None:
            self.mapped = tables.to_table(self.arrays)
        return self.mapped

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Kept row i's token ids and trained flags, without copying the other rows out of the cache."""
        if self.arrays is not None:
            start, end = self.arrays.offsets[i], self.arrays.offsets[i + 1]
            return self.arrays.ids[start:end], self.arrays.trained[start:end]
        one = tables.to_tokenized(self.mapped.slice(i, 1), self.full_lengths[i:i + 1])
        return one.ids, one.trained

    @cached_property
    def lengths(self) -> np.ndarray:
        """Tokens per kept row (after truncation), from offsets only."""
        return self.arrays.lengths if self.arrays is not None else tables.row_lengths(self.mapped)

    @property
    def train_lengths(self) -> np.ndarray:
        """Tokens per training row: what batching and the step plan go by."""
        return self.lengths[: self.train_rows]

    @cached_property
    def train_hash(self) -> str:
        """The fingerprint of the training rows that a checkpoint records (tables.fingerprint)."""
        if self.stored_train_hash:
            return self.stored_train_hash
        return tables.fingerprint(self.tokens, 0, self.train_rows)

    def dataset(self, split: str):
        """The rows of one split ("train" or "eval") as a `datasets.Dataset` with input_ids and
        labels, or None when the split is empty. Memory-mapped from the cache file when the rows
        came from the cache, else over the in-memory arrays; a contiguous slice either way."""
        import datasets

        start, stop = (0, self.train_rows) if split == "train" else (self.train_rows, len(self.is_eval))
        if stop == start:
            return None
        # What the trainer derives from it (TRL's packing maps it) goes to temporary files, never
        # into the cache entry, whose folder holds exactly the files its manifest lists.
        datasets.disable_caching()
        whole = datasets.Dataset.from_file(self.mapped_file) if self.mapped_file else datasets.Dataset(self.table)
        return whole if (start, stop) == (0, len(whole)) else whole.select(range(start, stop))

    @property
    def train(self) -> list[Encoded]:
        """Training rows as Python lists: for small data and tests only (the trainer uses `dataset`)."""
        return [self.tokens.example(i) for i in range(self.train_rows)]

    @property
    def eval(self) -> list[Encoded]:
        """Eval rows as Python lists: for small data and tests only."""
        return [self.tokens.example(i) for i in range(self.train_rows, len(self.is_eval))]

    def source_order(self) -> np.ndarray:
        """Kept-row positions in source order (for showing rows as the file has them)."""
        return np.argsort(self.row_numbers, kind="stable")


def load_rows(cfg: Config, emit: Emit = ignore, strict: bool = False) -> Rows:
    """The source's rows with [data] max_rows and columns applied; an empty dataset is an error, and
    so, with `strict`, is a file that was probably not read as meant (else a warning)."""
    data = cfg.data
    rows = read_source(data.source, cfg.project_dir, data.subset, data.split)
    report_suspects(rows.suspects, strict, emit)
    if rows.skipped:
        shown = ", ".join(rows.skipped[:5]) + (f" and {len(rows.skipped) - 5} more" if len(rows.skipped) > 5 else "")
        warning(emit, f"skipped files that are not data: {shown}")
    if data.max_rows:
        rows.rows, rows.origin = rows.rows[: data.max_rows], rows.origin[: data.max_rows]
    if not rows.rows:
        raise DataError(f"the dataset {data.source} is empty (no rows)",
                        "check the file, or [data] split/subset for a hub dataset")
    formats.rename_columns(rows.rows, data.columns, where=str(resolve_source(data.source, cfg.project_dir)))
    return rows


def report_suspects(suspects: list[DataError], strict: bool, emit: Emit) -> None:
    """A source that was read, but maybe not as meant: a warning each, or with `strict` the first as the
    error. Said when the source is read, and again on a cache hit (the entry stores them)."""
    for suspect in suspects:
        if strict:
            raise suspect
        warning(emit, suspect.one_line())


def select_template(cfg: Config, tok: TextTokenizer) -> ChatTemplate:
    return choose_for_text_tokenizer(cfg.data.chat_template, tok)


def split_mask(n: int, eval_fraction: float, seed: int) -> np.ndarray:
    """Deterministic train/eval split: the same seed and rows give the same split everywhere."""
    is_eval = np.zeros(n, dtype=bool)
    if eval_fraction <= 0 or n < 2:
        return is_eval
    order = list(range(n))
    random.Random(seed).shuffle(order)
    is_eval[order[: max(1, round(n * eval_fraction))]] = True
    return is_eval


@dataclass
class _Chunk:
    tokens: Tokenized | None
    row_numbers: list[int]
    problems: list[Problem]
    roles: Counter
    turns: list[int]
    keys: list[int]  # a hash of each valid row's standard form, to find exact duplicates
    checked: int = 0  # rows a data worker's fast engine checked against `tokenizers` (fast_bpe.py)...
    disagreement: str | None = None  # ...and where the two differed


@dataclass
class _Work:
    rows: list[dict]
    origin: list[str]
    format: str
    segmenter: Segmenter
    tok: TextTokenizer
    max_length: int


_WORK: _Work | None = None  # what forked workers read (inherited, never pickled)


def _segment_range(work: _Work, start: int, stop: int) -> tuple[_Chunk, list]:
    """Standardise and cut rows start..stop-1 (the Python half of the work)."""
    batch, numbers, problems, roles, turns, keys = [], [], [], Counter(), [], []
    standardise, segmenter = formats.standardise, work.segmenter
    for i in range(start, stop):
        try:
            standard = standardise(work.format, work.rows[i])
            if isinstance(standard, str):
                segments = segmenter.text(standard)
                keys.append(hash(standard))
            else:
                segments = segmenter.conversation(standard)
                pairs = tuple((m["role"], m["content"]) for m in standard)
                roles.update(role for role, _ in pairs)
                turns.append(len(pairs))
                keys.append(hash(pairs))
        except (formats.UnknownRole, TemplateFailure) as exc:
            hint = ("fix or remove the row, or choose another [data] chat_template" if isinstance(exc, TemplateFailure)
                    else "fix the row, or rename the role in the data")
            raise DataError(f"{work.origin[i]} (row {i + 1}): {exc}", hint) from None
        except formats.RowError as exc:
            problems.append(Problem(i + 1, work.origin[i], str(exc)))
            continue
        batch.append(segments)
        numbers.append(i + 1)
    return _Chunk(None, numbers, problems, roles, turns, keys), batch


def _tokenize_into(chunk: _Chunk, batch: list, work: _Work) -> _Chunk:
    chunk.tokens = tokenize(batch, work.tok, work.max_length)
    return chunk


def _encode_in_worker(bounds: tuple[int, int]) -> _Chunk | tuple[str, str | None]:
    engine = _WORK.tok.fast_engine[0]
    checked = engine.rows_checked if engine else 0
    try:
        chunk = _tokenize_into(*_segment_range(_WORK, *bounds), _WORK)
        if engine:  # this worker's engine: its counts reach the parent with the chunk
            chunk.checked, chunk.disagreement = engine.rows_checked - checked, engine.disagreement
        return chunk
    except DataError as exc:  # sent back as (message, hint): the hint would not survive pickling
        return exc.message, exc.hint


def _encode_in_process(work: _Work) -> list[_Chunk]:
    """Chunk by chunk, with two chunks in the tokenizer's hands while Python cuts the next: the
    tokenizer (native code, free of the GIL) works on one chunk while the other's ids become arrays
    and its mask is computed, so it never waits for Python. Each source row is released once it is
    cut: the rows' Python objects are most of the memory a large dataset takes here."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    chunks, pending = [], deque()
    with ThreadPoolExecutor(IN_FLIGHT) as pool:
        for start in range(0, len(work.rows), CHUNK):
            interrupts.check("while preparing the data")  # a safe point per chunk (interrupts.py)
            stop = min(len(work.rows), start + CHUNK)
            chunk, batch = _segment_range(work, start, stop)
            work.rows[start:stop] = [None] * (stop - start)
            if len(pending) == IN_FLIGHT:
                pending.popleft().result()
            pending.append(pool.submit(_tokenize_into, chunk, batch, work))
            chunks.append(chunk)
        while pending:
            pending.popleft().result()
    return chunks


@contextmanager
def tokenizer_threads(on: bool):
    """The tokenizer's own threads on (a batch is tokenized on every core) or off, whatever
    TOKENIZERS_PARALLELISM says, and the variable restored afterwards. `train` sets it to false for
    the trainer's sake before the data is prepared; the `tokenizers` library reads it at each call."""
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if on else "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = before


def _encode_all(work: _Work, num_proc: int) -> list[_Chunk]:
    import multiprocessing

    n = len(work.rows)
    interrupts.hold("data_preparing")
    if n >= FAST_ENGINE_MIN_ROWS:
        work.tok.fast_engine  # built once, before the threads or the forked workers that use it
    if num_proc <= 1 or n < 2 * CHUNK or "fork" not in multiprocessing.get_all_start_methods():
        with tokenizer_threads(True):
            return _encode_in_process(work)
    from concurrent.futures import ProcessPoolExecutor, wait

    global _WORK
    size = min(CHUNK * 4, math.ceil(n / num_proc))
    bounds = [(s, min(n, s + size)) for s in range(0, n, size)]
    _WORK = work
    try:
        context = multiprocessing.get_context("fork")
        with tokenizer_threads(False), ProcessPoolExecutor(num_proc, mp_context=context) as pool:
            futures = [pool.submit(_encode_in_worker, part) for part in bounds]  # a worker per core
            try:
                while wait(futures, timeout=0.2).not_done:
                    interrupts.check("while preparing the data")  # the workers only record a signal
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)  # the chunks being tokenized end, no others
                raise
            results = [future.result() for future in futures]
        interrupts.check("while preparing the data")
        for result in results:
            if isinstance(result, tuple):
                raise DataError(*result)
        return results
    finally:
        _WORK = None


def _engine_used(tok: TextTokenizer, chunks: list[_Chunk], rows: int, emit: Emit) -> dict:
    """Which engine tokenized the rows and how it was checked (fast_bpe.py), said once and kept in
    the report."""
    if rows < FAST_ENGINE_MIN_ROWS:
        return {"engine": "tokenizers", "checked": 0, "note": f"fewer than {FAST_ENGINE_MIN_ROWS} rows"}
    engine, reason = tok.fast_engine
    if engine is None:
        status(emit, f"Tokenized with tokenizers (tiktoken does not apply: {reason})")
        return {"engine": "tokenizers", "checked": 0, "note": f"tiktoken does not apply: {reason}"}
    checked = engine.rows_checked + sum(c.checked for c in chunks)
    disagreement = engine.disagreement or next((c.disagreement for c in chunks if c.disagreement), None)
    if disagreement:
        note = (f"tiktoken and tokenizers gave different ids for the {disagreement}: that batch and the later "
                f"ones were tokenized with tokenizers ({checked} rows checked agreed)")
        warning(emit, note)
        return {"engine": "tiktoken, then tokenizers", "checked": checked, "note": note}
    status(emit, f"Tokenized with tiktoken; {checked} rows checked against tokenizers gave the same ids")
    return {"engine": "tiktoken", "checked": checked, "note": f"{checked} rows checked against tokenizers: same ids"}


def strict_error(problems: list[Problem]) -> DataError:
    shown = "; ".join(p.describe() for p in problems[:3])
    more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
    return DataError(f"{len(problems)} row(s) would be dropped (strict): {shown}{more}",
                     "fix those rows, or run without --strict (data.strict = false) to drop them")


def prepare(cfg: Config, tok: TextTokenizer, emit: Emit = ignore, strict: bool | None = None) -> Prepared:
    """Read, standardise, render, tokenize, mask and split the configured dataset."""
    with no_gc():
        return _prepare(cfg, tok, emit, strict)


@contextmanager
def no_gc():
    """The cyclic garbage collector off: reading 100k rows makes millions of dicts and strings, none
    in a cycle, and the collector walked all of them again and again (seconds, for nothing)."""
    import gc

    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _prepare(cfg: Config, tok: TextTokenizer, emit: Emit, strict: bool | None) -> Prepared:
    data = cfg.data
    strict = data.strict if strict is None else strict
    source = load_rows(cfg, emit, strict)
    detection = formats.detect(source.rows, data.format, where=str(resolve_source(data.source, cfg.project_dir)))
    status(emit, detection.reason)
    template = select_template(cfg, tok) if formats.is_conversational(detection.format) else None
    end = template.end_of_turn if template else tok.eos_token
    if not end:
        raise DataError("the tokenizer has no eos token to end each text row with",
                        "set eos_token in the model's tokenizer_config.json")
    segmenter = Segmenter(template.source if template else None, end, tok, data.train_on_responses_only)
    max_length = cfg.model.max_seq_length
    status(emit, f"Rendering and tokenizing {len(source.rows)} rows"
                 + (f" with the chat template {template.label}" if template else ""))
    work = _Work(source.rows, source.origin, detection.format, segmenter, tok, max_length)
    chunks = _encode_all(work, data.num_proc)
    engine = _engine_used(tok, chunks, len(source.rows), emit)

    parts = [c.tokens for c in chunks]
    for chunk in chunks:
        chunk.tokens = None  # only `parts` holds the tokens from here on
    numbers = np.asarray([n for c in chunks for n in c.row_numbers], dtype=np.int32)
    problems = [p for c in chunks for p in c.problems]
    roles: Counter = sum((c.roles for c in chunks), Counter())
    turns = [t for c in chunks for t in c.turns]
    duplicates, seen = [], set()
    for number, key in zip(numbers.tolist(), (k for c in chunks for k in c.keys)):
        if key in seen:
            duplicates.append(number)
        seen.add(key)

    trained = np.concatenate([np.zeros(0, np.int64)] + [part.trained_counts() for part in parts])
    keep = trained > 0
    full_lengths = np.concatenate([np.zeros(0, np.int32)] + [part.full_lengths for part in parts])
    dropped = [Problem(int(n), source.origin[n - 1],
                       f"nothing to train on in its first {max_length} tokens" if full > max_length
                       else "has no assistant reply to train on")
               for n, full in zip(numbers[~keep].tolist(), full_lengths[~keep].tolist())]
    if strict and (problems or dropped):
        raise strict_error(sorted(problems + dropped, key=lambda p: p.row))
    if not keep.any():
        first = (problems + dropped)[0].describe() if problems or dropped else "no rows"
        raise DataError(f"no row of {data.source} has anything to train on ({len(problems)} invalid, "
                        f"{len(dropped)} without trainable tokens; first: {first})",
                        "check [data] format and columns with `slothctl data inspect`")
    kept_rows = int(keep.sum())
    is_eval = split_mask(kept_rows, data.eval_fraction, data.seed)
    in_train, in_eval = keep.copy(), keep.copy()  # over the valid rows: kept and in that split
    in_train[np.flatnonzero(keep)[is_eval]] = False
    in_eval[np.flatnonzero(keep)[~is_eval]] = False
    kept = Tokenized.assemble(parts, in_train, in_eval)
    pad = pad_for(template or template_or_none_for_text(data.chat_template, tok),
                  tok.pad_token, tok.eos_token, tok.bos_token, tok.unk_token, tok.special_tokens)
    report = build_report(
        source=str(resolve_source(data.source, cfg.project_dir)), rows=len(source.rows), fmt=detection.format,
        detection=detection.reason, template=template, end_of_turn=end, pad_token=pad,
        responses_only=data.train_on_responses_only, max_length=max_length, full_lengths=full_lengths,
        problems=problems, dropped=dropped, roles=roles, turns=turns, duplicates=duplicates,
        kept_tokens=len(kept.ids), kept_trained=int(kept.trained.sum()), train_rows=int((~is_eval).sum()),
        eval_rows=int(is_eval.sum()), eval_fraction=data.eval_fraction, seed=data.seed)
    report["tokenizer"] = engine
    report["system_turns"] = system_turns(template, tok.bos_token, tok.eos_token, roles.get("system", 0))
    if report["system_turns"] and report["system_turns"]["handling"] != "kept":
        warning(emit, f"system turns are {report['system_turns']['handling']}")
    return Prepared(source=report["source"], format=detection.format, detection=detection.reason,
                    template=template, rows=len(source.rows), arrays=kept,
                    row_numbers=np.concatenate([numbers[in_train], numbers[in_eval]]),
                    is_eval=np.sort(is_eval), full_lengths=kept.full_lengths, invalid=problems,
                    no_trained_tokens=dropped, report=report, fingerprint=source.fingerprint, origins=source.origin,
                    suspects=list(source.suspects))
