"""Tiny random-weight models of the model families slothctl names, each with its family's real
tokenizer and real chat template, for the tests and the device benchmarks.

The material is offline: the llama-cpp-python sdist (fetched with pip, as `slothctl export prepare`
does) vendors llama.cpp's vocabulary GGUFs (`models/ggml-vocab-*.gguf`: complete vocabularies,
merges or scores, token types) and the published chat templates (`models/templates/*.jinja`).
Each tokenizer is rebuilt from a vocabulary GGUF with the family's own transformers tokenizer
class (its pre-tokenizer and normaliser), the special tokens and settings of the published model
repository, and saved with save_pretrained; SentencePiece families also get a `tokenizer.model`
(llama.cpp's converter reads it). Then each model is its family's transformers architecture, two
layers of width 64, random weights, built so that its first greedy token is the family's
end-of-turn token (see `_force_end_of_turn`): with random weights there is no other way to see a
chat stop.

Two caches under $SLOTHCTL_CACHE/families/ (built once, under a lock, renamed into place whole):
`tokenizers-v{VERSION}/` (82 MB) and `models-v{VERSION}/<family>/` (185 MB). A machine without the
sdist (the device: no internet) gets the tokenizers as an archive (10.4 MiB) and sets
SLOTHCTL_FAMILY_TOKENIZERS to it; the models are then built there.

    python tests/families.py build            build both caches (prints where)
    python tests/families.py pack DIR         write DIR/tokenizers.tar.xz (for the device)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

VERSION = "1"  # bump when anything below changes what is built
TOKENIZERS_ENV = "SLOTHCTL_FAMILY_TOKENIZERS"

# SentencePiece / GGUF token types
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


@dataclass(frozen=True)
class Family:
    """One model family as its published instruct repository sets it up."""

    name: str  # test id
    label: str  # for people
    architecture: str  # transformers class
    vocab: str  # models/ggml-vocab-<vocab>.gguf
    template: str  # models/templates/<template>.jinja
    tokenizer_class: str  # the transformers class the repository's tokenizer_config names
    bos: str | None
    eos: str  # the tokenizer's eos, as the repository sets it
    end_of_turn: str  # the token that ends an assistant reply in the template
    generation_eos: tuple[str, ...]  # generation_config.json eos_token_id, as the repository lists them
    pad: str | None
    unk: str | None
    size: int  # tokens in the tokenizer (a GGUF may pad the vocabulary beyond)
    vocab_size: int  # rows of the model's embedding
    config: dict = field(default_factory=dict)  # architecture settings beyond the common ones
    renames: dict = field(default_factory=dict)  # id -> token: where the vocabulary GGUF differs
    not_special: tuple[str, ...] = ()  # added tokens that are not special
    rstrip: tuple[str, ...] = ()  # added tokens that swallow the whitespace after them
    add_bos: bool = False  # the tokenizer adds bos when encoding (the template writes it too)
    spm: bool = False  # SentencePiece family: ships tokenizer.model
    add_dummy_prefix: bool = True  # SentencePiece's leading space
    system: str = "native"  # or "merged": the template has no system role (folded into the first user turn)
    ollama: str | None = None  # the Modelfile template family slothctl must pick
    note: str = ""


COMMON = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, initializer_range=0.02)

QWEN25_ADDED = ["<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>",
                "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>",
                "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
                "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"]
QWEN3_ADDED = QWEN25_ADDED + ["<tool_response>", "</tool_response>", "<think>", "</think>"]
QWEN_NOT_SPECIAL = ("<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
                    "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>", "<think>", "</think>")
PHI_RSTRIP = ("<|assistant|>", "<|placeholder1|>", "<|placeholder2|>", "<|placeholder3|>", "<|placeholder4|>",
              "<|system|>", "<|end|>", "<|placeholder5|>", "<|placeholder6|>", "<|user|>", "</s>")

FAMILIES = {f.name: f for f in [
    Family("llama-3.1", "Llama 3.1 / 3.3", "LlamaForCausalLM", "llama-bpe", "meta-llama-Llama-3.1-8B-Instruct",
           "PreTrainedTokenizerFast", "<|begin_of_text|>", "<|eot_id|>", "<|eot_id|>",
           ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"), None, None, 128256, 128256,
           config=dict(rope_theta=500000.0, rms_norm_eps=1e-5, max_position_embeddings=131072, tie_word_embeddings=True,
                       rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                     "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
           renames={128004: "<|finetune_right_pad_id|>", 128008: "<|eom_id|>", 128010: "<|python_tag|>"},
           add_bos=True, ollama="llama-3.1", note="Llama 3 vocabulary (llama-bpe), Llama 3.1 Instruct template and token names"),
    Family("qwen2.5", "Qwen 2.5", "Qwen2ForCausalLM", "qwen2", "Qwen-Qwen2.5-7B-Instruct", "Qwen2Tokenizer",
           None, "<|im_end|>", "<|im_end|>", ("<|im_end|>", "<|endoftext|>"), "<|endoftext|>", None, 151665, 151936,
           config=dict(rope_theta=1000000.0, rms_norm_eps=1e-6, max_position_embeddings=32768,
                       tie_word_embeddings=True, use_sliding_window=False),
           renames={151646 + i: t for i, t in enumerate(QWEN25_ADDED)}, not_special=QWEN_NOT_SPECIAL, ollama="chatml"),
    Family("qwen3", "Qwen 3", "Qwen3ForCausalLM", "qwen2", "Qwen-Qwen3-0.6B", "Qwen2Tokenizer",
           None, "<|im_end|>", "<|im_end|>", ("<|im_end|>", "<|endoftext|>"), "<|endoftext|>", None, 151669, 151936,
           config=dict(rope_theta=1000000.0, rms_norm_eps=1e-6, max_position_embeddings=40960, head_dim=16,
                       tie_word_embeddings=True),
           renames={151646 + i: t for i, t in enumerate(QWEN3_ADDED)}, not_special=QWEN_NOT_SPECIAL, ollama="chatml",
           note="the Qwen2 vocabulary GGUF with Qwen 3's added tokens (<think>, </think>, …) at their ids"),
    Family("gemma-2", "Gemma 2", "Gemma2ForCausalLM", "gemma-4", "google-gemma-2-2b-it", "GemmaTokenizer",
           "<bos>", "<eos>", "<end_of_turn>", ("<eos>", "<end_of_turn>"), "<pad>", "<unk>", 262144, 262144,
           config=dict(head_dim=16, query_pre_attn_scalar=16, sliding_window=512, attn_logit_softcapping=50.0,
                       final_logit_softcapping=30.0, rms_norm_eps=1e-6, max_position_embeddings=8192,
                       hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True),
           renames={105: "<start_of_turn>", 106: "<end_of_turn>"}, add_bos=True, spm=True, add_dummy_prefix=False,
           system="merged", ollama="gemma",
           note="the Gemma 3/4 vocabulary (gemma-4 GGUF; Gemma 2's is not vendored) with its turn tokens at ids "
                "105/106 named as Gemma 2 names them"),
    Family("phi-3.5", "Phi 3.5 mini", "Phi3ForCausalLM", "phi-3", "microsoft-Phi-3.5-mini-instruct", "LlamaTokenizer",
           "<s>", "<|endoftext|>", "<|end|>", ("<|end|>", "<|assistant|>", "<|endoftext|>"), "<|endoftext|>",
           "<unk>", 32011, 32064,
           config=dict(rope_theta=10000.0, rms_norm_eps=1e-5, max_position_embeddings=4096, tie_word_embeddings=False,
                       num_key_value_heads=4),
           not_special=("</s>",), rstrip=PHI_RSTRIP, spm=True, ollama="phi-3",
           note="without Phi 3.5's long-context rope scaling"),
    Family("mistral", "Mistral 7B Instruct", "MistralForCausalLM", "llama-spm", "mistralai-Mistral-Nemo-Instruct-2407",
           "LlamaTokenizer", "<s>", "</s>", "</s>", ("</s>",), None, "<unk>", 32000, 32000,
           config=dict(rope_theta=1000000.0, rms_norm_eps=1e-5, max_position_embeddings=32768, sliding_window=None,
                       tie_word_embeddings=False),
           add_bos=True, spm=True, ollama="mistral",
           note="the Llama 2 / Mistral 7B v0.1 SentencePiece vocabulary (llama-spm; [INST] is text) with the "
                "[INST] template of Mistral Nemo Instruct (the one vendored)"),
]}
FAST = ("phi-3.5",)  # the family the default test run takes through train → chat → merge → GGUF


# ---- caches --------------------------------------------------------------------------------------------------

def cache_root() -> Path:
    from slothctl.models import cache_root as slothctl_cache

    return slothctl_cache() / "families"


@contextlib.contextmanager
def _locked(name: str):
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build_once(target: Path, marker: str, build) -> Path:
    """`target` complete (its `marker` file written last), built by `build(tmp)` under a lock if missing."""
    if (target / marker).is_file():
        return target
    from slothctl.runs import atomic_dir

    with _locked(target.name):
        if (target / marker).is_file():
            return target
        if target.exists():  # a leftover without its marker: never trusted
            shutil.rmtree(target)
        with atomic_dir(target) as tmp:
            build(tmp)
            (tmp / marker).write_text(json.dumps({"version": VERSION}) + "\n")
    return target


def tokenizers_dir() -> Path:
    """The built tokenizers (one folder per family): built once from the llama-cpp-python sdist, or
    unpacked once from $SLOTHCTL_FAMILY_TOKENIZERS (the archive `pack` writes) where that is set."""
    packed = os.environ.get(TOKENIZERS_ENV)
    build = _build_tokenizers if not packed else lambda tmp: _unpack(Path(packed), tmp)
    return _build_once(cache_root() / f"tokenizers-v{VERSION}", "families.json", build)


def _unpack(archive: Path, out: Path) -> None:
    with tarfile.open(archive, "r:xz") as packed:
        packed.extractall(out, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    info = json.loads((out / "families.json").read_text())
    if info.get("version") != VERSION:
        raise RuntimeError(f"{archive} holds version {info.get('version')} tokenizers, this is version {VERSION}")
    (out / "families.json").unlink()  # written again, last, by _build_once


def model_dir(name: str) -> Path:
    """The tiny model of family `name`: a folder transformers loads (weights, config, tokenizer)."""
    family = FAMILIES[name]
    tokenizer = tokenizers_dir() / name
    return _build_once(cache_root() / f"models-v{VERSION}" / name, "slothctl_family.json",
                       lambda tmp: _build_model(family, tokenizer, tmp))


# ---- the sdist ---------------------------------------------------------------------------------------------

def _sdist_members(wanted: list[str], into: Path) -> None:
    """Extract vendor/llama.cpp/<wanted> from the installed llama-cpp-python's sdist (fetched with pip,
    which keeps it in its HTTP cache) into `into`."""
    from slothctl.export.tools import PACKAGE, installed_version

    version = installed_version()
    if version is None:
        raise RuntimeError(f"the family fixtures need {PACKAGE} (its sdist vendors the vocabularies)")
    with tempfile.TemporaryDirectory(prefix="families-sdist-") as download:
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", PACKAGE, "--quiet",
                               "--disable-pip-version-check", "-d", download, f"{PACKAGE}=={version}"],
                              capture_output=True, text=True)
        found = sorted(Path(download).glob("*.tar.gz"))
        if proc.returncode != 0 or not found:
            raise RuntimeError(f"pip could not download the {PACKAGE}=={version} sdist: {proc.stderr[-500:]}")
        with tarfile.open(found[0], "r:gz") as archive:
            for member in archive.getmembers():
                parts = member.name.split("/", 3)
                if len(parts) == 4 and parts[1:3] == ["vendor", "llama.cpp"] and parts[3] in wanted:
                    target = into / parts[3]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(archive.extractfile(member).read())
    missing = [w for w in wanted if not (into / w).is_file()]
    if missing:
        raise RuntimeError(f"the {PACKAGE} {version} sdist lacks {missing}")


# ---- tokenizers ----------------------------------------------------------------------------------------------

@dataclass
class Vocabulary:
    """A vocabulary GGUF's tokenizer data."""

    tokens: list[str]
    types: list[int]
    scores: list[float] | None
    merges: list[str] | None


_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


def read_metadata(path: Path) -> dict:
    """The key/value metadata of a GGUF file (the vocabulary files have no tensors worth reading).
    A direct reader: gguf-py's takes a minute on a 262k-token vocabulary, this a second."""
    import struct

    data = path.read_bytes()
    pos = 0

    def take(fmt: str):
        nonlocal pos
        value = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize("<" + fmt)
        return value[0]

    def string() -> str:
        nonlocal pos
        length = take("Q")
        pos += length
        return data[pos - length:pos].decode("utf-8")

    def value(kind: int):
        nonlocal pos
        if kind == _STRING:
            return string()
        if kind == _ARRAY:
            inner, count = take("I"), take("Q")
            if inner == _STRING:
                return [string() for _ in range(count)]
            fmt = "<%d%s" % (count, _SCALARS[inner])
            items = list(struct.unpack_from(fmt, data, pos))
            pos += struct.calcsize(fmt)
            return items
        return take(_SCALARS[kind])

    if data[:4] != b"GGUF":
        raise ValueError(f"{path} is not a GGUF file")
    pos = 4
    take("I")  # version
    take("Q")  # tensors
    entries = take("Q")
    metadata = {}
    for _ in range(entries):
        key = string()
        metadata[key] = value(take("I"))
    return metadata


def read_vocabulary(path: Path) -> Vocabulary:
    meta = read_metadata(path)
    return Vocabulary(meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"],
                      meta.get("tokenizer.ggml.scores"), meta.get("tokenizer.ggml.merges"))


def _family_vocabulary(family: Family, vocab: Vocabulary) -> Vocabulary:
    """The vocabulary as the family's repository has it: renamed tokens, nothing past `size`."""
    tokens, types = list(vocab.tokens[: family.size]), list(vocab.types[: family.size])
    for token_id, token in family.renames.items():
        tokens[token_id] = token
        types[token_id] = USER_DEFINED if token in family.not_special else CONTROL
    return Vocabulary(tokens, types, vocab.scores[: family.size] if vocab.scores else None, vocab.merges)


def _added(family: Family, vocab: Vocabulary) -> list[tuple[int, str, bool]]:
    """Tokens the tokenizer treats as added (never split), with whether they are special: control
    tokens and the unknown token are, user-defined ones are not."""
    return [(i, t, kind != USER_DEFINED) for i, (t, kind) in enumerate(zip(vocab.tokens, vocab.types))
            if kind in (CONTROL, USER_DEFINED) or (kind == UNKNOWN and t == family.unk)]


def _bpe_merges(vocab: Vocabulary) -> list[tuple[str, str]]:
    return [tuple(m.split(" ", 1)) for m in vocab.merges]


def _spm_merges(vocab: Vocabulary, specials: set[str]) -> list[tuple[str, str]]:
    """Merges of a SentencePiece BPE vocabulary from its piece scores, as transformers derives them."""
    from transformers.convert_slow_tokenizer import generate_merges

    ids = {t: i for i, t in enumerate(vocab.tokens)}
    scores = {t: s for t, s, kind in zip(vocab.tokens, vocab.scores, vocab.types) if kind == NORMAL}
    return generate_merges(ids, scores, skip_tokens=specials)


def _spm_scores(vocab: Vocabulary, merges: list[tuple[str, str]]) -> list[float]:
    """Piece scores for a SentencePiece model when the GGUF has none: minus the rank of the first merge
    that makes the piece (SentencePiece's BPE merges the highest-scoring pair first)."""
    rank: dict[str, int] = {}
    for i, (left, right) in enumerate(merges):
        rank.setdefault(left + right, i)
    return [-float(rank[t]) if t in rank else 0.0 for t in vocab.tokens]


def _sentencepiece_model(family: Family, vocab: Vocabulary, scores: list[float]) -> bytes:
    """A SentencePiece BPE model with this vocabulary (what llama.cpp's converter reads)."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    model = pb.ModelProto()
    model.trainer_spec.model_type = pb.TrainerSpec.BPE
    model.trainer_spec.vocab_size = len(vocab.tokens)
    model.trainer_spec.byte_fallback = True
    model.trainer_spec.unk_id = vocab.tokens.index(family.unk)
    model.trainer_spec.bos_id = vocab.tokens.index(family.bos) if family.bos else -1
    model.trainer_spec.eos_id = vocab.tokens.index(family.eos if family.eos in ("</s>", "<eos>") else "</s>")
    model.trainer_spec.pad_id = vocab.tokens.index(family.pad) if family.pad in vocab.tokens else -1
    model.normalizer_spec.name = "identity"
    model.normalizer_spec.add_dummy_prefix = family.add_dummy_prefix
    model.normalizer_spec.remove_extra_whitespaces = False
    model.normalizer_spec.escape_whitespaces = True
    kinds = {NORMAL: pb.ModelProto.SentencePiece.NORMAL, UNKNOWN: pb.ModelProto.SentencePiece.UNKNOWN,
             CONTROL: pb.ModelProto.SentencePiece.CONTROL, USER_DEFINED: pb.ModelProto.SentencePiece.USER_DEFINED,
             UNUSED: pb.ModelProto.SentencePiece.UNUSED, BYTE: pb.ModelProto.SentencePiece.BYTE}
    for token, score, kind in zip(vocab.tokens, scores, vocab.types):
        piece = model.pieces.add()
        piece.piece, piece.score = token, score
        piece.type = kinds[UNKNOWN if token == family.unk else kind]
    return model.SerializeToString()


LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def _llama3_backend(vocab: Vocabulary):
    """Llama 3's tokenizer.json as Meta publishes it: byte-level BPE behind its own split pattern."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(vocab.tokens)}, merges=_bpe_merges(vocab),
                               ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    bos = vocab.tokens[128000]
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
        processors.TemplateProcessing(single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
                                      special_tokens=[(bos, 128000)])])
    return tok


def build_tokenizer(family: Family, vocab: Vocabulary, template: str):
    """The family's transformers tokenizer over this vocabulary, configured as its repository is."""
    import transformers
    from tokenizers import AddedToken

    vocab = _family_vocabulary(family, vocab)
    added = _added(family, vocab)
    specials = {t for _, t, _ in added}

    settings = dict(bos_token=family.bos, eos_token=family.eos, pad_token=family.pad, unk_token=family.unk)
    if family.tokenizer_class == "PreTrainedTokenizerFast":
        tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=_llama3_backend(vocab), **settings)
    else:
        cls = getattr(transformers, family.tokenizer_class)
        if family.spm and vocab.merges is None:
            merges = _spm_merges(vocab, specials)
        else:
            merges = _bpe_merges(vocab)
        extra = dict(legacy=False, add_prefix_space=family.add_dummy_prefix) if cls is transformers.LlamaTokenizer \
            else {}
        tokenizer = cls(vocab={t: i for i, t in enumerate(vocab.tokens)}, merges=merges,
                        **{k: v for k, v in settings.items() if v is not None}, **extra)
    tokenizer.add_tokens([AddedToken(t, special=special, normalized=False, rstrip=t in family.rstrip)
                          for _, t, special in added])
    for token_id, text, _ in added:
        if tokenizer.convert_tokens_to_ids(text) != token_id:
            raise RuntimeError(f"{family.name}: {text} got id {tokenizer.convert_tokens_to_ids(text)}, not {token_id}")
    if len(tokenizer) != family.size:
        raise RuntimeError(f"{family.name}: {len(tokenizer)} tokens, expected {family.size}")
    tokenizer.chat_template = template
    tokenizer.add_bos_token = family.add_bos
    tokenizer.clean_up_tokenization_spaces = False
    if family.pad is None:
        tokenizer.pad_token = None
    return tokenizer, vocab


def _build_tokenizers(out: Path) -> None:
    families = list(FAMILIES.values())
    wanted = sorted({f"models/ggml-vocab-{f.vocab}.gguf" for f in families}
                    | {f"models/templates/{f.template}.jinja" for f in families})
    with tempfile.TemporaryDirectory(prefix="families-material-") as material:
        material = Path(material)
        _sdist_members(wanted, material)
        vocabularies: dict[str, Vocabulary] = {}
        for family in families:
            if family.vocab not in vocabularies:
                vocabularies[family.vocab] = read_vocabulary(material / f"models/ggml-vocab-{family.vocab}.gguf")
            template = (material / f"models/templates/{family.template}.jinja").read_text(encoding="utf-8")
            tokenizer, vocab = build_tokenizer(family, vocabularies[family.vocab], template)
            target = out / family.name
            tokenizer.save_pretrained(target)
            _fix_tokenizer_config(target, family)
            if family.spm:
                merges = _bpe_merges(vocab) if vocab.merges else None
                scores = vocab.scores if not vocab.merges else _spm_scores(vocab, merges)
                (target / "tokenizer.model").write_bytes(_sentencepiece_model(family, vocab, scores))
    (out / "families.json").write_text(json.dumps({"version": VERSION, "families": list(FAMILIES)}) + "\n")


def _fix_tokenizer_config(folder: Path, family: Family) -> None:
    """The class name and the bos behaviour the repository's tokenizer_config.json states."""
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = family.tokenizer_class
    config["add_bos_token"] = family.add_bos
    config["clean_up_tokenization_spaces"] = False
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# ---- models --------------------------------------------------------------------------------------------------

def _force_end_of_turn(model, end_id: int) -> None:
    """Make the end-of-turn token the first greedy choice after any prompt: every token's embedding
    gets a shared component on dimension 0 (so the final hidden state always points that way) and the
    end-of-turn token's output row twice as much of it. Everything else stays random."""
    import torch

    with torch.no_grad():
        embed = model.get_input_embeddings().weight
        embed[:, 0] = 1.0
        head = model.get_output_embeddings().weight
        if head.data_ptr() != embed.data_ptr():
            head[:, 0] = 0.0
            head[end_id, 0] = 1.0
        head[end_id, 0] = 2.0


def _build_model(family: Family, tokenizer_dir: Path, out: Path) -> None:
    import torch
    import transformers
    from transformers import AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    ids = {name: tokenizer.convert_tokens_to_ids(t) if t else None
           for name, t in (("bos", family.bos), ("eos", family.eos), ("pad", family.pad))}
    settings = {**COMMON, **family.config, "vocab_size": family.vocab_size, "bos_token_id": ids["bos"],
                "eos_token_id": ids["eos"], "pad_token_id": ids["pad"]}
    config_class = getattr(transformers, family.architecture.replace("ForCausalLM", "Config"))
    config = config_class(**settings)
    config.architectures = [family.architecture]
    torch.manual_seed(0)
    model = getattr(transformers, family.architecture)(config).to(torch.bfloat16)
    _force_end_of_turn(model, tokenizer.convert_tokens_to_ids(family.end_of_turn))
    eos = [tokenizer.convert_tokens_to_ids(t) for t in family.generation_eos]
    model.generation_config = GenerationConfig(bos_token_id=ids["bos"], eos_token_id=eos if len(eos) > 1 else eos[0],
                                               pad_token_id=ids["pad"])
    model.save_pretrained(out)
    for item in tokenizer_dir.iterdir():
        shutil.copy2(item, out / item.name)
    (out / "slothctl_family.json").write_text(json.dumps({"family": family.name, "version": VERSION}) + "\n")


def main(argv: list[str]) -> None:
    if argv[:1] == ["build"]:
        print(tokenizers_dir())
        for name in FAMILIES:
            print(model_dir(name))
    elif argv[:1] == ["pack"] and len(argv) == 2:
        target = Path(argv[1])
        target.mkdir(parents=True, exist_ok=True)
        archive = target / "tokenizers.tar.xz"
        with tarfile.open(archive.with_suffix(".tmp"), "w:xz") as packed:
            for item in sorted(tokenizers_dir().rglob("*")):
                packed.add(item, arcname=str(item.relative_to(tokenizers_dir())), recursive=False)
        os.replace(archive.with_suffix(".tmp"), archive)
        print(f"{archive}: {archive.stat().st_size / 2**20:.1f} MiB")
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    main(sys.argv[1:])
