"""Where each token starts, from the token ids alone, for byte-level BPE tokenizers.

The loss mask needs the position in the text at which each token starts. The tokenizer can report
it (`Encoding.offsets`), but computing the offsets, and above all handing 50 M (start, end) tuples to
Python, was about a third of the data path's time at 100k rows. A byte-level BPE token (GPT-2's
scheme: Llama 3, Qwen 2/3, SmolLM, …) stands for a fixed string of bytes, so its start is the sum
of the byte lengths of the tokens before it: one table lookup and one cumulative sum per batch.

That holds only while the tokens spell the text byte for byte. `lengths_table` accepts a tokenizer
only when its pre-tokenizer is byte-level without an added prefix space, its model is BPE, its
normaliser changes nothing or is NFC, and no added token swallows the whitespace around it; and
`tokenize` still checks every row: where the byte lengths of its tokens do not add up to the
row's UTF-8 length (or, under NFC, where the text is not NFC already) that row's starts come from
the tokenizer's offsets as before. Other tokenizers (SentencePiece) use the offsets throughout.
"""

from __future__ import annotations

import json
import re

import numpy as np

_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")  # byte_fallback's tokens: one byte each


def _state(component) -> dict | None:
    if component is None:
        return None
    return json.loads(component.__getstate__())


def _flatten(state: dict | None, key: str) -> list[dict]:
    if state is None:
        return []
    if state.get("type") == "Sequence":
        return [part for inner in state.get(key, []) for part in _flatten(inner, key)]
    return [state]


def normalizer_kind(state: dict | None) -> str | None:
    """"none" (text is left as is), "nfc", or None for any other normaliser (`state`: the normaliser
    as tokenizer.json stores it)."""
    kinds = {part.get("type") for part in _flatten(state, "normalizers")}
    if not kinds:
        return "none"
    return "nfc" if kinds == {"NFC"} else None


def lengths_table(backend) -> tuple[np.ndarray, str] | None:
    """Per token id, the number of text bytes the token stands for (-1 where unknown), and the
    normaliser kind; None when the tokenizer is not byte-level BPE as described above."""
    from tokenizers.pre_tokenizers import ByteLevel

    from tokenizers.models import BPE

    pre = _flatten(_state(backend.pre_tokenizer), "pretokenizers")
    levels = [part for part in pre if part.get("type") == "ByteLevel"]
    normalizer = normalizer_kind(_state(backend.normalizer))
    if not isinstance(backend.model, BPE) or not levels or normalizer is None:  # (the model's state is its vocab)
        return None
    if any(part.get("add_prefix_space") for part in levels):
        return None
    if any(part.get("type") not in ("ByteLevel", "Split", "Digits", "Punctuation") for part in pre):
        return None
    post = _flatten(_state(backend.post_processor), "processors")
    if any(part.get("type") == "ByteLevel" and part.get("trim_offsets") for part in post):
        return None  # the offsets this replaces would skip a token's leading space
    added = backend.get_added_tokens_decoder()
    if any(token.lstrip or token.rstrip for token in added.values()):
        return None
    alphabet = set(ByteLevel.alphabet())
    fallback = bool(backend.model.byte_fallback)
    vocab = backend.get_vocab(with_added_tokens=False)
    size = max([backend.get_vocab_size(with_added_tokens=True)] + [i + 1 for i in vocab.values()]
               + [i + 1 for i in added])
    table = np.full(size, -1, dtype=np.int64)
    for token, index in vocab.items():
        if alphabet.issuperset(token):
            table[index] = len(token)
        elif fallback and _BYTE_TOKEN.fullmatch(token):
            table[index] = 1
    for index, token in added.items():
        table[index] = len(token.content.encode("utf-8"))
    return table, normalizer


def utf8_length(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def char_to_byte(text: str) -> np.ndarray:
    """For each character index (and one past the end), the byte index where it starts in UTF-8."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    widths = 1 + (codes >= 0x80) + (codes >= 0x800) + (codes >= 0x10000)
    return np.concatenate([[0], np.cumsum(widths)]).astype(np.int64)
