"""Dataset shapes: detecting which one a file has, and turning every row into one standard form.

The standard form of a conversation is a list of `{"role", "content"}` messages with roles
system / user / assistant / tool (ShareGPT's human/gpt and friends are renamed). Raw text rows
stay text (continued pre-training).

| format              | columns                                          |
|---------------------|--------------------------------------------------|
| `sharegpt`          | `conversations`: a list of {from, value}         |
| `messages`          | `messages` (or `conversations`): {role, content} |
| `alpaca`            | `instruction`, `input` (optional), `output`      |
| `prompt_completion` | `prompt`, `completion` (strings or message lists)|
| `text`              | `text`                                           |
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from typing import Any, Callable

from slothctl.errors import DataError

ROLE_ALIASES = {
    "system": "system", "developer": "system",
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "model": "assistant", "bot": "assistant",
    "function_call": "assistant",
    "tool": "tool", "function": "tool", "observation": "tool", "ipython": "tool",
}
FORMATS = ("sharegpt", "messages", "alpaca", "prompt_completion", "text")
EXPECTED_COLUMNS = {
    "sharegpt": ("conversations",),
    "messages": ("messages",),
    "alpaca": ("instruction", "input", "output"),
    "prompt_completion": ("prompt", "completion"),
    "text": ("text",),
}
_EXPECTED = {
    "sharegpt": "conversations (a list of {from, value})",
    "messages": "messages (a list of {role, content})",
    "alpaca": "instruction, input (optional), output",
    "prompt_completion": "prompt, completion",
    "text": "text",
}


EMPTY_ROW = "is empty"
EMPTY_REPLY = "has an empty assistant reply"  # training on it teaches the model to say nothing
EMPTY_REASONS = (EMPTY_ROW, EMPTY_REPLY)


class RowError(ValueError):
    """A row that cannot be standardised; the message says why (the caller adds the row number)."""


class UnknownRole(RowError):
    """A role name no template knows: a mapping problem of the whole dataset, so never skipped."""


@dataclass
class Detection:
    format: str
    reason: str


def _turn_list(value: Any) -> Any:
    """Turn lists stored as JSON text (CSV cells) are parsed; anything else is returned unchanged."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _is_turn_list(value: Any, role_key: str, content_key: str) -> bool:
    value = _turn_list(value)
    return (isinstance(value, list) and bool(value) and isinstance(value[0], dict)
            and role_key in value[0] and content_key in value[0])


def _matches(fmt: str, row: dict) -> bool:
    if fmt == "sharegpt":
        return _is_turn_list(row.get("conversations"), "from", "value")
    if fmt == "messages":
        return any(_is_turn_list(row.get(col), "role", "content") for col in ("messages", "conversations"))
    if fmt == "alpaca":
        return "instruction" in row and "output" in row
    if fmt == "prompt_completion":
        return "prompt" in row and "completion" in row
    if fmt == "text":
        return isinstance(row.get("text"), str)
    raise ValueError(fmt)


def _evidence(fmt: str, rows: list[dict]) -> str:
    if fmt == "sharegpt":
        return "column `conversations` with from/value keys"
    if fmt == "messages":
        column = "messages" if any("messages" in row for row in rows[:100]) else "conversations"
        return f"column `{column}` with role/content keys"
    if fmt == "text":
        return "column `text`"
    return "columns " + " and ".join(f"`{c}`" for c in EXPECTED_COLUMNS[fmt] if c != "input")


def _misspelled(found: list[str]) -> list[str]:
    known = sorted({c for cols in EXPECTED_COLUMNS.values() for c in cols})
    hints = []
    for column in found:
        if column in known:
            continue
        close = difflib.get_close_matches(column, known, n=1, cutoff=0.75)
        if close:
            hints.append(f"`{column}` → `{close[0]}`?")
    return hints


def columns_of(rows: list[dict], limit: int = 1000) -> list[str]:
    return sorted({str(col) for row in rows[:limit] for col in row})


def detect(rows: list[dict], forced: str = "auto", sample: int = 2000, where: str = "") -> Detection:
    """Pick the format that most rows match (or check the forced one); explain the choice.

    The choice is made on an even sample of rows; the rows of the chosen format are then counted
    over the whole dataset for the explanation. `where` (the file or dataset) starts every error."""
    at = f"{where}: " if where else ""
    if not rows:
        raise DataError(f"{at}the dataset has no rows")
    candidates = FORMATS if forced == "auto" else (forced,)
    picked = rows if len(rows) <= sample else rows[:: max(1, len(rows) // sample)]
    counts = {fmt: sum(1 for row in picked if _matches(fmt, row)) for fmt in candidates}
    best = max(candidates, key=lambda fmt: counts[fmt])
    matching = sum(1 for row in rows if _matches(best, row)) if picked is not rows else counts[best]
    if matching == 0:
        found_columns = columns_of(rows)
        found = ", ".join(found_columns) if found_columns else "none"
        guesses = _misspelled(found_columns)
        fix = f"did you mean {' '.join(guesses)} " if guesses else ""
        if forced != "auto":
            raise DataError(f"{at}format = \"{forced}\" does not match the data: no row has {_EXPECTED[forced]} "
                            f"(columns found: {found})",
                            f"{fix}remove the format override, or map columns with [data] columns = "
                            "{ old = \"new\" }")
        expected = "; ".join(f"{fmt}: {cols}" for fmt, cols in _EXPECTED.items())
        raise DataError(f"{at}cannot tell the data format: columns found: {found}; expected one of: {expected}",
                        f"{fix}rename columns with [data] columns = {{ old = \"new\" }} or set [data] format")
    verb = "detected" if forced == "auto" else "format"
    return Detection(best, f"{verb} {best}: {_evidence(best, rows)} in {matching}/{len(rows)} rows")


def rename_columns(rows: list[dict], mapping: dict[str, str], where: str = "") -> None:
    """Apply [data] columns = { old = "new" } in place; a mapped column that no row has is an error."""
    if not mapping:
        return
    present = {col for row in rows for col in row}
    unknown = [old for old in mapping if old not in present]
    if unknown:
        raise DataError(f"{where + ': ' if where else ''}[data] columns maps {', '.join(f'`{c}`' for c in unknown)}, which no row has "
                        f"(columns found: {', '.join(sorted(map(str, present))) or 'none'})")
    for i, row in enumerate(rows):
        if any(old in row for old in mapping):
            rows[i] = {mapping.get(k, k): v for k, v in row.items()}


def _role(raw: Any) -> str:
    role = (ROLE_ALIASES.get(raw) or ROLE_ALIASES.get(raw.strip().lower())) if isinstance(raw, str) else None
    if role is None:
        known = ", ".join(sorted(ROLE_ALIASES))
        raise UnknownRole(f"unknown role {json.dumps(raw)} (known roles: {known})")
    return role


def _turns(turns: Any, role_key: str, content_key: str) -> list[dict]:
    if type(turns) is not list:
        turns = _turn_list(turns)
        if not isinstance(turns, list):
            raise RowError("has no turns")
    if not turns:
        raise RowError("has no turns")
    messages = []
    for turn in turns:
        if type(turn) is not dict or role_key not in turn:
            raise RowError(f"a turn lacks `{role_key}`")
        content = turn.get(content_key)
        if type(content) is not str:
            content = _text_parts(content)
            if content is None:
                raise RowError(f"a turn's `{content_key}` is not text")
        messages.append({"role": _role(turn[role_key]), "content": content})
    return messages


def _text_parts(content: Any) -> str | None:
    """OpenAI-style content parts [{"type": "text", "text": ...}] joined into one text; None if not all text."""
    if not isinstance(content, list) or not content:
        return None
    texts = [part.get("text") for part in content if isinstance(part, dict) and part.get("type") == "text"]
    return "".join(texts) if len(texts) == len(content) and all(isinstance(t, str) for t in texts) else None


def _text(row: dict, column: str, required: bool = True) -> str:
    value = row.get(column)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise RowError(f"`{column}` is missing" if value is None else f"`{column}` is not text")
    return value


def _sharegpt(row: dict) -> list[dict]:
    if "conversations" not in row:
        raise RowError("`conversations` is missing")
    return _turns(row["conversations"], "from", "value")


def _messages(row: dict) -> list[dict]:
    turns = row.get("messages", row.get("conversations"))
    if turns is None:
        raise RowError("`messages` is missing")
    return _turns(turns, "role", "content")


def _alpaca(row: dict) -> list[dict]:
    instruction, extra = _text(row, "instruction"), _text(row, "input", required=False)
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    system = row.get("system")
    messages = [{"role": "system", "content": system}] if isinstance(system, str) and system.strip() else []
    return messages + [{"role": "user", "content": prompt}, {"role": "assistant", "content": _text(row, "output")}]


def _prompt_completion(row: dict) -> list[dict]:
    """Plain strings become a user/assistant exchange; conversational prompt/completion lists are joined."""
    prompt, completion = _turn_list(row.get("prompt")), _turn_list(row.get("completion"))
    prompt_msgs = _turns(prompt, "role", "content") if isinstance(prompt, list) else \
        [{"role": "user", "content": _text(row, "prompt")}]
    completion_msgs = _turns(completion, "role", "content") if isinstance(completion, list) else \
        [{"role": "assistant", "content": _text(row, "completion")}]
    return prompt_msgs + completion_msgs


STANDARDISERS: dict[str, Callable[[dict], Any]] = {
    "sharegpt": _sharegpt,
    "messages": _messages,
    "alpaca": _alpaca,
    "prompt_completion": _prompt_completion,
    "text": lambda row: _text(row, "text"),
}


def standardise(fmt: str, row: dict) -> list[dict] | str:
    """One row in the standard form: messages for conversations, a string for raw text."""
    result = STANDARDISERS[fmt](row)
    if isinstance(result, str):
        if not result.strip():
            raise RowError(EMPTY_ROW)
        return result
    if not any(m["content"].strip() for m in result):
        raise RowError(EMPTY_ROW)
    if any(m["role"] == "assistant" and not m["content"].strip() for m in result):
        raise RowError(EMPTY_REPLY)
    return result


def is_conversational(fmt: str) -> bool:
    return fmt != "text"
