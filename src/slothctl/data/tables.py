"""The tokenized rows as the trainer reads them: an Arrow table with `input_ids` and `labels`.

The pipeline keeps its rows in flat numpy arrays (encode.Tokenized). The trainer gets them as an
Arrow table whose columns are list arrays over those same buffers (token ids are not copied), or,
from the data cache, memory-mapped from an Arrow IPC stream file, which is the format `datasets`
itself writes and maps. No row ever becomes a Python list on the way: a 100k-row dataset costs
the trainer only the pages it reads, not ~70 bytes a token per column.

Also here: the rows' lengths from the list offsets, and the fingerprint of the training rows that
resume compares (computed from the buffers, equal to the row-by-row hash of earlier versions).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from slothctl.data.encode import IGNORE, Tokenized

COLUMNS = ("input_ids", "labels")
BATCH_ROWS = 1000  # rows per record batch in the file (what `datasets` writes too)
HASH_TOKENS = 1 << 20  # tokens widened to int64 at a time while hashing


def _schema():
    import pyarrow as pa

    return pa.schema([(name, pa.list_(pa.int32())) for name in COLUMNS])


def _int32(values: np.ndarray):
    """An Arrow int32 array over a numpy array's buffer. Not `pa.array`: converting numpy through it
    imports pandas (half a second at start-up, for nothing)."""
    import pyarrow as pa

    values = np.ascontiguousarray(values, dtype=np.int32)
    return pa.Array.from_buffers(pa.int32(), len(values), [None, pa.py_buffer(values)])


def _numpy(array) -> np.ndarray:
    """An Arrow int32 array (no nulls) as a numpy view of its buffer (not `to_numpy`: it imports pandas)."""
    if array.null_count:
        raise ValueError("unexpected nulls in a token table")
    data = array.buffers()[1]
    return np.frombuffer(data, dtype=np.int32, count=array.offset + len(array))[array.offset:] if data \
        else np.zeros(0, np.int32)


def record_batch(tokens: Tokenized, start: int, stop: int):
    """Rows start..stop-1 as one record batch: ids are a view of the flat array, labels are the ids
    with untrained tokens set to -100 (made here, for these rows only)."""
    import pyarrow as pa

    first, last = int(tokens.offsets[start]), int(tokens.offsets[stop])
    offsets = _int32(tokens.offsets[start:stop + 1] - first)
    ids = tokens.ids[first:last]
    labels = np.where(tokens.trained[first:last], ids, np.int32(IGNORE)).astype(np.int32, copy=False)
    return pa.RecordBatch.from_arrays(
        [pa.ListArray.from_arrays(offsets, _int32(ids)), pa.ListArray.from_arrays(offsets, _int32(labels))],
        schema=_schema())


def _batches(tokens: Tokenized, start: int, stop: int):
    for at in range(start, stop, BATCH_ROWS):
        yield record_batch(tokens, at, min(stop, at + BATCH_ROWS))


def to_table(tokens: Tokenized, start: int = 0, stop: int | None = None):
    """Rows start..stop-1 as an in-memory Arrow table (for when the cache cannot be written)."""
    import pyarrow as pa

    stop = len(tokens) if stop is None else stop
    return pa.Table.from_batches(list(_batches(tokens, start, stop)), schema=_schema())


def write(tokens: Tokenized, path: Path) -> None:
    """All rows into an Arrow IPC stream file, batch by batch (memory stays at one batch's labels)."""
    import pyarrow as pa

    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, _schema()) as writer:
        for batch in _batches(tokens, 0, len(tokens)):
            writer.write_batch(batch)


def read(path: Path):
    """The table of a file written by `write`, memory-mapped: nothing is read until it is used."""
    import pyarrow as pa

    with pa.memory_map(str(path)) as source:
        table = pa.ipc.open_stream(source).read_all()
    if table.schema != _schema():
        raise ValueError(f"{path}: unexpected columns {table.schema}")
    return table


def row_lengths(table) -> np.ndarray:
    """Tokens per row, from the list offsets of `input_ids` (no token is read)."""
    if table.num_rows == 0:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([np.zeros(0, np.int64)] + [np.diff(_numpy(chunk.offsets)).astype(np.int64)
                                                      for chunk in table.column("input_ids").chunks])


def to_tokenized(table, full_lengths: np.ndarray) -> Tokenized:
    """The flat arrays of a table, copied out of it (for small uses such as tests and --out)."""
    column_ids, column_labels = table.column("input_ids"), table.column("labels")
    ids = np.concatenate([np.zeros(0, np.int32)] + [_numpy(c.flatten()) for c in column_ids.chunks])
    labels = np.concatenate([np.zeros(0, np.int32)] + [_numpy(c.flatten()) for c in column_labels.chunks])
    offsets = np.concatenate([[0], np.cumsum(row_lengths(table))]).astype(np.int64)
    return Tokenized(ids.astype(np.int32, copy=False), labels != IGNORE, offsets, full_lengths)


def fingerprint(tokens: Tokenized, start: int, stop: int) -> str:
    """sha256 (16 hex digits) of rows start..stop-1 as the trainer sees them: per row its token ids
    and its labels as 64-bit integers, then "|". The same bytes the row-wise hash of slothctl 0.x
    fed, so checkpoints written before keep their data hash; here they come from the flat buffers,
    a few million tokens at a time."""
    digest = hashlib.sha256()
    row = start
    while row < stop:
        first = int(tokens.offsets[row])
        end = int(np.searchsorted(tokens.offsets, first + HASH_TOKENS, side="right")) - 1
        end = min(stop, max(end, row + 1))
        last = int(tokens.offsets[end])
        ids = tokens.ids[first:last].astype("<i8")
        labels = np.where(tokens.trained[first:last], ids, IGNORE).astype("<i8", copy=False)
        ids_bytes, label_bytes = memoryview(ids).cast("B"), memoryview(labels).cast("B")
        bounds = ((tokens.offsets[row:end + 1] - first) * 8).tolist()
        for a, b in zip(bounds, bounds[1:]):
            digest.update(ids_bytes[a:b])
            digest.update(label_bytes[a:b])
            digest.update(b"|")
        row = end
    return digest.hexdigest()[:16]

