"""Examples as the model sees them: decoded tokens in spans that are trained or not, special or not.

`data inspect --show N` renders these; the CLI highlights trained spans and marks special tokens.
"""

from __future__ import annotations

from slothctl.data.pipeline import Prepared
from slothctl.data.tokenizer import TextTokenizer


def spans(tok: TextTokenizer, ids: list[int], trained: list[bool]) -> list[dict]:
    """Runs of tokens with the same (trained, special) kind, each decoded in one piece."""
    special_ids = {tok.token_to_id(t) for t in tok.special_tokens} - {None}
    out: list[dict] = []
    run: list[int] = []
    kind: tuple[bool, bool] | None = None
    for token, is_trained in zip(ids, trained):
        this = (bool(is_trained), token in special_ids)
        if kind is not None and (this != kind or this[1]):
            out.append({"text": tok.decode(run), "trained": kind[0], "special": kind[1]})
            run = []
        run.append(token)
        kind = this
    if run:
        out.append({"text": tok.decode(run), "trained": kind[0], "special": kind[1]})
    return out


def examples(prepared: Prepared, tok: TextTokenizer, count: int) -> list[dict]:
    """The first `count` kept rows (in source order), token spans included."""
    shown = []
    for i in prepared.source_order()[:count].tolist():
        ids, trained = prepared.row(i)
        row = int(prepared.row_numbers[i])
        shown.append({
            "row": row,
            "origin": prepared.origins[row - 1] if prepared.origins else None,
            "split": "eval" if prepared.is_eval[i] else "train",
            "tokens": len(ids),
            "trained_tokens": int(trained.sum()),
            "truncated": bool(prepared.full_lengths[i] > len(ids)),
            "spans": spans(tok, ids.tolist(), trained.tolist()),
        })
    return shown
