"""From a standard row to the tokens the model trains on and the mask of the loss.

A conversation is rendered with the chat template and cut into segments: the text before each
assistant reply (not trained) and the reply itself up to and including its end-of-turn token
(trained). The cuts come from the template itself: the prompt for reply i is the rendering of the
messages before it with the generation prompt, the reply ends where the rendering of the messages
up to it ends. Each segment is tokenized on its own, exactly as `chat` tokenizes a prompt and the
model then generates the reply, so no per-model string matching is involved.

Rendering every prefix of every row is slow (the Jinja sandbox costs ~50 µs a call), so for
templates that only copy contents into their output (chat_template.content_use) the cuts are
computed once per *shape* (the sequence of roles) on placeholder contents, and each row is then
assembled by substitution. The first row of every shape is also cut the slow way and the two must
agree, else that shape keeps using the slow way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import chain

import numpy as np

from slothctl.data.chat_template import content_use, render
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
        if not self.responses_only:
            segments: Segments = [(full, True)]
        elif not any(m["role"] == "assistant" for m in messages):
            segments = [(full, False)]
        else:
            segments = self._cut_at_replies(messages, full)
        if not full.rstrip().endswith(self.end):  # the template does not end the example: we do
            segments.append((self.end, not self.responses_only or messages[-1]["role"] == "assistant"))
        return segments

    def _cut_at_replies(self, messages: list[dict], full: str) -> Segments:
        segments: Segments = []
        done = 0  # characters of `full` already assigned
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prompt = self._draw(messages[:i], generation_prompt=True) if i else ""
            through = self._draw(messages[: i + 1])
            if full.startswith(through) and through.startswith(prompt) and len(prompt) >= done:
                start, end = len(prompt), len(through)
            else:  # a template that renders earlier turns differently: find the reply in the full text
                start = full.find(message["content"], done)
                if start < 0 or not message["content"]:
                    raise TemplateFailure("the chat template changes the assistant text, so its reply "
                                          "cannot be located")
                end = start + len(message["content"])
                rest = full[end:]
                if rest.lstrip().startswith(self.end):  # the reply's end-of-turn token is trained too
                    end += len(rest) - len(rest.lstrip()) + len(self.end)
            if start > done:
                segments.append((full[done:start], False))
            segments.append((full[start:end], True))
            done = end
        if done < len(full):
            segments.append((full[done:], False))
        return segments

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
    """Tokenize many rows' segments in one batch call; truncate each row to max_length tokens."""
    if not batch:
        return Tokenized.concat([])
    flat = [text for segments in batch for text, _ in segments]
    flags = np.fromiter((trained for segments in batch for _, trained in segments), dtype=bool, count=len(flat))
    id_lists = tok.encode_batch(flat)
    seg_lengths = np.fromiter(map(len, id_lists), dtype=np.int64, count=len(id_lists))
    ids = np.fromiter(chain.from_iterable(id_lists), dtype=np.int32, count=int(seg_lengths.sum()))
    trained = np.repeat(flags, seg_lengths)
    segs_per_row = np.fromiter(map(len, batch), dtype=np.int64, count=len(batch))
    row_of_segment = np.repeat(np.arange(len(batch)), segs_per_row)
    full = np.bincount(row_of_segment, weights=seg_lengths, minlength=len(batch)).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(full)[:-1]]).astype(np.int64)
    position = np.arange(len(ids), dtype=np.int64) - np.repeat(starts, full)
    keep = position < max_length
    kept = np.minimum(full, max_length)
    return Tokenized(ids[keep], trained[keep], np.concatenate([[0], np.cumsum(kept)]).astype(np.int64),
                     full.astype(np.int32))
