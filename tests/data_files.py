"""Small data files and tokenizer variants for the data tests (made in the tests, never downloaded)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from slothctl.config import build

LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def config_for(source: Path | str, model: Path | str, **data) -> object:
    """A Config for `source` with the tokenizer of `model` (a folder), data keys as given."""
    sets = {"model": {"name": str(model), "max_seq_length": data.pop("max_seq_length", 2048)},
            "data": {"source": str(source), **data}}
    return build(sets, "test")


def sharegpt(*turns: tuple[str, str]) -> dict:
    return {"conversations": [{"from": who, "value": text} for who, text in turns]}


def tokenizer_copy(embedded: Path, target: Path, *, add_special: list[str] = (), rename: dict | None = None,
                   config: dict | None = None, template: str | None = "keep", only_special: list | None = None) -> Path:
    """A copy of the embedded model's tokenizer files with special tokens added or renamed (or all but
    `only_special` made ordinary), tokenizer_config.json entries changed, and the chat template kept,
    replaced or removed."""
    from tokenizers import AddedToken, Tokenizer

    target.mkdir(parents=True, exist_ok=True)
    data = json.loads((embedded / "tokenizer.json").read_text())
    for old, new in (rename or {}).items():
        for added in data["added_tokens"]:
            if added["content"] == old:
                added["content"] = new
        data["model"]["vocab"][new] = data["model"]["vocab"].pop(old)
    for added in data["added_tokens"]:
        if only_special is not None:
            added["special"] = added["content"] in only_special
    (target / "tokenizer.json").write_text(json.dumps(data))
    if add_special:
        tok = Tokenizer.from_file(str(target / "tokenizer.json"))
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in add_special])
        tok.save(str(target / "tokenizer.json"))
    settings = json.loads((embedded / "tokenizer_config.json").read_text())
    settings.update(config or {})
    (target / "tokenizer_config.json").write_text(json.dumps(settings))
    if template == "keep":
        shutil.copy(embedded / "chat_template.jinja", target / "chat_template.jinja")
    elif template is not None:
        (target / "chat_template.jinja").write_text(template)
    return target
