"""The formatted-data cache: `data format` writes it, `train` reads it, so formatting happens once.

An entry is a folder `<cache>/<key>/` where <cache> is $SLOTHCTL_DATA_CACHE, else
$SLOTHCTL_CACHE/data (default ~/.cache/slothctl/data). The key is a hash of everything that
decides the tokens: the source's content (file hashes, or the hub dataset's fingerprint), the
[data] keys that shape rows (format, columns, max_rows, train_on_responses_only, eval_fraction,
seed, split, subset), the chat template text, the tokenizer files, max_seq_length and the
pipeline version. Change any of them and the key changes: a stale entry is never found.

An entry is written to a temporary folder and renamed into place, with `manifest.json` (the key,
every file's size and sha256) written last; an entry is used only when its manifest matches its
files, so a partial or damaged entry is never used (it is rebuilt).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from slothctl.config import Config
from slothctl.data.encode import Tokenized
from slothctl.data.pipeline import Prepared
from slothctl.data.report import Problem
from slothctl.data.templates import ChatTemplate
from slothctl.data.tokenizer import TextTokenizer
from slothctl.runs import atomic_dir, file_sha256, write_json_atomic

PIPELINE_VERSION = "2"  # bump when the same inputs would give other tokens
ARRAYS = ("ids", "trained", "offsets", "full_lengths", "row_numbers", "is_eval")


def cache_dir() -> Path:
    if os.environ.get("SLOTHCTL_DATA_CACHE"):
        return Path(os.environ["SLOTHCTL_DATA_CACHE"]).expanduser()
    from slothctl.models import cache_root

    return cache_root() / "data"


def cache_key(cfg: Config, source_fingerprint: dict, tok: TextTokenizer, template: ChatTemplate | None) -> str:
    data = cfg.data
    inputs = {
        "version": PIPELINE_VERSION,
        "source": source_fingerprint,
        "data": {"format": data.format, "columns": data.columns, "max_rows": data.max_rows,
                 "train_on_responses_only": data.train_on_responses_only, "eval_fraction": data.eval_fraction,
                 "seed": data.seed, "split": data.split, "subset": data.subset},
        "template": [template.name, template.source, template.end_of_turn] if template else None,
        "tokenizer": tok.digest,
        "max_seq_length": cfg.model.max_seq_length,
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:32]


def write(prepared: Prepared, key: str) -> Path:
    """Store a prepared dataset under its key, atomically; returns the entry's folder."""
    target = cache_dir() / key
    arrays = {"ids": prepared.tokens.ids, "trained": prepared.tokens.trained, "offsets": prepared.tokens.offsets,
              "full_lengths": prepared.tokens.full_lengths, "row_numbers": prepared.row_numbers,
              "is_eval": prepared.is_eval}
    with atomic_dir(target, replace=True) as tmp:
        for name, array in arrays.items():
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)
        template = prepared.template
        write_json_atomic(tmp / "prepared.json", {
            "report": prepared.report, "format": prepared.format, "detection": prepared.detection,
            "rows": prepared.rows, "source": prepared.source,
            "template": [template.name, template.source, template.end_of_turn] if template else None,
            "invalid": [p.to_json() for p in prepared.invalid],
            "no_trained_tokens": [p.to_json() for p in prepared.no_trained_tokens]})
        files = {p.name: {"size": p.stat().st_size, "sha256": file_sha256(p)} for p in sorted(tmp.iterdir())}
        write_json_atomic(tmp / "manifest.json", {"key": key, "version": PIPELINE_VERSION, "files": files})
    return target


def read(key: str) -> Prepared | None:
    """The entry for `key` when it is complete and intact, else None (a miss)."""
    entry = cache_dir() / key
    try:
        manifest = json.loads((entry / "manifest.json").read_text(encoding="utf-8"))
        if manifest.get("key") != key or manifest.get("version") != PIPELINE_VERSION:
            return None
        files = manifest["files"]
        if set(files) != {f"{name}.npy" for name in ARRAYS} | {"prepared.json"}:
            return None
        for name, expected in files.items():
            path = entry / name
            if path.stat().st_size != expected["size"] or file_sha256(path) != expected["sha256"]:
                return None
        meta = json.loads((entry / "prepared.json").read_text(encoding="utf-8"))
        arrays = {name: np.load(entry / f"{name}.npy", allow_pickle=False) for name in ARRAYS}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    template = ChatTemplate(*meta["template"]) if meta["template"] else None
    tokens = Tokenized(arrays["ids"], arrays["trained"], arrays["offsets"], arrays["full_lengths"])
    return Prepared(source=meta["source"], format=meta["format"], detection=meta["detection"], template=template,
                    rows=meta["rows"], tokens=tokens, row_numbers=arrays["row_numbers"], is_eval=arrays["is_eval"],
                    invalid=[Problem(**p) for p in meta["invalid"]],
                    no_trained_tokens=[Problem(**p) for p in meta["no_trained_tokens"]], report=meta["report"])
