"""A small renderer for the subset of Go's text/template that Ollama TEMPLATEs use.

It exists to prove, at export time, that the TEMPLATE written into a Modelfile produces exactly the
text the Jinja chat template produced in training. Supported: text; `{{ pipeline }}`;
`{{ if }}` / `{{ else if }}` / `{{ else }}` / `{{ end }}`; `{{ range pipeline }}` and
`{{ range $i, $x := pipeline }}`; variables (`$`, `$x := …`, `$x = …`, `$.Field`, `$x.Field`);
fields (`.Field.Sub`); string, number and boolean literals; parentheses; Go's builtins `eq`, `ne`,
`lt`, `le`, `gt`, `ge`, `and`, `or`, `not`, `len`, `slice`, `index`; and the `{{-` / `-}}` trimming.
Truthiness and scoping follow Go: empty strings, zero, nil and empty lists are false; a variable
lives until the `end` of the block that declared it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

_ACTION = re.compile(r"\{\{(-[ \t\r\n])?(.*?)([ \t\r\n]-)?\}\}", re.S)
_GO_SPACE = " \t\r\n"
_TOKEN = re.compile(r"""\s*(?:(?P<string>"(?:[^"\\]|\\.)*")|(?P<raw>`[^`]*`)|(?P<number>-?\d+)|(?P<declare>:=)
                        |(?P<assign>=)|(?P<open>\()|(?P<close>\))|(?P<comma>,)
                        |(?P<variable>\$[A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
                        |(?P<field>(?:\.[A-Za-z_][A-Za-z0-9_]*)+|\.)|(?P<word>[A-Za-z_][A-Za-z0-9_]*))""", re.X)


class TemplateError(ValueError):
    """A template this renderer does not understand (or Go would reject)."""


# ---- lexing: text and actions -------------------------------------------------------------------

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


def _words(action: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    while pos < len(action):
        if action[pos:].strip() == "":
            break
        match = _TOKEN.match(action, pos)
        if not match or match.end() == pos:
            raise TemplateError(f"cannot read `{action}` at `{action[pos:]}`")
        kind = match.lastgroup
        tokens.append((kind, match.group(kind)))
        pos = match.end()
    return tokens


# ---- parsing: expressions ---------------------------------------------------------------------------

@dataclass
class _Expr:
    kind: str  # literal, field, variable, call
    value: Any = None  # literal value, field names, (variable, field names), function name
    args: list = field(default_factory=list)


def _parse_pipeline(tokens: list[tuple[str, str]], pos: int) -> tuple[_Expr, int]:
    """One command: an operand, or a function name followed by its arguments (no `|` pipes)."""
    if pos >= len(tokens):
        raise TemplateError("missing value")
    kind, text = tokens[pos]
    if kind == "word" and text not in ("true", "false", "nil"):
        args, pos = [], pos + 1
        while pos < len(tokens) and tokens[pos][0] not in ("close", "comma"):
            arg, pos = _parse_operand(tokens, pos)
            args.append(arg)
        return _Expr("call", text, args), pos
    operand, pos = _parse_operand(tokens, pos)
    if pos < len(tokens) and tokens[pos][0] not in ("close",):
        raise TemplateError(f"unexpected `{tokens[pos][1]}`")
    return operand, pos


def _parse_operand(tokens: list[tuple[str, str]], pos: int) -> tuple[_Expr, int]:
    kind, text = tokens[pos]
    if kind == "open":
        inner, pos = _parse_pipeline(tokens, pos + 1)
        if pos >= len(tokens) or tokens[pos][0] != "close":
            raise TemplateError("missing )")
        return inner, pos + 1
    if kind == "string":
        return _Expr("literal", json.loads(text)), pos + 1
    if kind == "raw":
        return _Expr("literal", text[1:-1]), pos + 1
    if kind == "number":
        return _Expr("literal", int(text)), pos + 1
    if kind == "word" and text in ("true", "false", "nil"):
        return _Expr("literal", {"true": True, "false": False, "nil": None}[text]), pos + 1
    if kind == "field":
        return _Expr("field", [] if text == "." else text[1:].split(".")), pos + 1
    if kind == "variable":
        name, *names = text.split(".")
        return _Expr("variable", (name, names)), pos + 1
    if kind == "word":  # a function call without parentheses as an argument is Go's error too
        raise TemplateError(f"`{text}` needs parentheses as an argument")
    raise TemplateError(f"unexpected `{text}`")


def _parse_action(action: str) -> tuple[str, Any]:
    """(keyword, details) of one action."""
    tokens = _words(action)
    if not tokens:
        raise TemplateError("empty action")
    head = tokens[0][1] if tokens[0][0] == "word" else ""
    if head in ("end", "else") and len(tokens) == 1:
        return head, None
    if head == "else" and len(tokens) > 1 and tokens[1] == ("word", "if"):
        return "else if", _whole(tokens, 2)
    if head == "if":
        return "if", _whole(tokens, 1)
    if head == "range":
        kinds = [kind for kind, _ in tokens]
        if "declare" not in kinds:
            return "range", ([], _whole(tokens, 1))
        at = kinds.index("declare")
        names = [text for kind, text in tokens[1:at] if kind == "variable"]
        if not 1 <= len(names) <= 2 or any(kind not in ("variable", "comma") for kind in kinds[1:at]):
            raise TemplateError(f"bad range `{action}`")
        return "range", (names, _whole(tokens, at + 1))
    if len(tokens) > 2 and tokens[0][0] == "variable" and tokens[1][0] in ("declare", "assign"):
        return tokens[1][0], (tokens[0][1], _whole(tokens, 2))
    return "value", _whole(tokens, 0)


def _whole(tokens, pos) -> _Expr:
    expr, end = _parse_pipeline(tokens, pos)
    if end != len(tokens):
        raise TemplateError(f"unexpected `{tokens[end][1]}`")
    return expr


def _parse(items: list[tuple[str, str]], pos: int, stops: tuple[str, ...]) -> tuple[list, int, tuple | None]:
    """Nodes until one of `stops` (end, else, else if); returns (nodes, position after it, the stop)."""
    nodes: list = []
    while pos < len(items):
        kind, value = items[pos]
        pos += 1
        if kind == "text":
            nodes.append(("text", value))
            continue
        keyword, details = _parse_action(value)
        if keyword in stops:
            return nodes, pos, (keyword, details)
        if keyword in ("end", "else", "else if"):
            raise TemplateError(f"unexpected {{{{ {value} }}}}")
        if keyword == "if":
            branches, otherwise, condition = [], [], details
            while True:
                body, pos, stop = _parse(items, pos, ("end", "else", "else if"))
                branches.append((condition, body))
                if stop[0] == "end":
                    break
                if stop[0] == "else if":
                    condition = stop[1]
                    continue
                otherwise, pos, _ = _parse(items, pos, ("end",))
                break
            nodes.append(("if", branches, otherwise))
        elif keyword == "range":
            body, pos, stop = _parse(items, pos, ("end", "else"))
            otherwise = []
            if stop[0] == "else":
                otherwise, pos, _ = _parse(items, pos, ("end",))
            nodes.append(("range", details[0], details[1], body, otherwise))
        else:
            nodes.append((keyword, details))
    if stops:
        raise TemplateError(f"missing {{{{ {stops[0]} }}}}")
    return nodes, pos, None


# ---- evaluation ---------------------------------------------------------------------------------------

def _truth(value: Any) -> bool:
    return value not in (None, False, 0, "") and not (isinstance(value, (list, tuple, dict)) and not value)


def _get(value: Any, name: str) -> Any:
    if isinstance(value, dict):
        return value.get(name)
    return getattr(value, name, None)


class _Scope:
    def __init__(self, root: Any):
        self.frames: list[dict] = [{"$": root}]

    def lookup(self, name: str) -> Any:
        for frame in reversed(self.frames):
            if name in frame:
                return frame[name]
        raise TemplateError(f"undefined variable {name}")

    def assign(self, name: str, value: Any) -> None:
        for frame in reversed(self.frames):
            if name in frame:
                frame[name] = value
                return
        raise TemplateError(f"undefined variable {name}")


def _compare(op: str, a: Any, b: Any) -> bool:
    return {"lt": a < b, "le": a <= b, "gt": a > b, "ge": a >= b}[op]


def _call(name: str, args: list[_Expr], dot: Any, scope: _Scope) -> Any:
    if name in ("and", "or"):
        value = None
        for arg in args:
            value = _eval(arg, dot, scope)
            if _truth(value) != (name == "and"):
                return value
        return value
    values = [_eval(arg, dot, scope) for arg in args]
    if name == "eq":
        return any(values[0] == other for other in values[1:])
    if name == "ne":
        return values[0] != values[1]
    if name in ("lt", "le", "gt", "ge"):
        return _compare(name, values[0], values[1])
    if name == "not":
        return not _truth(values[0])
    if name == "len":
        return len(values[0] or [])
    if name == "slice":
        return values[0][values[1] if len(values) > 1 else None:values[2] if len(values) > 2 else None]
    if name == "index":
        value = values[0]
        for key in values[1:]:
            value = value[key]
        return value
    raise TemplateError(f"unsupported function `{name}`")


def _eval(expr: _Expr, dot: Any, scope: _Scope) -> Any:
    if expr.kind == "literal":
        return expr.value
    if expr.kind == "field":
        value = dot
        for name in expr.value:
            value = _get(value, name)
        return value
    if expr.kind == "variable":
        name, names = expr.value
        value = scope.lookup(name)
        for item in names:
            value = _get(value, item)
        return value
    return _call(expr.value, expr.args, dot, scope)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def _render(nodes: list, dot: Any, scope: _Scope, out: list[str]) -> None:
    for node in nodes:
        kind = node[0]
        if kind == "text":
            out.append(node[1])
        elif kind == "value":
            out.append(_text(_eval(node[1], dot, scope)))
        elif kind == "declare":
            scope.frames[-1][node[1][0]] = _eval(node[1][1], dot, scope)
        elif kind == "assign":
            scope.assign(node[1][0], _eval(node[1][1], dot, scope))
        elif kind == "if":
            for condition, body in node[1]:
                if _truth(_eval(condition, dot, scope)):
                    _block(body, dot, scope, out)
                    break
            else:
                _block(node[2], dot, scope, out)
        elif kind == "range":
            names, items = node[1], _eval(node[2], dot, scope) or []
            pairs = list(items.items()) if isinstance(items, dict) else list(enumerate(items))
            for key, item in pairs:
                scope.frames.append({})
                if len(names) == 1:
                    scope.frames[-1][names[0]] = item
                elif len(names) == 2:
                    scope.frames[-1].update({names[0]: key, names[1]: item})
                _render(node[3], item, scope, out)
                scope.frames.pop()
            if not pairs:
                _block(node[4], dot, scope, out)


def _block(nodes: list, dot: Any, scope: _Scope, out: list[str]) -> None:
    scope.frames.append({})
    _render(nodes, dot, scope, out)
    scope.frames.pop()


def render(source: str, data: dict) -> str:
    """Render `source` with `data` (e.g. {"System": "", "Messages": [{"Role": "user", "Content": "hi"}]})."""
    nodes, _, _ = _parse(_lex(source), 0, ())
    out: list[str] = []
    _render(nodes, data, _Scope(data), out)
    return "".join(out)
