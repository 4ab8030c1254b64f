"""A light tokenizer for the data pipeline: the model's `tokenizer.json` through the `tokenizers`
library (large batches of a byte-level BPE tokenizer through tiktoken: fast_bpe.py), its special
tokens and its chat template, without importing transformers or torch.

`data inspect` must start fast, and training must tokenize exactly as inspect does: both use this.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from slothctl.errors import UsageError

FAST_ENGINE_MIN_ROWS = 256  # smaller batches: building the fast engine would cost more than it saves
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"]


@dataclass
class TextTokenizer:
    """What the data pipeline needs of a tokenizer. `encode_batch` never adds special tokens:
    the chat template writes them itself."""

    backend: object  # tokenizers.Tokenizer
    chat_template: str | None
    bos_token: str | None
    eos_token: str | None
    pad_token: str | None
    unk_token: str | None = None
    special_tokens: list[str] = field(default_factory=list)  # added special tokens, in id order
    digest: str = ""  # content hash of the tokenizer files (part of the data cache key)
    tokenizer_json: Path | None = None  # the file `backend` was read from

    def encode_flat(self, texts: list[str]):
        """Token ids of many rows: (flat int32 ids, int64 number of tokens per row). Batches of at least
        FAST_ENGINE_MIN_ROWS rows of a byte-level BPE tokenizer go through tiktoken, checked against
        `tokenizers` (fast_bpe.py)."""
        from slothctl.data import fast_bpe

        engine = self.fast_engine[0] if len(texts) >= FAST_ENGINE_MIN_ROWS else None
        return engine.encode(texts) if engine is not None else fast_bpe.flat_ids(self.backend, texts)

    @cached_property
    def fast_engine(self):
        """(fast_bpe's engine for this tokenizer or None, "tiktoken" or why not). Built on first use
        (0.3-1.5 s): the data path asks for it before its threads or workers start."""
        from slothctl.data import fast_bpe

        if self.tokenizer_json is None:
            return None, "no tokenizer.json"
        engine, reason = fast_bpe.build(self.tokenizer_json, self.backend)
        if engine is not None and self.byte_lengths is None:  # encode_flat serves only the byte-length path
            return None, "the loss mask needs this tokenizer's offsets (byte_offsets.py)"
        return engine, reason

    def encode_batch_with_starts(self, texts: list[str]) -> list[tuple[list[int], list[int]]]:
        """Token ids and, for each token, the index of the character it starts at."""
        return [(enc.ids, [start for start, _ in enc.offsets])
                for enc in self.backend.encode_batch(texts, add_special_tokens=False)]

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self.backend.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.backend.id_to_token(token_id)

    def has_token(self, token: str) -> bool:
        """Whether `token` is one token of the vocabulary (so the template's text maps onto it)."""
        token_id = self.token_to_id(token)
        return token_id is not None and self.encode(token) == [token_id]

    @cached_property
    def byte_lengths(self):
        """(bytes per token id, normaliser kind) for byte-level BPE tokenizers, else None (byte_offsets.py)."""
        from slothctl.data.byte_offsets import lengths_table

        return lengths_table(self.backend)

    @property
    def eos_id(self) -> int | None:
        return self.token_to_id(self.eos_token) if self.eos_token else None


def _token_text(value) -> str | None:
    """Special tokens are stored as strings or as {"content": ...} objects."""
    if isinstance(value, dict):
        return value.get("content")
    return value


def tokenizer_folder(model_path: str, revision: str = "") -> Path:
    """A local folder holding the tokenizer files; hub ids are fetched with huggingface_hub (cached)."""
    path = Path(model_path)
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model_path, revision=revision or None, allow_patterns=TOKENIZER_FILES))
    except Exception as exc:  # noqa: BLE001 - network, auth, missing repo: all mean "cannot get it"
        raise UsageError(f"cannot fetch the tokenizer of `{model_path}`: {exc}",
                         "check the model id, your network and HF_TOKEN") from None


def load_text_tokenizer(model_path: str, revision: str = "") -> TextTokenizer:
    folder = tokenizer_folder(model_path, revision)
    tokenizer_json = folder / "tokenizer.json"
    if not tokenizer_json.is_file():
        raise UsageError(f"{folder} has no tokenizer.json (a fast tokenizer)",
                         "save the tokenizer with transformers' save_pretrained, which writes one")
    from tokenizers import Tokenizer

    digest = hashlib.sha256()
    for name in TOKENIZER_FILES:
        if (folder / name).is_file():
            digest.update(f"{name}\0".encode() + (folder / name).read_bytes() + b"\0")
    backend = Tokenizer.from_file(str(tokenizer_json))
    config = {}
    if (folder / "tokenizer_config.json").is_file():
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    if (folder / "special_tokens_map.json").is_file():
        for name, value in json.loads((folder / "special_tokens_map.json").read_text(encoding="utf-8")).items():
            config.setdefault(name, value)
    template = config.get("chat_template")
    if (folder / "chat_template.jinja").is_file():
        template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    if isinstance(template, list):  # named templates: use the default one
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    added = sorted(backend.get_added_tokens_decoder().items())
    return TextTokenizer(
        backend=backend,
        chat_template=template,
        bos_token=_token_text(config.get("bos_token")),
        eos_token=_token_text(config.get("eos_token")),
        pad_token=_token_text(config.get("pad_token")),
        unk_token=_token_text(config.get("unk_token")),
        special_tokens=[tok.content for _, tok in added if tok.special],
        digest=digest.hexdigest(),
        tokenizer_json=tokenizer_json,
    )
