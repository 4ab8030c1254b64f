"""The data pipeline: source rows → standard messages → chat template → tokens + loss mask → split.

`prepare` is what `train` uses and what `data inspect` reports on, so what is inspected is what
is trained.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from slothctl.config import Config
from slothctl.data import formats
from slothctl.data.encode import Encoded, conversation_segments, encode_segments, text_segments
from slothctl.data.sources import Rows, read_local
from slothctl.data.tokenizer import TextTokenizer
from slothctl.errors import DataError
from slothctl.events import Emit, ignore, status
from slothctl.resources import chat_template_names, chat_template_text

BATCH = 1024


@dataclass
class ChatTemplate:
    name: str  # "tokenizer" for the model's own, else a bundled template name
    source: str


@dataclass
class Prepared:
    train: list[Encoded]
    eval: list[Encoded]
    format: str
    detection: str
    template: ChatTemplate | None
    rows: int
    invalid: list[tuple[str, str]] = field(default_factory=list)  # (origin, reason)
    no_trained_tokens: list[str] = field(default_factory=list)
    truncated: int = 0


def choose_chat_template(choice: str, tok: TextTokenizer) -> ChatTemplate:
    """`auto`: the tokenizer's own template, else chatml. A name forces a bundled template."""
    if choice == "auto":
        if tok.chat_template:
            return ChatTemplate("tokenizer", tok.chat_template)
        choice = "chatml"
    if choice not in chat_template_names():
        raise DataError(f"unknown chat template `{choice}`", f"bundled: {', '.join(chat_template_names())}")
    return ChatTemplate(choice, chat_template_text(choice))


def load_rows(cfg: Config) -> Rows:
    rows = read_local(cfg.resolve_path(cfg.data.source))
    if cfg.data.columns:
        mapping = cfg.data.columns
        rows.rows = [{mapping.get(k, k): v for k, v in row.items()} for row in rows.rows]
    if cfg.data.max_rows:
        rows.rows, rows.origin = rows.rows[: cfg.data.max_rows], rows.origin[: cfg.data.max_rows]
    if not rows.rows:
        raise DataError(f"the dataset {cfg.data.source} is empty")
    return rows


def split(items: list, eval_fraction: float, seed: int) -> tuple[list, list]:
    """Deterministic train/eval split: the same seed and rows give the same split everywhere."""
    if eval_fraction <= 0 or len(items) < 2:
        return items, []
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(len(items) * eval_fraction))
    held = set(order[:n_eval])
    return [x for i, x in enumerate(items) if i not in held], [x for i, x in enumerate(items) if i in held]


def prepare(cfg: Config, tok: TextTokenizer, emit: Emit = ignore) -> Prepared:
    source = load_rows(cfg)
    detection = formats.detect(source.rows, cfg.data.format)
    status(emit, detection.reason)
    conversational = formats.is_conversational(detection.format)
    template = choose_chat_template(cfg.data.chat_template, tok) if conversational else None
    invalid: list[tuple[str, str]] = []
    kept_origin: list[str] = []
    batch_segments = []
    for row, origin in zip(source.rows, source.origin):
        try:
            standard = formats.standardise(detection.format, row)
            if isinstance(standard, str):
                segments = text_segments(standard, tok)
            else:
                segments = conversation_segments(standard, template.source, tok, cfg.data.train_on_responses_only)
        except formats.RowError as exc:
            invalid.append((origin, str(exc)))
            continue
        batch_segments.append(segments)
        kept_origin.append(origin)
    encoded: list[Encoded] = []
    for start in range(0, len(batch_segments), BATCH):
        encoded += encode_segments(batch_segments[start:start + BATCH], tok, cfg.model.max_seq_length)
    usable = [(e, o) for e, o in zip(encoded, kept_origin) if e.trained_tokens > 0]
    no_trained = [o for e, o in zip(encoded, kept_origin) if e.trained_tokens == 0]
    if not usable:
        raise DataError(f"no row of {cfg.data.source} has anything to train on "
                        f"({len(invalid)} invalid, {len(no_trained)} without assistant tokens)",
                        invalid[0][0] + ": " + invalid[0][1] if invalid else None)
    train, evaluation = split([e for e, _ in usable], cfg.data.eval_fraction, cfg.data.seed)
    return Prepared(train=train, eval=evaluation, format=detection.format, detection=detection.reason,
                    template=template, rows=len(source.rows), invalid=invalid, no_trained_tokens=no_trained,
                    truncated=sum(1 for e, _ in usable if e.truncated))
