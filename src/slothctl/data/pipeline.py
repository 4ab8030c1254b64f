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
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from slothctl.config import Config
from slothctl.data import formats
from slothctl.data.encode import Encoded, Segmenter, TemplateFailure, Tokenized, tokenize
from slothctl.data.report import Problem, build_report
from slothctl.data.sources import Rows, read_source, resolve_source
from slothctl.data.templates import (ChatTemplate, choose_for_text_tokenizer, pad_for, system_turns,
                                     template_or_none_for_text)
from slothctl.data.tokenizer import TextTokenizer
from slothctl.errors import DataError
from slothctl.events import Emit, ignore, status, warning

CHUNK = 2048  # rows tokenized per batch call


@dataclass
class Prepared:
    """The tokenized dataset: kept rows in flat arrays, the split, and the report about all rows."""

    source: str
    format: str
    detection: str
    template: ChatTemplate | None
    rows: int
    tokens: Tokenized  # the kept rows
    row_numbers: np.ndarray  # 1-based source row of each kept row
    is_eval: np.ndarray  # per kept row
    invalid: list[Problem]
    no_trained_tokens: list[Problem]
    report: dict
    cache: dict | None = field(default=None)  # {"key", "path", "hit"} once cached
    fingerprint: dict = field(default_factory=dict)  # of the source as read (not cached)
    origins: list[str] = field(default_factory=list)  # of every source row (not cached)

    @property
    def truncated(self) -> int:
        return self.report["truncated"]

    @cached_property
    def train(self) -> list[Encoded]:
        return [self.tokens.example(i) for i in np.flatnonzero(~self.is_eval)]

    @cached_property
    def train_lengths(self) -> list[int]:
        """Tokens per training row: what batching and the step plan go by."""
        return self.tokens.lengths[~self.is_eval].tolist()

    @cached_property
    def eval(self) -> list[Encoded]:
        return [self.tokens.example(i) for i in np.flatnonzero(self.is_eval)]


def load_rows(cfg: Config, emit: Emit = ignore) -> Rows:
    """The source's rows with [data] max_rows and columns applied; an empty dataset is an error."""
    data = cfg.data
    rows = read_source(data.source, cfg.project_dir, data.subset, data.split)
    if rows.skipped:
        shown = ", ".join(rows.skipped[:5]) + (f" and {len(rows.skipped) - 5} more" if len(rows.skipped) > 5 else "")
        warning(emit, f"skipped files that are not data: {shown}")
    if data.max_rows:
        rows.rows, rows.origin = rows.rows[: data.max_rows], rows.origin[: data.max_rows]
    if not rows.rows:
        raise DataError(f"the dataset {data.source} is empty (no rows)",
                        "check the file, or [data] split/subset for a hub dataset")
    formats.rename_columns(rows.rows, data.columns)
    return rows


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
    try:
        return _tokenize_into(*_segment_range(_WORK, *bounds), _WORK)
    except DataError as exc:  # sent back as (message, hint): the hint would not survive pickling
        return exc.message, exc.hint


def _encode_in_process(work: _Work) -> list[_Chunk]:
    """Chunk by chunk; the tokenizer (native code, free of the GIL) works on one chunk while Python
    cuts the next."""
    from concurrent.futures import ThreadPoolExecutor

    chunks, pending = [], None
    with ThreadPoolExecutor(1) as pool:
        for start in range(0, len(work.rows), CHUNK):
            chunk, batch = _segment_range(work, start, min(len(work.rows), start + CHUNK))
            if pending is not None:
                pending.result()
            pending = pool.submit(_tokenize_into, chunk, batch, work)
            chunks.append(chunk)
        if pending is not None:
            pending.result()
    return chunks


def _encode_all(work: _Work, num_proc: int) -> list[_Chunk]:
    import multiprocessing

    n = len(work.rows)
    if num_proc <= 1 or n < 2 * CHUNK or "fork" not in multiprocessing.get_all_start_methods():
        return _encode_in_process(work)
    from concurrent.futures import ProcessPoolExecutor

    global _WORK
    size = min(CHUNK * 4, math.ceil(n / num_proc))
    bounds = [(s, min(n, s + size)) for s in range(0, n, size)]
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # each worker tokenizes on its own core
    _WORK = work
    try:
        with ProcessPoolExecutor(num_proc, mp_context=multiprocessing.get_context("fork")) as pool:
            results = list(pool.map(_encode_in_worker, bounds))
        for result in results:
            if isinstance(result, tuple):
                raise DataError(*result)
        return results
    finally:
        _WORK = None


def strict_error(problems: list[Problem]) -> DataError:
    shown = "; ".join(p.describe() for p in problems[:3])
    more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
    return DataError(f"{len(problems)} row(s) would be dropped (strict): {shown}{more}",
                     "fix those rows, or run without --strict (data.strict = false) to drop them")


def prepare(cfg: Config, tok: TextTokenizer, emit: Emit = ignore, strict: bool | None = None) -> Prepared:
    """Read, standardise, render, tokenize, mask and split the configured dataset."""
    data = cfg.data
    strict = data.strict if strict is None else strict
    source = load_rows(cfg, emit)
    detection = formats.detect(source.rows, data.format)
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

    valid = Tokenized.concat([c.tokens for c in chunks])
    numbers = np.asarray([n for c in chunks for n in c.row_numbers], dtype=np.int32)
    problems = [p for c in chunks for p in c.problems]
    roles: Counter = sum((c.roles for c in chunks), Counter())
    turns = [t for c in chunks for t in c.turns]
    duplicates, seen = [], set()
    for number, key in zip(numbers.tolist(), (k for c in chunks for k in c.keys)):
        if key in seen:
            duplicates.append(number)
        seen.add(key)

    trained = valid.trained_counts()
    keep = trained > 0
    dropped = [Problem(int(n), source.origin[n - 1],
                       f"nothing to train on in its first {max_length} tokens" if full > max_length
                       else "has no assistant reply to train on")
               for n, full in zip(numbers[~keep].tolist(), valid.full_lengths[~keep].tolist())]
    if strict and (problems or dropped):
        raise strict_error(sorted(problems + dropped, key=lambda p: p.row))
    if not keep.any():
        first = (problems + dropped)[0].describe() if problems or dropped else "no rows"
        raise DataError(f"no row of {data.source} has anything to train on ({len(problems)} invalid, "
                        f"{len(dropped)} without trainable tokens; first: {first})",
                        "check [data] format and columns with `slothctl data inspect`")
    kept = valid.select(keep)
    is_eval = split_mask(len(kept), data.eval_fraction, data.seed)
    pad = pad_for(template or template_or_none_for_text(data.chat_template, tok),
                  tok.pad_token, tok.eos_token, tok.bos_token, tok.unk_token, tok.special_tokens)
    report = build_report(
        source=str(resolve_source(data.source, cfg.project_dir)), rows=len(source.rows), fmt=detection.format,
        detection=detection.reason, template=template, end_of_turn=end, pad_token=pad,
        responses_only=data.train_on_responses_only, max_length=max_length, full_lengths=valid.full_lengths,
        problems=problems, dropped=dropped, roles=roles, turns=turns, duplicates=duplicates,
        kept_tokens=len(kept.ids), kept_trained=int(kept.trained.sum()), train_rows=int((~is_eval).sum()),
        eval_rows=int(is_eval.sum()), eval_fraction=data.eval_fraction, seed=data.seed)
    report["system_turns"] = system_turns(template, tok.bos_token, tok.eos_token, roles.get("system", 0))
    if report["system_turns"] and report["system_turns"]["handling"] != "kept":
        warning(emit, f"system turns are {report['system_turns']['handling']}")
    return Prepared(source=report["source"], format=detection.format, detection=detection.reason,
                    template=template, rows=len(source.rows), tokens=kept, row_numbers=numbers[keep],
                    is_eval=is_eval, invalid=problems, no_trained_tokens=dropped, report=report,
                    fingerprint=source.fingerprint, origins=source.origin)
