"""Reading rows from where the data lives. Every row keeps its 1-based number in the source so
that messages can point at it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from slothctl.errors import DataError

LOCAL_SUFFIXES = (".jsonl", ".json")


@dataclass
class Rows:
    rows: list[dict]
    origin: list[str]  # "file:line" for each row, for messages
    files: list[Path]  # local files read (for cache keys); empty for hub datasets


def _read_jsonl(path: Path, rows: list[dict], origin: list[str]) -> None:
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}: line {number}: malformed JSON ({exc.msg} at column {exc.colno})",
                                "each line must be one JSON object") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}: line {number}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
            origin.append(f"{path.name}:{number}")


def _read_json(path: Path, rows: list[dict], origin: list[str]) -> None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: line {exc.lineno}: malformed JSON ({exc.msg})") from None
    if isinstance(data, dict):  # {"data": [...]} or {"train": [...]}
        lists = [v for v in data.values() if isinstance(v, list)]
        data = lists[0] if len(lists) == 1 else None
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise DataError(f"{path}: expected a JSON list of objects")
    rows.extend(data)
    origin.extend(f"{path.name}[{i}]" for i in range(len(data)))


READERS = {".jsonl": _read_jsonl, ".json": _read_json}


def read_local(path: Path) -> Rows:
    if not path.exists():
        raise DataError(f"data source {path} does not exist", "check [data] source (relative to the TOML)")
    files = sorted(p for p in path.iterdir() if p.suffix in READERS) if path.is_dir() else [path]
    if path.is_dir() and not files:
        raise DataError(f"folder {path} holds no {', '.join(READERS)} files")
    rows: list[dict] = []
    origin: list[str] = []
    for file in files:
        reader = READERS.get(file.suffix.lower())
        if reader is None:
            raise DataError(f"{file}: unsupported file type `{file.suffix}`",
                            f"use one of: {', '.join(READERS)}")
        try:
            reader(file, rows, origin)
        except UnicodeDecodeError as exc:
            raise DataError(f"{file}: not UTF-8 text (byte {exc.start})") from None
        except PermissionError:
            raise DataError(f"{file}: cannot be read (permission denied)") from None
        except IsADirectoryError:
            raise DataError(f"{file}: is a folder") from None
    return Rows(rows, origin, files)
