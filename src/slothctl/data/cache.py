"""The formatted-data cache: `data format` writes it, `train` reads it, so formatting happens once.

An entry is a folder `<cache>/<key>/` where <cache> is $SLOTHCTL_DATA_CACHE, else
$SLOTHCTL_CACHE/data (default ~/.cache/slothctl/data). The key is a hash of everything that
decides the tokens: the source's content (file hashes, or the hub dataset's fingerprint), the
[data] keys that shape rows (format, columns, max_rows, train_on_responses_only, eval_fraction,
seed, split, subset), the chat template text, the tokenizer files, max_seq_length and the
pipeline version. Change any of them and the key changes: a stale entry is never found.

An entry holds `tokens.arrow` (the kept rows' input_ids and labels, training rows first: an Arrow
IPC stream file that `train` memory-maps, see tables.py), small per-row arrays (.npy), and
`prepared.json` (the report, the template, the dropped rows, the training rows' data hash).

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
from slothctl.data import tables
from slothctl.data.pipeline import Prepared
from slothctl.data.report import Problem
from slothctl.data.templates import ChatTemplate
from slothctl.data.tokenizer import TextTokenizer
from slothctl.errors import DataError
from slothctl.runs import atomic_dir, file_sha256, write_json_atomic

PIPELINE_VERSION = "5"  # bump when the same inputs would give other tokens or another layout (2: empty replies
# are dropped; 3: the rows in one Arrow file; 4: rows tokenized whole, replies trained through their end of turn;
# 5: the source's warnings are stored, so a hit warns, or refuses under strict, as reading the source did)
TOKENS = "tokens.arrow"
ARRAYS = ("full_lengths", "row_numbers", "is_eval")


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
    """Store a prepared dataset under its key, atomically; returns the entry's folder. The training
    rows' fingerprint is hashed in a second thread while the rows are written (both release the GIL:
    on two cores that hides most of its 0.6 s at 100k rows)."""
    from concurrent.futures import ThreadPoolExecutor

    target = cache_dir() / key
    arrays = {"full_lengths": prepared.full_lengths, "row_numbers": prepared.row_numbers,
              "is_eval": prepared.is_eval}
    with atomic_dir(target, replace=True) as tmp, ThreadPoolExecutor(1) as pool:
        train_hash = pool.submit(lambda: prepared.train_hash)
        tables.write(prepared.tokens, tmp / TOKENS)
        for name, array in arrays.items():
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)
        template = prepared.template
        write_json_atomic(tmp / "prepared.json", {
            "report": prepared.report, "format": prepared.format, "detection": prepared.detection,
            "rows": prepared.rows, "source": prepared.source,
            "template": [template.name, template.source, template.end_of_turn] if template else None,
            "invalid": [p.to_json() for p in prepared.invalid],
            "no_trained_tokens": [p.to_json() for p in prepared.no_trained_tokens],
            "train_hash": train_hash.result(),
            "suspects": [{"message": e.message, "hint": e.hint} for e in prepared.suspects]})
        files = {p.name: {"size": p.stat().st_size, "sha256": file_sha256(p)} for p in sorted(tmp.iterdir())}
        write_json_atomic(tmp / "manifest.json", {"key": key, "version": PIPELINE_VERSION, "files": files})
    return target


def read(key: str) -> Prepared | None:
    """The entry for `key` when it is complete and intact, else None (a miss). Its rows stay in the
    file (memory-mapped); reading checks every file's sha256 once, through the page cache."""
    entry = cache_dir() / key
    try:
        manifest = json.loads((entry / "manifest.json").read_text(encoding="utf-8"))
        if manifest.get("key") != key or manifest.get("version") != PIPELINE_VERSION:
            return None
        files = manifest["files"]
        if set(files) != {f"{name}.npy" for name in ARRAYS} | {TOKENS, "prepared.json"}:
            return None
        for name, expected in files.items():
            path = entry / name
            if path.stat().st_size != expected["size"] or file_sha256(path) != expected["sha256"]:
                return None
        return load(entry)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load(entry: Path) -> Prepared:
    """An entry's prepared dataset, its token table memory-mapped (`read` checks the entry first;
    `formatted` loads the entry it has just written)."""
    meta = json.loads((entry / "prepared.json").read_text(encoding="utf-8"))
    arrays = {name: np.load(entry / f"{name}.npy", allow_pickle=False) for name in ARRAYS}
    table = tables.read(entry / TOKENS)
    if table.num_rows != len(arrays["is_eval"]):
        raise ValueError(f"{entry}: {table.num_rows} token rows for {len(arrays['is_eval'])} rows")
    template = ChatTemplate(*meta["template"]) if meta["template"] else None
    return Prepared(source=meta["source"], format=meta["format"], detection=meta["detection"], template=template,
                    rows=meta["rows"], row_numbers=arrays["row_numbers"], is_eval=arrays["is_eval"],
                    full_lengths=arrays["full_lengths"], invalid=[Problem(**p) for p in meta["invalid"]],
                    no_trained_tokens=[Problem(**p) for p in meta["no_trained_tokens"]], report=meta["report"],
                    mapped=table, mapped_file=str(entry / TOKENS), stored_train_hash=meta["train_hash"],
                    suspects=[DataError(s["message"], s["hint"]) for s in meta["suspects"]])
