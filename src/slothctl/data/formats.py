"""Dataset shapes: detecting which one a file has, and turning every row into one standard form.

The standard form of a conversation is a list of `{"role", "content"}` messages with roles
system / user / assistant / tool. Raw text rows stay text (continued pre-training).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from slothctl.errors import DataError

ROLE_ALIASES = {
    "system": "system",
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "model": "assistant", "bot": "assistant",
    "tool": "tool", "function": "tool", "observation": "tool", "ipython": "tool",
}
FORMATS = ("sharegpt", "messages", "alpaca", "prompt_completion", "text")


class RowError(ValueError):
    """A row that cannot be standardised; the message says why (the caller adds the row number)."""


@dataclass
class Detection:
    format: str
    reason: str


def _is_turn_list(value: Any, role_key: str, content_key: str) -> bool:
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


_EVIDENCE = {
    "sharegpt": "column `conversations` with from/value keys",
    "messages": "column `messages` with role/content keys",
    "alpaca": "columns `instruction` and `output`",
    "prompt_completion": "columns `prompt` and `completion`",
    "text": "column `text`",
}
_EXPECTED = {
    "sharegpt": "conversations (a list of {from, value})",
    "messages": "messages (a list of {role, content})",
    "alpaca": "instruction, input (optional), output",
    "prompt_completion": "prompt, completion",
    "text": "text",
}


def detect(rows: list[dict], forced: str = "auto") -> Detection:
    """Pick the format that most rows match (or check the forced one); explain the choice."""
    if not rows:
        raise DataError("the dataset has no rows")
    candidates = FORMATS if forced == "auto" else (forced,)
    counts = {fmt: sum(1 for row in rows if _matches(fmt, row)) for fmt in candidates}
    best = max(candidates, key=lambda fmt: counts[fmt])
    if counts[best] == 0:
        columns = sorted({col for row in rows[:1000] for col in row})
        found = ", ".join(columns) if columns else "none"
        if forced != "auto":
            raise DataError(f"format = \"{forced}\" does not match the data: no row has {_EXPECTED[forced]} "
                            f"(columns found: {found})", "remove the format override or map columns in "
                            "[data] columns")
        expected = "; ".join(f"{fmt}: {cols}" for fmt, cols in _EXPECTED.items())
        raise DataError(f"cannot tell the data format: columns found: {found}; expected one of: {expected}",
                        "rename columns with [data] columns = { old = \"new\" } or set [data] format")
    evidence = _EVIDENCE[best]
    if best == "messages" and not any("messages" in row for row in rows[:100]):
        evidence = "column `conversations` with role/content keys"
    verb = "detected" if forced == "auto" else "format"
    return Detection(best, f"{verb} {best}: {evidence} in {counts[best]}/{len(rows)} rows")


def _role(raw: Any) -> str:
    role = ROLE_ALIASES.get(str(raw).strip().lower()) if isinstance(raw, str) else None
    if role is None:
        known = ", ".join(sorted(ROLE_ALIASES))
        raise RowError(f"unknown role {raw!r} (known roles: {known})")
    return role


def _turns(turns: Any, role_key: str, content_key: str) -> list[dict]:
    if not isinstance(turns, list) or not turns:
        raise RowError("has no turns")
    messages = []
    for turn in turns:
        if not isinstance(turn, dict) or role_key not in turn:
            raise RowError(f"a turn lacks `{role_key}`")
        content = turn.get(content_key)
        if not isinstance(content, str):
            raise RowError(f"a turn's `{content_key}` is not text")
        messages.append({"role": _role(turn[role_key]), "content": content})
    return messages


def _text(row: dict, column: str, required: bool = True) -> str:
    value = row.get(column)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise RowError(f"`{column}` is missing or not text")
    return value


def _sharegpt(row: dict) -> list[dict]:
    return _turns(row.get("conversations"), "from", "value")


def _messages(row: dict) -> list[dict]:
    turns = row.get("messages", row.get("conversations"))
    return _turns(turns, "role", "content")


def _alpaca(row: dict) -> list[dict]:
    instruction, extra = _text(row, "instruction"), _text(row, "input", required=False)
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    messages = [{"role": "system", "content": row["system"]}] if isinstance(row.get("system"), str) else []
    return messages + [{"role": "user", "content": prompt}, {"role": "assistant", "content": _text(row, "output")}]


def _prompt_completion(row: dict) -> list[dict]:
    """Plain strings become a user/assistant exchange; conversational prompt/completion lists are joined."""
    prompt, completion = row.get("prompt"), row.get("completion")
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
            raise RowError("is empty")
        return result
    if not any(m["content"].strip() for m in result):
        raise RowError("is empty")
    return result


def is_conversational(fmt: str) -> bool:
    return fmt != "text"
