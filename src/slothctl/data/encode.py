"""From a standard row to the tokens the model trains on and the mask of the loss.

A conversation is rendered with the chat template and cut into segments: the text before each
assistant reply (not trained) and the reply itself up to and including its end-of-turn token
(trained). The cuts come from the template itself: reply i starts where the rendering of the
messages before it with the generation prompt ends (what `chat` feeds the model), its text is found
by rendering once more with a marker in its place, and it ends with the end-of-turn token written
after that text; no per-model string matching is involved. The whole row is then tokenized in one
piece, as transformers' `apply_chat_template` does, and a token is trained when it starts in a reply.

Rendering every prefix of every row is slow (the Jinja sandbox costs ~50 µs a call), so for
templates that only copy contents into their output (chat_template.content_use) the cuts are
computed once per *shape* (the sequence of roles) on placeholder contents, and each row is then
assembled by substitution. The first row of every shape is also cut the slow way and the two must
agree, else that shape keeps using the slow way.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from itertools import chain

import numpy as np

from slothctl.data.byte_offsets import char_to_byte, utf8_length
from slothctl.data.chat_template import content_use, fold_system, lacks_system_role, render
from slothctl.data.formats import RowError
from slothctl.data.tokenizer import TextTokenizer

IGNORE = -100

Segments = list[tuple[str, bool]]  # (text, trained)


class TemplateFailure(RowError):
    """The chat template raised on a row (or cannot locate its reply): never skipped, always reported."""


@dataclass
class Encoded:
    """One training example as the trainer consumes it."""

    input_ids: list[int]
    labels: list[int]
    full_length: int  # before truncation

    @property
    def truncated(self) -> bool:
        return self.full_length > len(self.input_ids)

    @property
    def trained_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE)


@dataclass
class Tokenized:
    """Many rows' tokens in flat arrays: row i is ids[offsets[i]:offsets[i+1]] (already truncated)."""

    ids: np.ndarray  # int32
    trained: np.ndarray  # bool, per token: counts in the loss
    offsets: np.ndarray  # int64, len(rows) + 1
    full_lengths: np.ndarray  # int32, tokens per row before truncation

    def __len__(self) -> int:
        return len(self.full_lengths)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def trained_counts(self) -> np.ndarray:
        counts = np.zeros(len(self), dtype=np.int64)
        filled = self.lengths > 0
        if filled.any():
            counts[filled] = np.add.reduceat(self.trained, self.offsets[:-1][filled], dtype=np.int64)
        return counts

    def select(self, *masks: np.ndarray) -> "Tokenized":
        """The rows of each mask in turn, in new arrays."""
        return Tokenized.assemble([self], *masks)

    @staticmethod
    def assemble(parts: list["Tokenized"], *masks: np.ndarray) -> "Tokenized":
        """The rows that each mask selects, mask after mask, in new arrays; a mask runs over the rows
        of all parts in turn. Each part is dropped from `parts` once copied, so the tokens are held
        about once on the way, not twice (a concatenation and then a selection)."""
        bounds = np.cumsum([0] + [len(part) for part in parts]).tolist()
        lengths = np.concatenate([np.zeros(0, np.int64)] + [part.lengths for part in parts])
        full_lengths = np.concatenate([np.zeros(0, np.int32)] + [part.full_lengths for part in parts])
        sizes = [int(lengths[mask].sum()) for mask in masks]
        ids, trained = np.empty(sum(sizes), np.int32), np.empty(sum(sizes), bool)
        cursors = np.cumsum([0] + sizes[:-1]).tolist()
        for index, (low, high) in enumerate(zip(bounds, bounds[1:])):
            part = parts[index]
            for group, mask in enumerate(masks):
                keep_tokens = np.repeat(mask[low:high], part.lengths)
                count = int(np.count_nonzero(keep_tokens))
                np.compress(keep_tokens, part.ids, out=ids[cursors[group]:cursors[group] + count])
                np.compress(keep_tokens, part.trained, out=trained[cursors[group]:cursors[group] + count])
                cursors[group] += count
            parts[index] = None
        kept = np.concatenate([lengths[mask] for mask in masks])
        return Tokenized(ids, trained, np.concatenate([[0], np.cumsum(kept)]).astype(np.int64),
                         np.concatenate([full_lengths[mask] for mask in masks]))

    def example(self, i: int) -> Encoded:
        start, end = self.offsets[i], self.offsets[i + 1]
        ids = self.ids[start:end]
        labels = np.where(self.trained[start:end], ids, IGNORE)
        return Encoded(ids.tolist(), labels.tolist(), int(self.full_lengths[i]))

    @staticmethod
    def concat(parts: list["Tokenized"]) -> "Tokenized":
        if not parts:
            return Tokenized(np.zeros(0, np.int32), np.zeros(0, bool), np.zeros(1, np.int64), np.zeros(0, np.int32))
        lengths = np.concatenate([p.lengths for p in parts])
        return Tokenized(np.concatenate([p.ids for p in parts]), np.concatenate([p.trained for p in parts]),
                         np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                         np.concatenate([p.full_lengths for p in parts]))


# ---- cutting conversations ----------------------------------------------------------------------------------------

_OPEN, _CLOSE, _PAD_L, _PAD_R = "\u27e6", "\u27e7", "\u2002", "\u2003"  # ⟦ ⟧ en-space em-space
# Put in a reply's place to find it: its first and last characters differ from any placeholder's,
# trimmed or not, so the renderings with and without it part exactly where the reply does.
_MARK = "\u27eaSLOTHCTL-REPLY-7f3a\u27eb"  # ⟪…⟫
_PLACEHOLDER = re.compile(f"({_PAD_L}?){_OPEN}(\\d+){_CLOSE}({_PAD_R}?)")


@dataclass
class _Plan:
    """The segments of one shape as format strings: {j} is content j, {n+j} content j trimmed."""

    segments: list[tuple[str, bool]]
    trims: bool
    checked: bool = False


class Segmenter:
    """Cuts conversations (or raw text) into (text, trained) segments that end with the end-of-turn token."""

    def __init__(self, template: str | None, end_token: str, tok: TextTokenizer, responses_only: bool):
        self.template = template
        self.end = end_token
        self.bos, self.eos = tok.bos_token, tok.eos_token
        self.responses_only = responses_only
        self.use = content_use(template) if template else "inspected"
        self.folds_system = bool(template) and lacks_system_role(template, self.bos, self.eos)
        self.plans: dict[tuple, _Plan | TemplateFailure | None] = {}

    # The exact way: render every prefix.
    def _draw(self, messages: list[dict], generation_prompt: bool = False) -> str:
        try:
            return render(self.template, messages, add_generation_prompt=generation_prompt,
                          bos_token=self.bos, eos_token=self.eos)
        except Exception as exc:  # noqa: BLE001 - jinja raises many kinds; all mean "cannot render"
            message = " ".join(str(exc).split()) or type(exc).__name__
            raise TemplateFailure(f"the chat template cannot render it: {message}") from None

    def exact(self, messages: list[dict]) -> Segments:
        full = self._draw(messages)
        if self.responses_only and any(m["role"] == "assistant" for m in messages):
            segments, closed = self._cut_at_replies(messages, full)
        else:
            segments = [(full, not self.responses_only)]
            closed = full.rstrip().endswith(self.end) or bool(self.eos) and full.rstrip().endswith(self.eos)
        if not closed:  # the template does not end the example: we do
            segments.append((self.end, not self.responses_only or messages[-1]["role"] == "assistant"))
        return segments

    def _cut_at_replies(self, messages: list[dict], full: str) -> tuple[Segments, bool]:
        """Each reply is trained from where the generation prompt before it ends (what `chat` feeds the
        model; Qwen 3's empty think block after it is part of the reply) through the end-of-turn token
        after its text; what follows that token (a newline, the next turn) is not. Returns the segments
        and whether the last reply ends with the end-of-turn token."""
        segments: Segments = []
        done, closed = 0, False  # characters of `full` already assigned
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            begin, finish = self._locate(messages, i, full)
            if begin < done:
                raise TemplateFailure("the chat template moves the assistant text, so its reply cannot be located")
            prompt = self._draw(messages[:i], generation_prompt=True) if i else None  # a leading reply: its text
            start = len(prompt) if prompt is not None and done <= len(prompt) <= begin and full.startswith(prompt) \
                else begin
            rest = full[finish:]
            gap = len(rest) - len(rest.lstrip())
            closed = rest[gap:].startswith(self.end)
            end = finish + gap + len(self.end) if closed else finish
            if start > done:
                segments.append((full[done:start], False))
            segments.append((full[start:end], True))
            done = end
        if done < len(full):
            segments.append((full[done:], False))
        return segments, closed

    def _locate(self, messages: list[dict], i: int, full: str) -> tuple[int, int]:
        """Where message i's text is in `full`: render again with a marker in its place; the text is
        what lies between the common beginning and the common end of both renderings."""
        marked = self._draw([dict(m, content=_MARK) if j == i else m for j, m in enumerate(messages)])
        if _MARK not in marked:
            raise TemplateFailure("the chat template does not write the assistant text, so its reply "
                                  "cannot be located")
        begin = len(os.path.commonprefix([full, marked]))
        tail = len(os.path.commonprefix([full[::-1], marked[::-1]]))
        return begin, len(full) - min(tail, len(full) - begin, len(marked) - begin)

    # The fast way: one plan per shape.
    def _plan(self, roles: tuple) -> _Plan | TemplateFailure | None:
        placeholders = [{"role": role, "content": f"{_PAD_L}{_OPEN}{j}{_CLOSE}{_PAD_R}"}
                        for j, role in enumerate(roles)]
        try:
            drawn = self.exact(placeholders)
        except TemplateFailure as exc:
            return exc
        n, trims, segments = len(roles), False, []
        for text, trained in drawn:
            parts, literals, last = [], [], 0
            for match in _PLACEHOLDER.finditer(text):
                left, j, right = match.group(1), int(match.group(2)), match.group(3)
                if bool(left) != bool(right) or j >= n:
                    return None  # stripped on one side only: not a plain copy
                literals.append(text[last:match.start()])
                parts += [_escape(literals[-1]), "{%d}" % (j if left else n + j)]
                trims = trims or not left
                last = match.end()
            literals.append(text[last:])
            parts.append(_escape(literals[-1]))
            if any(_OPEN in piece or _CLOSE in piece for piece in literals):
                return None  # a placeholder was cut or changed
            segments.append(("".join(parts), trained))
        return _Plan(segments, trims)

    def conversation(self, messages: list[dict]) -> Segments:
        if self.folds_system and messages[0]["role"] == "system":
            messages = fold_system(messages)
        if self.use == "inspected" or (self.use == "truthiness" and not all(m["content"] for m in messages)):
            return self.exact(messages)
        roles = tuple(m["role"] for m in messages)
        plan = self.plans.get(roles, False)
        if plan is False:
            plan = self.plans[roles] = self._plan(roles)
        if plan is None:
            return self.exact(messages)
        if isinstance(plan, TemplateFailure):
            raise plan
        contents = [m["content"] for m in messages]
        args = contents + [c.strip() for c in contents] if plan.trims else contents
        segments = [(fmt.format(*args), trained) for fmt, trained in plan.segments]
        if not plan.checked:  # the first row of a shape is also cut the slow way: both must agree
            exact = self.exact(messages)
            if _merged(exact) != _merged(segments):
                self.plans[roles] = None
                return exact
            plan.checked = True
        return segments

    def text(self, text: str) -> Segments:
        """Raw text for continued pre-training: all of it is trained, and it ends with the eos token."""
        return [(text, True)] if text.rstrip().endswith(self.end) else [(text, True), (self.end, True)]


def _escape(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def _merged(segments: Segments) -> Segments:
    """Segments without empty pieces (they tokenize to nothing), for comparison."""
    return [(text, trained) for text, trained in segments if text]


# ---- tokenizing -----------------------------------------------------------------------------------------------

def tokenize(batch: list[Segments], tok: TextTokenizer, max_length: int) -> Tokenized:
    """Tokenize many rows in one batch call; truncate each row to max_length tokens.

    Each row's text is tokenized whole, as `apply_chat_template` does (tokenizing segments apart
    differs wherever a tokenizer adds a prefix space or merges across the cut: SentencePiece
    families), and a token is trained when it starts inside a trained segment. Where tokens start
    comes from their byte lengths for byte-level BPE tokenizers (byte_offsets.py), else from the
    tokenizer's offsets."""
    if not batch:
        return Tokenized.concat([])
    texts = ["".join(text for text, _ in segments) for segments in batch]
    if tok.byte_lengths is None:
        return _tokenize_by_chars(batch, texts, tok, max_length)
    table, normalizer = tok.byte_lengths
    ids, lengths = tok.encode_flat(texts)
    widths = table[ids]
    row_starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    ends = np.cumsum(widths)
    starts = ends - widths  # on one byte axis for all rows, valid while every row before is spelled exactly
    text_bytes = np.fromiter(map(utf8_length, texts), dtype=np.int64, count=len(texts))
    byte_base = np.concatenate([[0], np.cumsum(text_bytes)[:-1]]).astype(np.int64)
    spelled = np.zeros(len(texts), dtype=np.int64)  # bytes the tokens of each row stand for
    unknown = np.zeros(len(texts), dtype=bool)
    filled = lengths > 0
    if filled.any():
        spelled[filled] = np.add.reduceat(widths, row_starts[filled])
        unknown[filled] = np.minimum.reduceat(widths, row_starts[filled]) < 0
    starts_base = np.concatenate([[0], np.cumsum(spelled)[:-1]])
    position = starts + np.repeat(byte_base - starts_base, lengths)
    bad = unknown | (spelled != text_bytes)
    if normalizer == "nfc":
        import unicodedata

        bad |= np.fromiter((not (t.isascii() or unicodedata.is_normalized("NFC", t)) for t in texts), dtype=bool,
                           count=len(texts))
    for row in np.flatnonzero(bad).tolist():  # this row's starts from the tokenizer's offsets
        (row_ids, char_starts), = tok.encode_batch_with_starts([texts[row]])
        low, count = int(row_starts[row]), int(lengths[row])
        if len(row_ids) != count:
            raise RuntimeError("the tokenizer gave two tokenizations of one text")
        position[low:low + count] = char_to_byte(texts[row])[char_starts] + byte_base[row]
    units = [[(utf8_length(text), trained) for text, trained in segments] for segments in batch]
    return _masked(ids, position, lengths, units, max_length)


def _tokenize_by_chars(batch: list[Segments], texts: list[str], tok: TextTokenizer, max_length: int) -> Tokenized:
    """Token starts from the tokenizer's offsets (characters)."""
    encoded = tok.encode_batch_with_starts(texts)
    lengths = np.fromiter((len(ids) for ids, _ in encoded), dtype=np.int64, count=len(encoded))
    ids = np.fromiter(chain.from_iterable(ids for ids, _ in encoded), dtype=np.int32, count=int(lengths.sum()))
    starts = np.fromiter(chain.from_iterable(s for _, s in encoded), dtype=np.int64, count=len(ids))
    char_base = np.concatenate([[0], np.cumsum([len(t) for t in texts])[:-1]]).astype(np.int64)
    units = [[(len(text), trained) for text, trained in segments] for segments in batch]
    return _masked(ids, starts + np.repeat(char_base, lengths), lengths, units, max_length)


def _masked(ids: np.ndarray, position: np.ndarray, lengths: np.ndarray, units: list[list[tuple[int, bool]]],
            max_length: int) -> Tokenized:
    """The mask (a token is trained when `position`, its start on one axis for all rows, falls in a
    trained segment; `units` holds each segment's length on that axis) and the truncation.

    Positions normally ascend (each row's tokens in order, rows one after another): then each trained
    segment's tokens are one run of the token array, found with two binary searches per segment, so
    the work per token is one copy, not a binary search (at 100k chat rows the search per token took
    1.5-3 of the 14-16 CPU-seconds slothctl added to the tokenizer's own; bench/data_scale.py)."""
    range_starts, range_ends, offset = [], [], 0
    for segments in units:
        for size, trained in segments:
            if trained and size:
                range_starts.append(offset)
                range_ends.append(offset + size)
            offset += size
    starts, ends = np.asarray(range_starts, dtype=np.int64), np.asarray(range_ends, dtype=np.int64)
    if not range_starts:
        trained = np.zeros(len(ids), dtype=bool)
    elif len(position) < 2 or bool((position[1:] >= position[:-1]).all()):
        trained = _in_runs(np.searchsorted(position, starts), np.searchsorted(position, ends), len(ids))
    else:  # offsets out of order (a tokenizer's own offsets can be): a binary search per token
        index = np.searchsorted(starts, position, side="right") - 1
        inside = index >= 0
        trained = np.zeros(len(ids), dtype=bool)
        trained[inside] = position[inside] < ends[index[inside]]
    kept = np.minimum(lengths, max_length)
    offsets = np.concatenate([[0], np.cumsum(kept)]).astype(np.int64)
    cut = np.flatnonzero(lengths > max_length)
    if len(cut):  # the tokens after the first max_length of each row that has more
        row_starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        keep = ~_in_runs(row_starts[cut] + max_length, row_starts[cut] + lengths[cut], len(ids))
        ids, trained = ids[keep], trained[keep]
    return Tokenized(ids, trained, offsets, lengths.astype(np.int32))


def _in_runs(lows: np.ndarray, highs: np.ndarray, size: int) -> np.ndarray:
    """A mask of `size` that is True on [lows[k], highs[k]) for every k: the runs ascend and do not overlap."""
    edges = np.empty(2 * len(lows) + 2, dtype=np.int64)
    edges[0], edges[-1] = 0, size
    edges[1:-1:2], edges[2:-1:2] = lows, highs
    flags = np.zeros(len(edges) - 1, dtype=bool)
    flags[1::2] = True
    return np.repeat(flags, np.diff(edges))
