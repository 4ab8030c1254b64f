"""The numbers `data inspect` shows: what the rows look like once rendered, tokenized and masked.

Token lengths are those of the full rendered rows (before truncation), over the rows that could be
rendered; the trained-token fraction is over the tokens the model will actually see (after
truncation, rows with something to train on). Percentiles are nearest-rank: p95 = the length that
95% of rows do not exceed.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from slothctl.data.formats import EMPTY_REASONS

ROLE_ORDER = ("system", "user", "assistant", "tool")


@dataclass
class Problem:
    """A row that is dropped: its 1-based number, where it came from, and why."""

    row: int
    origin: str
    reason: str

    def to_json(self) -> dict:
        return {"row": self.row, "origin": self.origin, "reason": self.reason}

    def describe(self) -> str:
        return f"row {self.row} ({self.origin}): {self.reason}"


def _percentile(values: np.ndarray, q: float) -> int:
    return int(np.percentile(values, q, method="inverted_cdf"))


def token_stats(lengths: np.ndarray) -> dict:
    if len(lengths) == 0:
        return {"min": 0, "mean": 0.0, "p50": 0, "p95": 0, "max": 0, "total": 0}
    return {"min": int(lengths.min()), "mean": round(float(lengths.mean()), 1), "p50": _percentile(lengths, 50),
            "p95": _percentile(lengths, 95), "max": int(lengths.max()), "total": int(lengths.sum())}


def turn_stats(turns: list[int]) -> dict | None:
    if not turns:
        return None
    array = np.asarray(turns)
    return {"min": int(array.min()), "mean": round(float(array.mean()), 2), "max": int(array.max())}


def build_report(*, source: str, rows: int, fmt: str, detection: str, template, end_of_turn: str | None,
                 pad_token: str | None, responses_only: bool, max_length: int, full_lengths: np.ndarray,
                 problems: list[Problem], dropped: list[Problem], roles: Counter, turns: list[int],
                 duplicates: list[int], kept_tokens: int, kept_trained: int, train_rows: int, eval_rows: int,
                 eval_fraction: float, seed: int) -> dict:
    """One JSON-ready object; `data inspect --json` prints it and the cache stores it."""
    truncated = int((full_lengths > max_length).sum())
    ordered_roles = {r: roles[r] for r in ROLE_ORDER if roles.get(r)}
    ordered_roles.update({r: n for r, n in sorted(roles.items()) if r not in ordered_roles})
    return {
        "source": source,
        "rows": rows,
        "format": fmt,
        "detection": detection,
        "chat_template": template.name if template else None,
        "end_of_turn": end_of_turn,
        "pad_token": pad_token,
        "train_on_responses_only": responses_only,
        "roles": ordered_roles,
        "turns": turn_stats(turns),
        "tokens": token_stats(full_lengths),
        "max_seq_length": max_length,
        "truncated": truncated,
        "truncated_pct": round(100.0 * truncated / len(full_lengths), 2) if len(full_lengths) else 0.0,
        "trained_tokens": kept_trained,
        "trained_token_fraction": round(kept_trained / kept_tokens, 4) if kept_tokens else 0.0,
        "invalid": [p.row for p in problems],
        "empty": [p.row for p in problems if p.reason in EMPTY_REASONS],
        "no_trained_tokens": [p.row for p in dropped],
        "problems": [p.to_json() for p in problems + dropped],
        "duplicates": {"count": len(duplicates), "rows": duplicates},
        "train_rows": train_rows,
        "eval_rows": eval_rows,
        "eval_fraction": eval_fraction,
        "seed": seed,
    }
