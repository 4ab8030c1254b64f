"""Token starts from byte lengths (data/byte_offsets.py) give exactly what the tokenizer's offsets
gave: the same tokens, the same loss mask, the same truncation, on the embedded model's tokenizer
and on the Llama 3 and Qwen 3 tokenizers (rebuilt from llama.cpp's vocabulary GGUFs, tests/families.py),
for rows that are hard on it (multi-byte characters cut across tokens, emoji, text that is not NFC,
special tokens inside contents, spaces at the cuts). Rows whose tokens do not spell their text fall
back to the offsets, and SentencePiece tokenizers never take the byte path. And `prepare` stays
token-identical to transformers' `apply_chat_template` on chat rows like the benchmark's."""

from __future__ import annotations

import json
import random
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest

import families as F
from data_files import config_for, write_jsonl
from slothctl.data import encode, prepare
from slothctl.data.encode import _tokenize_by_chars, tokenize
from slothctl.data.tokenizer import load_text_tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from data_inspect import generate  # noqa: E402  (the data-scale benchmark's rows)

BYTE_LEVEL = ("llama-3.1", "qwen3")
PIECES = ["Hello", " world", "  two spaces", "\n", "\r\n", "é", "e\u0301", "Å", "\u212b", "日本語", "🦥", "🦥🦥 ok",
          " ", "\t", "42", " 12345", "naïve café", "ﬁ", "<|im_end|>", "<|eot_id|>", "<|im_start|>assistant\n",
          "don't", " 'll", "x" * 40, "", "\u0000", "\u00a0", "Ωmega", "\U0001F468\u200d\U0001F469\u200d\U0001F467"]


def random_rows(seed: int, count: int) -> list[list[tuple[str, bool]]]:
    rng = random.Random(seed)
    return [[("".join(rng.choice(PIECES) for _ in range(rng.randint(0, 6))), rng.random() < 0.5)
             for _ in range(rng.randint(1, 6))] for _ in range(count)]


@pytest.fixture(scope="module")
def tokenizers(embedded_model) -> dict:
    folder = F.tokenizers_dir()
    found = {"embedded": load_text_tokenizer(str(embedded_model))}
    found.update({name: load_text_tokenizer(str(folder / name)) for name in BYTE_LEVEL})
    return found


def assert_same(a, b) -> None:
    for name in ("ids", "trained", "offsets", "full_lengths"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name


def by_chars(batch, tok, max_length):
    return _tokenize_by_chars(batch, ["".join(t for t, _ in s) for s in batch], tok, max_length)


@pytest.mark.parametrize("name", ["embedded", *BYTE_LEVEL])
def test_byte_starts_equal_offset_starts(name, tokenizers, monkeypatch):
    tok = tokenizers[name]
    assert tok.byte_lengths is not None
    fallbacks = []
    real = tok.encode_batch_with_starts
    monkeypatch.setattr(tok, "encode_batch_with_starts", lambda texts: fallbacks.append(texts) or real(texts))
    batch = random_rows(0, 300) + [[("", False)], [("🦥", True)], [("a", False), ("\u0301b", True)]]
    for max_length in (2048, 7):
        fallbacks.clear()
        assert_same(tokenize(batch, tok, max_length), by_chars(batch, tok, max_length))
    # `by_chars` made the last call; the byte path asked for offsets only for rows not in NFC, under NFC
    asked = [texts[0] for texts in fallbacks[:-1]]
    not_nfc = [t for t in fallbacks[-1] if not unicodedata.is_normalized("NFC", t)]
    assert asked == (not_nfc if tok.byte_lengths[1] == "nfc" else [])
    assert len(not_nfc) > 10


def test_rows_that_do_not_spell_their_text_use_the_offsets(tokenizers, monkeypatch):
    tok = tokenizers["embedded"]
    table, normalizer = tok.byte_lengths
    wrong = table.copy()
    wrong[tok.encode(" world")[0]] += 1  # as if a token stood for other bytes than it does
    wrong[tok.token_to_id("<|im_end|>")] = -1  # as if unknown
    monkeypatch.setattr(tok, "byte_lengths", (wrong, normalizer))
    batch = random_rows(1, 200)
    assert_same(tokenize(batch, tok, 2048), by_chars(batch, tok, 2048))


@pytest.mark.parametrize("name", ["gemma-2", "phi-3.5", "mistral"])
def test_sentencepiece_tokenizers_keep_the_offsets(name):
    assert load_text_tokenizer(str(F.tokenizers_dir() / name)).byte_lengths is None


@pytest.mark.parametrize("name", ["embedded", *BYTE_LEVEL])
def test_prepare_is_apply_chat_template_on_benchmark_rows(name, tokenizers, embedded_model, tmp_path, monkeypatch):
    """The benchmark's generated ShareGPT rows plus rows of multi-byte text: every row's tokens are
    transformers' `apply_chat_template`, and its mask is the one the offsets give."""
    from transformers import AutoTokenizer

    folder = embedded_model if name == "embedded" else F.tokenizers_dir() / name
    data = tmp_path / "chat.jsonl"
    generate(data, 40, seed=3, human_sentences=(1, 8), gpt_sentences=(2, 21))
    lines = data.read_text().splitlines()
    extra = [{"conversations": [{"from": "human", "value": "Caf\u00e9 or cafe\u0301? \u212b \U0001F9A5"},
                                {"from": "gpt", "value": " \u65e5\u672c\u8a9e\u3067 \U0001F468\u200d\U0001F469 naïve "}]},
             {"conversations": [{"from": "system", "value": "Be brief.\r\n"}, {"from": "human", "value": "x\u0301y"},
                                {"from": "gpt", "value": "\u00a0ok\u0000"}]}]
    write_jsonl(data, [json.loads(line) for line in lines] + extra)
    cfg = config_for(data, folder)
    tok = load_text_tokenizer(str(folder))
    prepared = prepare(cfg, tok)
    monkeypatch.setattr(encode.TextTokenizer, "byte_lengths", None)
    assert load_text_tokenizer(str(folder)).byte_lengths is None
    old = prepare(cfg, load_text_tokenizer(str(folder)))
    assert_same(prepared.tokens, old.tokens)
    hf = AutoTokenizer.from_pretrained(str(folder))
    roles = {"system": "system", "human": "user", "gpt": "assistant"}
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    assert len(prepared.row_numbers) == len(rows)
    for i, number in enumerate(prepared.row_numbers.tolist()):
        messages = [{"role": roles[t["from"]], "content": t["value"]} for t in rows[number - 1]["conversations"]]
        expected = hf.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
        assert prepared.tokens.example(i).input_ids == expected, number
