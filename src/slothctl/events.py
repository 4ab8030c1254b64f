"""Progress events: the only way library code talks to the user.

Library functions take an `emit` callback and call it with `Event`s; the CLI turns them
into a rich live view for people or JSON lines for scripts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class Event:
    """`kind` is one of: status, warning, step, eval, checkpoint, done (commands may add their own)."""

    kind: str
    data: dict[str, Any] = field(default_factory=dict)
    message: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"event": self.kind}
        if self.message:
            out["message"] = self.message
        out.update(self.data)
        return out


Emit = Callable[[Event], None]


def ignore(_: Event) -> None:
    """An `emit` for callers that do not want progress."""


def status(emit: Emit, message: str, **data: Any) -> None:
    emit(Event("status", data, message))


def warning(emit: Emit, message: str, **data: Any) -> None:
    emit(Event("warning", data, message))
