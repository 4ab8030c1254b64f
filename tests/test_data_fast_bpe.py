"""The tiktoken engine for byte-level BPE tokenizers (data/fast_bpe.py) gives the `tokenizers` library's
ids exactly: on the embedded model's tokenizer and on the Llama 3.1, Qwen 2.5 and Qwen 3 tokenizers
(rebuilt from llama.cpp's vocabulary GGUFs, tests/families.py), for generated chat rows and for text
that is hard on a pre-tokenizer regex or a normaliser (scripts, emoji, marks out of canonical order,
control characters, special tokens inside words). Other tokenizers keep `tokenizers`; a difference in
a batch turns the engine off for good; `prepare` says which engine ran and stores the same tokens
either way, in process and in data workers."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest

import families as F
from conftest import run_cli
from data_files import config_for
from slothctl.data import fast_bpe, prepare
from slothctl.data.tokenizer import FAST_ENGINE_MIN_ROWS, load_text_tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from data_inspect import generate  # noqa: E402  (the data-scale benchmark's rows)

BYTE_LEVEL = ("llama-3.1", "qwen2.5", "qwen3")
HARD = ["Hello", " world", "'S", "'LL", " don't", "I'M", "12345678", " 3.14159", "٣٤٥", "१२३", "日本語の",
        "한국어", "العربية", "हिन्दी", "ภาษาไทย", "кириллица", "🦥", "👨‍👩‍👧", "❤️", "🇫🇷", "e\u0301",
        "A\u08cd\u1df6", "ﬁ", "\u212b", "\t", "\r\n", "\n\n\n", "   ", "\u00a0", "\u2003", "\u3000", "\u0085",
        "\u2028", "\u200b", "\ufeff", "\x04", "\x1d", "\x00", "<|im_start|>", "<|im_end|>", "<|endoftext|>",
        "<|eot_id|>", "<|im_start", "|>", "<think>", "```python\n", "    def f(x):\n", "!!!", "—", "«»", "𝔘𝔫𝔦",
        "\U00059e56", "\U000e0041"]


def hard_texts(seed: int, count: int) -> list[str]:
    rng = random.Random(seed)

    def any_char() -> str:
        point = rng.choice([rng.randint(0x20, 0x7E), rng.randint(0xA0, 0xD7FF), rng.randint(0x10000, 0x10FFFF)])
        return chr(point)

    return ["".join(rng.choice(HARD) if rng.random() < 0.7 else "".join(any_char() for _ in range(rng.randint(1, 5)))
                    + rng.choice(["", " ", "\n"]) for _ in range(rng.randint(1, 25))) for _ in range(count)]


def chat_texts(tmp_path: Path, count: int) -> list[str]:
    data = tmp_path / "chat.jsonl"
    generate(data, count, seed=5, human_sentences=(1, 8), gpt_sentences=(2, 21))
    rows = [json.loads(line)["conversations"] for line in data.read_text().splitlines()]
    return ["".join(f"<|im_start|>{turn['from']}\n{turn['value']}<|im_end|>\n" for turn in row) for row in rows]


@pytest.fixture(scope="module")
def folders(embedded_model) -> dict:
    return {"embedded": embedded_model, **{name: F.tokenizers_dir() / name for name in BYTE_LEVEL}}


def assert_same_ids(tok, texts: list[str]) -> None:
    ids, lengths = tok.encode_flat(texts)
    expected, expected_lengths = fast_bpe.flat_ids(tok.backend, texts)
    assert np.array_equal(lengths, expected_lengths)
    assert np.array_equal(ids, expected) and ids.dtype == np.int32


@pytest.mark.parametrize("name", ["embedded", *BYTE_LEVEL])
def test_tiktoken_gives_the_tokenizers_ids(name, folders, tmp_path):
    tok = load_text_tokenizer(str(folders[name]))
    engine, reason = tok.fast_engine
    assert engine is not None, reason
    assert reason == "tiktoken"
    assert_same_ids(tok, chat_texts(tmp_path, 600))
    assert_same_ids(tok, hard_texts(1, 3000))
    assert engine.disagreement is None
    assert engine.rows_checked >= 3 + fast_bpe.SAMPLE_NON_ASCII  # the chat batch: 1 in 256; the hard one: more
    if name == "embedded":  # SmolLM2's vocabulary lacks some control bytes: those rows went to `tokenizers`
        assert engine.unsupported.search("a\x04b") and not engine.unsupported.search("ab")
    if name.startswith("qwen"):  # NFC: rows that normalisation changes went to `tokenizers`
        assert engine.nfc and not engine._takes("cafe\u0301") and engine._takes("café")


@pytest.mark.parametrize("name", ["gemma-2", "phi-3.5", "mistral"])
def test_other_tokenizers_keep_the_tokenizers_library(name, tmp_path):
    tok = load_text_tokenizer(str(F.tokenizers_dir() / name))
    engine, reason = tok.fast_engine
    assert engine is None and reason == "a pre-tokenizer other than byte-level with one regex"
    assert_same_ids(tok, chat_texts(tmp_path, FAST_ENGINE_MIN_ROWS))


def test_no_engine_where_the_loss_mask_needs_the_offsets(folders):
    """encode_flat serves only the byte-length path (byte_offsets.py): a tokenizer that path refuses
    (e.g. a ByteLevel post-processor that trims offsets) is reported as tokenized by `tokenizers`."""
    tok = load_text_tokenizer(str(folders["embedded"]))
    tok.__dict__["byte_lengths"] = None
    assert tok.fast_engine == (None, "the loss mask needs this tokenizer's offsets (byte_offsets.py)")


def test_shapes_it_cannot_translate_are_refused(folders, tmp_path):
    spec = json.loads((folders["embedded"] / "tokenizer.json").read_text())

    def reason(change) -> str:
        changed = json.loads(json.dumps(spec))
        change(changed)
        path = tmp_path / "tokenizer.json"
        path.write_text(json.dumps(changed))
        engine, why = fast_bpe.build(path, None)
        assert engine is None
        return why

    assert reason(lambda s: s.update(normalizer={"type": "NFKC"})) == "a NFKC normaliser"
    assert reason(lambda s: s["pre_tokenizer"].update(add_prefix_space=True)).startswith("a pre-tokenizer")
    assert reason(lambda s: s["added_tokens"][1].update(lstrip=True)).startswith("added tokens that strip")
    longer = {"content": "<|im_start|>x", "id": 99999}
    assert reason(lambda s: s["added_tokens"].append({**s["added_tokens"][1], **longer})) \
        == "an added token that begins another"
    first = spec["model"]["merges"][0]
    merged = "".join(first.split(" ")) if isinstance(first, str) else "".join(first)

    def late_id(s):
        s["model"]["vocab"][merged] = 10**6
    assert reason(late_id) == "token ids that do not follow the order of the merges"


def test_a_difference_turns_the_engine_off_for_good(folders, tmp_path):
    import tiktoken

    tok = load_text_tokenizer(str(folders["embedded"]))
    engine, _ = tok.fast_engine
    real = engine.encoding
    engine.encoding = tiktoken.Encoding("wrong", pat_str=r"\S+|\s+", mergeable_ranks=real._mergeable_ranks,
                                        special_tokens=real._special_tokens)  # splits text otherwise
    texts = chat_texts(tmp_path, 300)
    assert_same_ids(tok, texts)  # the check caught it: the whole batch came from `tokenizers`
    assert engine.disagreement.startswith("row text '<|im_start|>")

    def refuse(*args, **kwargs):
        raise AssertionError("the engine ran after it was turned off")

    engine.encoding = type("Refusing", (), {"encode_to_numpy": refuse})()
    assert_same_ids(tok, texts)


@pytest.mark.parametrize("num_proc", [1, 2])
def test_prepare_says_which_engine_ran_and_stores_the_same_tokens(num_proc, folders, tmp_path):
    data = tmp_path / "chat.jsonl"
    generate(data, 2 * 2048 + 300, seed=7, human_sentences=(1, 3), gpt_sentences=(1, 4))
    cfg = config_for(data, folders["qwen3"])
    cfg.data.num_proc = num_proc
    events = []
    fast = prepare(cfg, load_text_tokenizer(str(folders["qwen3"])), emit=events.append)
    said = [e.message for e in events if e.message.startswith("Tokenized with")]
    assert len(said) == 1 and said[0].startswith("Tokenized with tiktoken; "), said
    assert fast.report["tokenizer"] == {"engine": "tiktoken", "checked": 18,
                                        "note": "18 rows checked against tokenizers: same ids"}
    # ASCII rows: one row in 256 of each batch (in process: 2048 + 2048 + 300 rows; workers: 2 x 2198)
    assert said[0] == "Tokenized with tiktoken; 18 rows checked against tokenizers gave the same ids"
    plain = load_text_tokenizer(str(folders["qwen3"]))
    plain.__dict__["fast_engine"] = (None, "turned off by the test")
    events.clear()
    slow = prepare(cfg, plain, emit=events.append)
    assert [e.message for e in events if e.message.startswith("Tokenized with")] \
        == ["Tokenized with tokenizers (tiktoken does not apply: turned off by the test)"]
    for name in ("ids", "trained", "offsets", "full_lengths"):
        assert np.array_equal(getattr(fast.tokens, name), getattr(slow.tokens, name)), name


def test_data_inspect_names_the_engine_in_json_and_on_a_terminal(embedded_model, tmp_path):
    from terminal import run_terminal

    data = tmp_path / "chat.jsonl"
    generate(data, 300, seed=9, human_sentences=(1, 2), gpt_sentences=(1, 2))
    args = ("data", "inspect", str(data), "--model", str(embedded_model))
    env = {"SLOTHCTL_DATA_CACHE": str(tmp_path / "cache")}
    report = run_cli(*args, "--json", cwd=tmp_path, env=env).json()
    assert report["tokenizer"] == {"engine": "tiktoken", "checked": 2,
                                   "note": "2 rows checked against tokenizers: same ids"}
    shown = run_terminal(*args, cwd=tmp_path, env=env, columns=100)  # a cache hit: the report as stored
    assert shown.returncode == 0, shown.text
    assert "tokenizer   tiktoken (2 rows checked against tokenizers: same ids)" in shown.text
    small = tmp_path / "small.jsonl"
    small.write_text("".join(data.read_text().splitlines(keepends=True)[:10]))
    report = run_cli("data", "inspect", str(small), "--model", str(embedded_model), "--json", cwd=tmp_path,
                     env=env).json()
    assert report["tokenizer"] == {"engine": "tokenizers", "checked": 0, "note": "fewer than 256 rows"}
