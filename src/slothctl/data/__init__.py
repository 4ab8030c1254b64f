"""The data pipeline: source rows → standard messages → chat template → tokens + loss mask → split.

    sources.py        read local files, folders and hub datasets (with row origins and fingerprints)
    formats.py        detect the row format and standardise rows to messages or text
    templates.py      choose the chat template, the end-of-turn token and a pad token
    chat_template.py  render Jinja chat templates like transformers, without importing it
    encode.py         cut rendered rows into trained / untrained segments and tokenize them
    pipeline.py       `prepare`: all of the above for one config, with counts of dropped rows
    report.py         the numbers `data inspect` shows
    tables.py         the rows as Arrow (what the trainer reads), their lengths and fingerprint
    cache.py          the formatted-data cache that `data format` writes and `train` reads
    examples.py       examples rendered token by token, for `data inspect --show`

`formatted` is the one entry point of `train`, `data inspect` and `data format`: the cached dataset when the
cache has it, else `prepare` and store; either way the rows are then memory-mapped from the cache.
"""

from __future__ import annotations

from slothctl.config import Config
from slothctl.data.pipeline import Prepared, load_rows, prepare, report_suspects, select_template, split_mask, \
    strict_error
from slothctl.data.report import Problem
from slothctl.data.tokenizer import TextTokenizer
from slothctl.errors import DataError, UsageError
from slothctl.events import Emit, ignore, status, warning

__all__ = ["Prepared", "Problem", "formatted", "load_rows", "prepare", "select_template", "split_mask"]


def _key(cfg: Config, tok: TextTokenizer, fingerprint: dict) -> str:
    from slothctl.data import cache

    try:
        template = select_template(cfg, tok)
    except DataError:  # reported by `prepare` if the data is conversational; text data needs no template
        template = None
    return cache.cache_key(cfg, fingerprint, tok, template)


def formatted(cfg: Config, tok: TextTokenizer, emit: Emit = ignore, strict: bool | None = None,
              must_store: bool = False) -> Prepared:
    """The formatted dataset of this config: from the cache when an intact entry exists (a hit), else
    prepared and stored (a miss). `prepared.cache` says which, and where. A cache that cannot be
    written is a warning (training goes on), or with `must_store` an error."""
    from slothctl.data import cache
    from slothctl.data.sources import fingerprint_source
    from slothctl.models import blocking_file

    strict = cfg.data.strict if strict is None else strict
    blocker = blocking_file(cache.cache_dir())  # a file where the cache folder goes: say which, before any work
    fix = f"remove {blocker}, or set SLOTHCTL_DATA_CACHE to a folder" if blocker else \
        "set SLOTHCTL_DATA_CACHE to a writable folder"
    if blocker and must_store:
        raise UsageError(f"cannot write the data cache in {cache.cache_dir()}: {blocker} is a file, not a folder",
                         fix)
    key = _key(cfg, tok, fingerprint_source(cfg.data.source, cfg.project_dir, cfg.data.subset, cfg.data.split))
    found = cache.read(key)
    if found is not None:
        report_suspects(found.suspects, strict, emit)
        if strict and (found.invalid or found.no_trained_tokens):
            raise strict_error(sorted(found.invalid + found.no_trained_tokens, key=lambda p: p.row))
        found.cache = {"key": key, "path": str(cache.cache_dir() / key), "hit": True}
        status(emit, f"Formatted data: cache hit ({cache.cache_dir() / key})", cache="hit", key=key)
        return found
    prepared = prepare(cfg, tok, emit, strict)
    key = _key(cfg, tok, prepared.fingerprint)  # of the bytes actually read, should a file have changed since
    try:
        path = cache.write(prepared, key)
    except OSError as exc:  # a full disk or read-only cache costs the caching, not the run
        problem = f"{blocker} is a file, not a folder" if blocker else exc.strerror or str(exc)
        if must_store:
            raise UsageError(f"cannot write the data cache in {cache.cache_dir()}: {problem}", fix) from None
        warning(emit, f"could not store the formatted data in {cache.cache_dir()}: {problem} ({fix})")
        prepared.cache = {"key": key, "path": None, "hit": False}
        give_back_freed_memory()
        return prepared
    stored = cache.load(path)  # the rows come from the file from now on
    stored.fingerprint, stored.origins = prepared.fingerprint, prepared.origins
    stored.cache = {"key": key, "path": str(path), "hit": False}
    del prepared
    give_back_freed_memory()
    status(emit, f"Formatted data: cache miss, stored in {path}", cache="miss", key=key)
    return stored


def give_back_freed_memory() -> None:
    """Hand the memory that preparing freed back to the system. glibc keeps freed heap pages for
    reuse: after 100k rows were read and tokenized, ~0.7 GB that `train` would carry into the model
    load and the training. malloc_trim releases them; other C libraries have nothing to call."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
