"""What `slothctl data inspect` and `slothctl data format` do, as library functions returning JSON-ready dicts."""

from __future__ import annotations

import json
from pathlib import Path

from slothctl import interrupts, models
from slothctl.config import Config
from slothctl.data import formats
from slothctl.data.encode import Segmenter
from slothctl.data.pipeline import Prepared, load_rows, prepare
from slothctl.data.tokenizer import TextTokenizer, load_text_tokenizer
from slothctl.events import Emit, ignore, status
from slothctl.runs import open_atomic


def project_tokenizer(cfg: Config, emit: Emit = ignore) -> TextTokenizer:
    """The tokenizer of [model] name (the embedded model is converted on first use)."""
    resolved = models.resolve(cfg.model.name, cfg.project_dir, emit)
    return load_text_tokenizer(resolved.path, cfg.model.revision)


def inspect(cfg: Config, *, show: int = 0, strict: bool | None = None, emit: Emit = ignore) -> dict:
    """The report on the configured dataset (see report.py), plus `show` examples token by token.
    The formatted rows go into the data cache that `train` reads (or come from it): inspecting
    100k rows costs the tokenizing once, and the `train` after it is a cache hit."""
    from slothctl.data import formatted
    from slothctl.data.examples import examples

    tok = project_tokenizer(cfg, emit)
    prepared = formatted(cfg, tok, emit, strict)
    report = {"model": cfg.model.name, **prepared.report}
    report["cache"] = {"key": prepared.cache["key"], "formatted": prepared.cache["path"] is not None,
                       "hit": prepared.cache["hit"]}
    if show:
        if not prepared.origins:  # a cache hit: the origins are not stored
            prepared.origins = load_rows(cfg).origin
        report["examples"] = examples(prepared, tok, show)
    return report


@interrupts.deferring
def format_data(cfg: Config, *, out: Path | None = None, strict: bool | None = None, emit: Emit = ignore) -> dict:
    """Format and tokenize into the cache (or find it there); with `out`, also write the rendered texts."""
    from slothctl.data import formatted

    tok = project_tokenizer(cfg, emit)
    prepared = formatted(cfg, tok, emit, strict, must_store=True)
    interrupts.check("while formatting the data")
    report = prepared.report
    result = {
        "cache": prepared.cache["path"], "key": prepared.cache["key"], "hit": prepared.cache["hit"],
        "rows": report["rows"], "format": report["format"], "chat_template": report["chat_template"],
        "train_rows": report["train_rows"], "eval_rows": report["eval_rows"], "invalid": len(report["invalid"]),
        "no_trained_tokens": len(report["no_trained_tokens"]), "truncated": report["truncated"],
        "max_seq_length": report["max_seq_length"], "tokens": report["tokens"],
        "trained_token_fraction": report["trained_token_fraction"],
    }
    if out is not None:
        written = write_rendered(cfg, tok, prepared, Path(out), emit)
        result["out"] = str(written)
    return result


def write_rendered(cfg: Config, tok: TextTokenizer, prepared: Prepared, out: Path, emit: Emit = ignore) -> Path:
    """One JSON line per kept row: its number, origin, split, token count and the rendered text with
    the trained parts listed. Written to a temporary file and renamed, so never half written."""
    source = load_rows(cfg)
    template = prepared.template
    end = template.end_of_turn if template else tok.eos_token
    segmenter = Segmenter(template.source if template else None, end, tok, cfg.data.train_on_responses_only)
    lengths = prepared.lengths
    out = out.expanduser().resolve()
    with open_atomic(out) as handle:
        for i in prepared.source_order().tolist():
            row = int(prepared.row_numbers[i])
            standard = formats.standardise(prepared.format, source.rows[row - 1])
            segments = segmenter.text(standard) if isinstance(standard, str) else segmenter.conversation(standard)
            length = int(lengths[i])
            handle.write(json.dumps({
                "row": row, "origin": source.origin[row - 1], "split": "eval" if prepared.is_eval[i] else "train",
                "tokens": length, "truncated": bool(prepared.full_lengths[i] > length),
                "text": "".join(text for text, _ in segments),
                "trained": [text for text, trained in segments if trained and text]},
                ensure_ascii=False) + "\n")
    status(emit, f"Wrote {len(prepared.row_numbers)} rendered rows to {out}")
    return out
