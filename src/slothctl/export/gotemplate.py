"""A tiny renderer for the subset of Go's text/template that slothctl's Ollama TEMPLATEs use.

It exists to prove, at export time, that the TEMPLATE written into a Modelfile produces exactly
the text the Jinja chat template produced in training. Supported: text, `{{ .Field }}`,
`{{ range .Field }}`, `{{ if X }}` / `{{ else if X }}` / `{{ else }}` / `{{ end }}` where X is
`.Field`, `eq .Field "s"` or `ne .Field "s"`, and the `{{-` / `-}}` whitespace trimming of Go.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

_ACTION = re.compile(r"\{\{(- )?(.*?)( -)?\}\}", re.S)
_GO_SPACE = " \t\r\n"


def _lex(source: str) -> list[tuple[str, str]]:
    parts: list[list[Any]] = []
    pos = 0
    for match in _ACTION.finditer(source):
        parts.append(["text", source[pos:match.start()]])
        parts.append(["action", match.group(2).strip(), bool(match.group(1)), bool(match.group(3))])
        pos = match.end()
    parts.append(["text", source[pos:]])
    for i, part in enumerate(parts):
        if part[0] == "action":
            if part[2]:
                parts[i - 1][1] = parts[i - 1][1].rstrip(_GO_SPACE)
            if part[3]:
                parts[i + 1][1] = parts[i + 1][1].lstrip(_GO_SPACE)
    return [(p[0], p[1]) for p in parts if p[0] == "action" or p[1]]


def _parse(tokens: list[tuple[str, str]], pos: int, stops: tuple[str, ...]) -> tuple[list, int, str | None]:
    """Nodes until one of `stops` (an action keyword); returns (nodes, position after it, the stop)."""
    nodes: list = []
    while pos < len(tokens):
        kind, value = tokens[pos]
        pos += 1
        if kind == "text":
            nodes.append(("text", value))
            continue
        word = value.split(maxsplit=1)[0] if value else ""
        if word in stops or value in stops:
            return nodes, pos, value
        if word == "range":
            body, pos, _ = _parse(tokens, pos, ("end",))
            nodes.append(("range", value[len("range"):].strip(), body))
        elif word == "if":
            branches, otherwise = [], []
            condition = value[len("if"):].strip()
            while True:
                body, pos, stop = _parse(tokens, pos, ("end", "else"))
                branches.append((condition, body))
                if stop is None:
                    raise ValueError("unterminated {{ if }}")
                if stop == "end":
                    break
                if stop.startswith("else if"):
                    condition = stop[len("else if"):].strip()
                    continue
                otherwise, pos, _ = _parse(tokens, pos, ("end",))
                break
            nodes.append(("if", branches, otherwise))
        else:
            nodes.append(("value", value))
    if stops:
        raise ValueError(f"missing {{{{ {stops[0]} }}}}")
    return nodes, pos, None


def _field(dot: Any, expr: str) -> Any:
    if not expr.startswith("."):
        raise ValueError(f"unsupported template expression `{expr}`")
    value = dot
    for name in expr[1:].split(".") if expr != "." else []:
        value = value.get(name, "") if isinstance(value, dict) else getattr(value, name, "")
    return value


def _condition(dot: Any, expr: str) -> bool:
    words = shlex.split(expr)
    if words[0] in ("eq", "ne") and len(words) == 3:
        equal = str(_field(dot, words[1])) == words[2]
        return equal if words[0] == "eq" else not equal
    if len(words) == 1:
        return bool(_field(dot, words[0]))
    raise ValueError(f"unsupported condition `{expr}`")


def _render(nodes: list, dot: Any, out: list[str]) -> None:
    for node in nodes:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "value":
            out.append(str(_field(dot, node[1])))
        elif node[0] == "range":
            for item in _field(dot, node[1]) or []:
                _render(node[2], item, out)
        elif node[0] == "if":
            for condition, body in node[1]:
                if _condition(dot, condition):
                    _render(body, dot, out)
                    break
            else:
                _render(node[2], dot, out)


def render(source: str, data: dict) -> str:
    """Render `source` with `data` (e.g. {"Messages": [{"Role": "user", "Content": "hi"}]})."""
    nodes, _, _ = _parse(_lex(source), 0, ())
    out: list[str] = []
    _render(nodes, data, out)
    return "".join(out)
