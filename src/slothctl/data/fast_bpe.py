"""A second engine for byte-level BPE tokenizers (Llama 3, Qwen 2/3, SmolLM and other GPT-2-style
vocabularies): tiktoken, built from the model's own tokenizer.json, for the ids of the data path.

Why: the `tokenizers` library was most of `data inspect`'s time at 100k chat rows (38-56 of its
53-66 CPU-seconds on 2 cores; README, "Data at scale"), about half of it in memory allocation for the
per-token objects its Encoding carries. tiktoken runs the same byte-level BPE over the same regex and
gives back a flat buffer of ids: on 20,000 chat rows it took 3.7-4.3 CPU-s where `tokenizers`
took 9.9-10.6 (SmolLM2, Llama 3.1, Qwen 2.5 and Qwen 3 vocabularies; same ids on every row).

It is used only where its output is the same as the tokenizer's own:
- the tokenizer.json has a shape whose translation is exact (`build` says why not otherwise): a BPE
  model over byte-level symbols, the GPT-2 regex of a ByteLevel pre-tokenizer or one Split regex
  before it, no normaliser or NFC, added tokens that split plainly (no strip flags, none a prefix of
  another), and token ids that grow with the order of the merges (tiktoken merges by rank);
- rows it cannot take go to `tokenizers`: a character whose bytes the vocabulary lacks (the tokenizer
  writes its unknown token there), and under NFC every row that normalisation would change;
- every batch, a sample of its rows (its first 16 rows that are not plain ASCII, and one row in 256)
  is tokenized by both; the first difference turns the engine off for good: that batch and every
  later one go through `tokenizers` (`disagreement` says where).
"""

from __future__ import annotations

import json
import os
import re
import threading
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from slothctl.data.byte_offsets import normalizer_kind

# The pre-tokenizer regex of a ByteLevel pre-tokenizer with use_regex (GPT-2's), as `tokenizers` has it.
BYTE_LEVEL_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
SAMPLE_NON_ASCII = 16  # rows per batch checked against `tokenizers`: the first rows that are not ASCII...
SAMPLE_EVERY = 256  # ...and one row in this many
PART = 64  # rows per task when a batch is spread over the cores


def byte_symbols() -> dict[str, int]:
    """The byte-level alphabet: the character that stands for each byte in the vocabulary (GPT-2's
    table: printable Latin-1 bytes stand for themselves, the others for 256 and up)."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in kept]
    return {chr(b): b for b in kept} | {chr(256 + i): b for i, b in enumerate(extra)}


def _lead_range(byte: int) -> tuple[int, int] | None:
    """The code points whose UTF-8 form starts with this byte (None: no valid text holds it)."""
    if byte < 0x80:
        return byte, byte
    if 0xC2 <= byte <= 0xDF:
        low = (byte & 0x1F) << 6
        return low, low + 0x3F
    if 0xE0 <= byte <= 0xEF:
        low = (byte & 0x0F) << 12
        return max(low, 0x800), low + 0xFFF
    if 0xF0 <= byte <= 0xF4:
        low = (byte & 0x07) << 18
        return max(low, 0x10000), min(low + 0x3FFFF, 0x10FFFF)
    return None  # 0xC0, 0xC1, 0xF5-0xFF


def _unsupported_chars(missing: set[int]) -> re.Pattern | None:
    """A regex for the characters whose UTF-8 bytes include one the vocabulary lacks (None: none)."""
    ranges = [r for r in map(_lead_range, sorted(missing)) if r is not None]
    if not ranges:
        return None
    return re.compile("[" + "".join(re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}"
                                    for a, b in ranges) + "]")


@dataclass
class FastBPE:
    """A tiktoken Encoding for one tokenizer.json, with the `tokenizers` Tokenizer it stands in for."""

    encoding: object  # tiktoken.Encoding
    specials: frozenset[str]  # the added tokens: split out of the text, as `tokenizers` does
    backend: object  # tokenizers.Tokenizer: rows the engine leaves alone, and the check
    nfc: bool
    unsupported: re.Pattern | None
    disagreement: str | None = None  # set at the first row where the two engines differ
    rows_checked: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _pool: tuple[int, ThreadPoolExecutor] | None = field(default=None, repr=False)

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Flat int32 ids and the number of tokens of each row, as `tokenizers` would give them."""
        if self.disagreement is not None:
            return flat_ids(self.backend, texts)
        fast = [self._takes(text) for text in texts]
        slow = [i for i, takes in enumerate(fast) if not takes]
        rows = self._map([text for text, takes in zip(texts, fast) if takes])
        if slow:
            ids, lengths = flat_ids(self.backend, [texts[i] for i in slow])
            replaced, taken = dict(zip(slow, np.split(ids, np.cumsum(lengths)[:-1]))), iter(rows)
            rows = [replaced[i] if i in replaced else next(taken) for i in range(len(texts))]
        if not self._agrees(texts, rows, fast):
            return flat_ids(self.backend, texts)
        lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
        ids = np.concatenate(rows).astype(np.int32, copy=False) if rows else np.zeros(0, dtype=np.int32)
        return ids, lengths

    def _takes(self, text: str) -> bool:
        if text.isascii():
            return self.unsupported is None or self.unsupported.search(text) is None
        if self.unsupported is not None and self.unsupported.search(text):
            return False
        return not self.nfc or self.backend.normalizer.normalize_str(text) == text

    def _map(self, texts: list[str]) -> list[np.ndarray]:
        """The rows' ids; over every core unless TOKENIZERS_PARALLELISM is false (as `tokenizers` does:
        `train` and the data workers turn it off). tiktoken lets go of the GIL while it encodes."""
        def part(chunk: list[str]) -> list[np.ndarray]:
            return [self.encoding.encode_to_numpy(t, allowed_special=self.specials, disallowed_special=())
                    for t in chunk]

        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        if cores == 1 or len(texts) <= PART or os.environ.get("TOKENIZERS_PARALLELISM", "").lower() == "false":
            return part(texts)
        parts = [texts[i:i + PART] for i in range(0, len(texts), PART)]
        return [row for rows in self._executor(cores).map(part, parts) for row in rows]

    def _executor(self, cores: int) -> ThreadPoolExecutor:
        """One pool per process (a forked data worker cannot use its parent's threads)."""
        with self._lock:
            if self._pool is None or self._pool[0] != os.getpid():
                self._pool = (os.getpid(), ThreadPoolExecutor(cores, thread_name_prefix="slothctl-bpe"))
            return self._pool[1]

    def _agrees(self, texts: list[str], rows: list[np.ndarray], fast: list[bool]) -> bool:
        picked = [i for i, takes in enumerate(fast) if takes and not texts[i].isascii()][:SAMPLE_NON_ASCII]
        picked += [i for i in range(0, len(texts), SAMPLE_EVERY) if fast[i] and i not in picked]
        if not picked:
            return True
        expected = self.backend.encode_batch_fast([texts[i] for i in picked], add_special_tokens=False)
        for i, encoding in zip(picked, expected):
            if not np.array_equal(rows[i], encoding.ids):
                with self._lock:
                    self.disagreement = self.disagreement or f"row text {texts[i][:60]!r}"
                return False
        with self._lock:
            self.rows_checked += len(picked)
        return True


def flat_ids(backend, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """`tokenizers`' ids, flat. `encode_batch_fast` skips the character offsets, whose byte-to-character
    map (a hash map entry per byte of text) was ~17% of `encode_batch`'s time (10k chat rows, 2 cores)."""
    from itertools import chain

    encoded = [enc.ids for enc in backend.encode_batch_fast(texts, add_special_tokens=False)]
    lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
    return np.fromiter(chain.from_iterable(encoded), dtype=np.int32, count=int(lengths.sum())), lengths


def _pattern(pre: dict | None) -> str | None:
    """The one regex that splits text before the byte-level BPE, or None for other pre-tokenizers."""
    def byte_level(step: dict, with_regex: bool) -> bool:
        return (step.get("type") == "ByteLevel" and not step.get("add_prefix_space")
                and bool(step.get("use_regex", True)) == with_regex)

    if pre and byte_level(pre, True):
        return BYTE_LEVEL_PATTERN
    steps = (pre or {}).get("pretokenizers") if (pre or {}).get("type") == "Sequence" else None
    if not steps or len(steps) != 2:
        return None
    split, last = steps
    regex = (split.get("pattern") or {}).get("Regex")
    if (split.get("type") != "Split" or regex is None or split.get("behavior") != "Isolated"
            or split.get("invert") or not byte_level(last, False)):
        return None
    return regex


def build(tokenizer_json: Path, backend) -> tuple[FastBPE | None, str]:
    """The engine for this tokenizer, or None and the reason it does not apply."""
    spec = json.loads(Path(tokenizer_json).read_text(encoding="utf-8"))
    model, pattern, normaliser = spec.get("model") or {}, _pattern(spec.get("pre_tokenizer")), \
        normalizer_kind(spec.get("normalizer"))
    if model.get("type") != "BPE" or model.get("dropout") or model.get("continuing_subword_prefix") \
            or model.get("end_of_word_suffix"):
        return None, "not a plain BPE model"
    if pattern is None:
        return None, "a pre-tokenizer other than byte-level with one regex"
    if normaliser is None:
        return None, f"a {spec['normalizer'].get('type')} normaliser"
    added = spec.get("added_tokens") or []
    if any(a.get("lstrip") or a.get("rstrip") or a.get("single_word") for a in added):
        return None, "added tokens that strip spaces or match whole words only"
    contents = sorted(a["content"] for a in added)
    if any(b.startswith(a) for a, b in zip(contents, contents[1:])):
        return None, "an added token that begins another"
    if normaliser == "nfc" and not all(unicodedata.is_normalized("NFC", c) for c in contents):
        return None, "an added token that NFC changes"
    symbols, vocab = byte_symbols(), model.get("vocab") or {}
    to_bytes = {}
    for symbol, byte in symbols.items():
        if symbol in vocab:
            to_bytes[bytes([byte])] = vocab[symbol]
    missing = {byte for symbol, byte in symbols.items() if symbol not in vocab}
    if any(0x80 <= byte <= 0xBF for byte in missing):
        return None, "a vocabulary without every UTF-8 continuation byte"
    last = -1
    for merge in model.get("merges") or []:
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        token = left + right
        if token not in vocab or not all(c in symbols for c in token):
            return None, "a merge whose result is not a byte-level token"
        key = bytes(symbols[c] for c in token)
        if key in to_bytes:
            continue  # another split of a token already made (Llama 3's list has every split of a token,
            # next to each other, as tiktoken ranks them): the token's first merge ranks it
        if vocab[token] <= last:
            return None, "token ids that do not follow the order of the merges"
        last = to_bytes[key] = vocab[token]
    added_contents = set(contents)
    orphans = [t for t in vocab if t not in added_contents and all(c in symbols for c in t)
               and bytes(symbols[c] for c in t) not in to_bytes]
    if orphans and model.get("ignore_merges"):
        return None, "whole-word tokens that no merge makes (ignore_merges)"
    try:
        import tiktoken
    except ImportError:
        return None, "tiktoken is not installed"
    try:
        encoding = tiktoken.Encoding("slothctl", pat_str=pattern, mergeable_ranks=to_bytes,
                                     special_tokens={a["content"]: a["id"] for a in added})
    except Exception as exc:  # noqa: BLE001 - a regex tiktoken's engine rejects, etc.: use `tokenizers`
        return None, f"tiktoken refused it ({exc})"
    return FastBPE(encoding=encoding, specials=frozenset(contents), backend=backend,
                   nfc=normaliser == "nfc", unsupported=_unsupported_chars(missing)), "tiktoken"
