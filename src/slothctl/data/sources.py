"""Reading rows from where the data lives: local files, folders of them, or a hub dataset.

Every row keeps where it came from ("train.jsonl:7", "part-0.parquet#12") so that messages can
point at it, and every source has a fingerprint (the files' content hashes, or the hub dataset's
own fingerprint) that keys the formatted-data cache.

File types: .jsonl (one object per line), .json (a list of objects, or one {"key": [...]}),
.csv (a header row, then one row per record), .parquet, and .txt: one `text` row per paragraph
(blank lines separate paragraphs), the usual unit for continued pre-training with packing.
Folders are read recursively in name order; hidden files and other file types are skipped.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from slothctl.errors import DataError
from slothctl.models import HUB_ID

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".txt")


@dataclass
class Rows:
    rows: list[dict]
    origin: list[str]  # where each row came from, for messages
    fingerprint: dict = field(default_factory=dict)  # what the rows were read from (cache key)
    skipped: list[str] = field(default_factory=list)  # files of a folder that were not read
    suspects: list[DataError] = field(default_factory=list)  # read, but probably not as meant (warnings)


def is_hub_id(source: str) -> bool:
    return bool(HUB_ID.match(source)) and not source.lower().endswith(SUFFIXES)


def source_files(path: Path) -> tuple[list[Path], list[Path]]:
    """The data files of a file or folder (and, for a folder, the files skipped)."""
    if not path.exists():
        raise DataError(f"data source {path} does not exist",
                        "check the path ([data] source is relative to the project file)")
    if not path.is_dir():
        if path.suffix.lower() not in SUFFIXES:
            raise DataError(f"{path}: unsupported file type `{path.suffix or path.name}`",
                            f"use one of: {', '.join(SUFFIXES)}")
        return [path], []
    files, skipped = [], []
    for candidate in sorted(path.rglob("*")):
        relative = candidate.relative_to(path)
        if any(part.startswith(".") for part in relative.parts) or candidate.is_dir():
            continue
        (files if candidate.suffix.lower() in SUFFIXES else skipped).append(candidate)
    if not files:
        raise DataError(f"folder {path} holds no data files", f"supported: {', '.join(SUFFIXES)}")
    return files, skipped


def _read_bytes(file: Path) -> bytes:
    try:
        return file.read_bytes()
    except PermissionError:
        raise DataError(f"{file}: cannot be read (permission denied)") from None
    except IsADirectoryError:
        raise DataError(f"{file}: is a folder, not a data file") from None
    except OSError as exc:
        raise DataError(f"{file}: cannot be read ({exc.strerror or exc})") from None


def _decode(file: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(f"{file}: line {line}: not UTF-8 text (byte {exc.start})",
                        "save the file as UTF-8") from None


def _jsonl(file: Path, name: str, data: bytes, out: Rows) -> None:
    rows, origin, loads = out.rows, out.origin, json.loads
    for number, line in enumerate(_decode(file, data).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{file}: line {number}: malformed JSON ({exc.msg} at column {exc.colno})",
                            "each line must be one JSON object") from None
        if not isinstance(row, dict):
            raise DataError(f"{file}: line {number}: expected a JSON object, got {_kind(row)}",
                            "each line must be one JSON object")
        rows.append(row)
        origin.append(f"{name}:{number}")


def _json(file: Path, name: str, data: bytes, out: Rows) -> None:
    try:
        value = json.loads(_decode(file, data))
    except json.JSONDecodeError as exc:
        raise DataError(f"{file}: line {exc.lineno}: malformed JSON ({exc.msg} at column {exc.colno})") from None
    if isinstance(value, dict):  # {"data": [...]} or {"train": [...]}
        lists = [v for v in value.values() if isinstance(v, list)]
        value = lists[0] if len(lists) == 1 else value
    if not isinstance(value, list):
        raise DataError(f"{file}: expected a JSON list of objects, got {_kind(value)}",
                        "write a list [{...}, {...}] or use .jsonl, one object per line")
    for index, row in enumerate(value):
        if not isinstance(row, dict):
            raise DataError(f"{file}: item {index + 1}: expected a JSON object, got {_kind(row)}")
        out.rows.append(row)
        out.origin.append(f"{name}#{index + 1}")


def _csv(file: Path, name: str, data: bytes, out: Rows) -> None:
    """A header, then records. Parsed strictly: a quote that is never closed, or text right after a
    closing quote, is refused with its line rather than read as one field that swallows the records
    after it; a quoted field that does end but spans lines looking like records is reported."""
    reader = csv.DictReader(io.StringIO(_decode(file, data), newline=""), strict=True)
    line = 0  # the last line of the previous record
    try:
        header = reader.fieldnames
        if not header:
            return
        if any(not (col or "").strip() for col in header):
            raise DataError(f"{file}: line 1: the header has an empty column name")
        line = reader.line_num
        for record in reader:
            start, line = line + 1, reader.line_num
            if None in record:
                raise DataError(f"{file}: line {start}: {len(header) + len(record[None])} fields, but the "
                                f"header has {len(header)}", "quote fields that contain commas")
            if line > start:
                _check_spanning_field(file, record, start, len(header), out)
            out.rows.append({k: v for k, v in record.items() if v is not None})
            out.origin.append(f"{name}:{start}")
    except csv.Error as exc:
        raise _csv_error(file, line + 1, reader.reader.line_num, exc) from None  # DictReader lags on errors


def _csv_error(file: Path, start: int, failed: int, exc: csv.Error) -> DataError:
    """A strict-mode failure, located at the record where it starts (usually where a quote opened)."""
    fix = 'close the quote, and write a quote inside a quoted field as two ("")'
    if "unexpected end of data" in str(exc):
        swallowed = f", so it swallows lines {start + 1}-{failed}" if failed > start else ""
        return DataError(f"{file}: line {start}: a quote opened in this record is never closed{swallowed} "
                         "(to the end of the file)", fix)
    where = f" (in the record that starts on line {start}: is a quote opened there unclosed?)" if failed > start else ""
    return DataError(f"{file}: line {failed}: malformed CSV ({exc}){where}", fix)


def _check_spanning_field(file: Path, record: dict, start: int, columns: int, out: Rows) -> None:
    """A quoted field over several lines is normal (a multi-line reply), unless most of its lines look
    like records of their own: then a quote was probably left open and closed by chance records later."""
    offset = 0  # lines of the record before this field's first line
    for column, value in record.items():
        if not isinstance(value, str):
            continue
        lines = value.split("\n")
        record_like = [start + offset + i for i, text in enumerate(lines) if i and _fields(text) == columns]
        if len(record_like) >= 2 and 2 * len(record_like) >= len(lines) - 1:
            out.suspects.append(DataError(
                f"{file}: line {start}: the quoted `{column}` field runs to line {start + offset + len(lines) - 1}, "
                f"and {_lines(record_like)} look like records of their own: is a quote on line {start} unclosed?",
                "close that quote; if those line breaks belong to the text, ignore this (--strict refuses it)"))
        offset += len(lines) - 1


def _fields(text: str) -> int:
    try:
        return len(next(csv.reader([text])))
    except (csv.Error, StopIteration):
        return 0


def _lines(numbers: list[int]) -> str:
    if numbers == list(range(numbers[0], numbers[-1] + 1)):
        return f"lines {numbers[0]}-{numbers[-1]}"
    return "lines " + ", ".join(map(str, numbers[:5])) + (", …" if len(numbers) > 5 else "")


def _txt(file: Path, name: str, data: bytes, out: Rows) -> None:
    rows, origin = out.rows, out.origin
    paragraph: list[str] = []
    start = 0
    for number, line in enumerate(_decode(file, data).split("\n"), start=1):
        if line.strip():
            if not paragraph:
                start = number
            paragraph.append(line.rstrip("\r"))
        elif paragraph:
            rows.append({"text": "\n".join(paragraph)})
            origin.append(f"{name}:{start}")
            paragraph = []
    if paragraph:
        rows.append({"text": "\n".join(paragraph)})
        origin.append(f"{name}:{start}")


def _parquet(file: Path, name: str, data: bytes, out: Rows) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{file}: not a readable parquet file ({' '.join(str(exc).split())})") from None
    records = table.to_pylist()
    out.rows.extend(records)
    out.origin.extend(f"{name}#{i + 1}" for i in range(len(records)))


READERS: dict[str, Callable] = {".jsonl": _jsonl, ".json": _json, ".csv": _csv, ".parquet": _parquet,
                                ".txt": _txt}


def _kind(value) -> str:
    return {list: "a list", dict: "an object", str: "a string", type(None): "null"}.get(type(value), "a number")


def read_local(path: Path) -> Rows:
    """All rows of a file or folder, in file-name order."""
    from concurrent.futures import ThreadPoolExecutor

    files, skipped = source_files(path)
    out = Rows([], [], {"files": []}, [str(p.relative_to(path)) for p in skipped])
    with ThreadPoolExecutor(1) as hasher:  # hashlib lets go of the GIL: a file is hashed while it is parsed
        for file in files:
            data = _read_bytes(file)
            digest = hasher.submit(_sha256, data)
            name = _file_name(path, file)
            READERS[file.suffix.lower()](file, name, data, out)
            out.fingerprint["files"].append([name, len(data), digest.result()])
    return out


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_name(source: Path, file: Path) -> str:
    """How rows and fingerprints name a file: relative to a folder source, else its own name."""
    return str(file.relative_to(source)) if source.is_dir() else file.name


def fingerprint_local(path: Path) -> dict:
    """The fingerprint `read_local` would give, from the files' bytes alone (no parsing)."""
    files, _ = source_files(path)
    digests = []
    for file in files:
        data = _read_bytes(file)
        digests.append([_file_name(path, file), len(data), _sha256(data)])
    return {"files": digests}


def _load_hub(dataset_id: str, subset: str, split: str):
    try:
        import datasets
    except ImportError:
        raise DataError("reading a hub dataset needs the `datasets` package", "pip install datasets") from None
    datasets.disable_progress_bars()
    try:
        return datasets.load_dataset(dataset_id, subset or None, split=split)
    except Exception as exc:  # noqa: BLE001 - network, auth, missing repo or split: all mean "cannot load"
        raise DataError(f"cannot load hub dataset `{dataset_id}`"
                        f"{f' (subset {subset})' if subset else ''}, split `{split}`: {' '.join(str(exc).split())}",
                        "check the id, [data] subset/split and your network; a local path must exist "
                        "relative to the TOML") from None


def _hub_fingerprint(loaded, dataset_id: str, subset: str, split: str) -> dict:
    return {"hub": dataset_id, "subset": subset, "split": split, "fingerprint": getattr(loaded, "_fingerprint", None)}


def read_hub(dataset_id: str, subset: str, split: str) -> Rows:
    """A dataset from the Hugging Face hub (or its local cache) through `datasets.load_dataset`."""
    loaded = _load_hub(dataset_id, subset, split)
    rows = loaded.to_list()
    return Rows(rows, [f"{dataset_id}:{split}#{i + 1}" for i in range(len(rows))],
                _hub_fingerprint(loaded, dataset_id, subset, split))


def resolve_source(source: str, base: Path) -> Path | str:
    """A local path (relative to `base`) when it exists or looks like a file, else a hub id."""
    path = Path(source).expanduser()
    path = path if path.is_absolute() else base / path
    if path.exists() or not is_hub_id(source):
        return path
    return source


def read_source(source: str, base: Path, subset: str = "", split: str = "train") -> Rows:
    where = resolve_source(source, base)
    return read_local(where) if isinstance(where, Path) else read_hub(where, subset, split)


def fingerprint_source(source: str, base: Path, subset: str = "", split: str = "train") -> dict:
    where = resolve_source(source, base)
    if isinstance(where, Path):
        return fingerprint_local(where)
    return _hub_fingerprint(_load_hub(where, subset, split), where, subset, split)
