"""Rendering conversations with a Jinja chat template, the way transformers does, without importing it.

The environment mirrors transformers' (sandboxed, trim_blocks, lstrip_blocks, loop controls, its
`tojson`, `raise_exception` and `strftime_now`), so the text is the same as `apply_chat_template`
gives. `{% generation %}` blocks are accepted and rendered as plain text.

`content_is_opaque` tells whether a template only ever copies message contents into its output
(possibly trimmed): then a conversation's text can be assembled from a rendering with placeholder
contents, which is what makes large datasets fast (see encode.py).
"""

from __future__ import annotations

import functools
import json
from datetime import datetime

from slothctl.errors import DataError


@functools.lru_cache(maxsize=1)
def _environment():
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationBlock(jinja2.ext.Extension):
        """`{% generation %}…{% endgeneration %}` marks assistant text for transformers; here it is a no-op."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return jinja2.nodes.Scope(body).set_lineno(lineno)

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationBlock, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


@functools.lru_cache(maxsize=8)
def compile_template(source: str):
    import jinja2

    try:
        return _environment().from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise DataError(f"the chat template has a syntax error on line {exc.lineno}: {exc.message}") from None


def render(template_source: str, messages: list[dict], *, add_generation_prompt: bool = False,
           bos_token: str | None = "", eos_token: str | None = "") -> str:
    """Render one conversation. Template errors are raised as-is for the caller to locate."""
    template = compile_template(template_source)
    return template.render(messages=messages, add_generation_prompt=add_generation_prompt, tools=None,
                           documents=None, bos_token=bos_token or "", eos_token=eos_token or "")


# What a template may do with a message's content and still be "opaque": pass it on through these
# nodes to an output, trim it, or test its type (every content is a string, placeholders too).
_PASS_THROUGH = ("Add", "Concat")
_TYPE_TESTS = {"string", "defined", "undefined", "none", "mapping", "iterable", "sequence"}
_SHAPE_BLIND = {"items", "values", "tojson", "dictsort"}  # would expose contents without naming `content`
_CAPTURING = ("AssignBlock", "FilterBlock", "CallBlock", "Macro")  # output that is captured, not emitted


@functools.lru_cache(maxsize=8)
def content_use(source: str) -> str:
    """How the template uses message contents: `opaque` (copied into the output, maybe trimmed),
    `truthiness` (also tested for emptiness) or `inspected` (anything else: split, compared, captured,
    filtered, passed to a macro). Only `opaque` and `truthiness` templates are cut per shape."""
    import jinja2.nodes as nodes

    try:
        tree = _environment().parse(source)
    except Exception:  # noqa: BLE001 - a template that does not parse is reported when rendered
        return "inspected"
    parents: dict[int, nodes.Node] = {}
    reads, named = [], []
    for node in tree.find_all(nodes.Node):
        for child in node.iter_child_nodes():
            parents[id(child)] = node
        if isinstance(node, (nodes.Getattr, nodes.Filter)) and getattr(node, "attr", getattr(node, "name", "")) \
                in _SHAPE_BLIND:
            return "inspected"
        if isinstance(node, nodes.Getattr) and node.attr == "content":
            reads.append(node)
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const) and node.arg.value == "content":
            reads.append(node)
        elif isinstance(node, nodes.Const) and node.value == "content":
            named.append(node)
    if any(not isinstance(parents.get(id(c)), nodes.Getitem) for c in named):
        return "inspected"  # e.g. message.get('content')
    verdict = "opaque"
    for read in reads:
        node, parent = read, parents.get(id(read))
        while parent is not None:
            kind = type(parent).__name__
            if kind == "Output":
                if _captured(parent, parents):
                    return "inspected"
                break
            if kind in ("If", "CondExpr") and parent.test is node:
                verdict = "truthiness"
                break
            if kind in _PASS_THROUGH or kind == "CondExpr" or (kind == "Filter" and parent.name == "trim"
                                                               and parent.node is node):
                node, parent = parent, parents.get(id(parent))
                continue
            if kind == "Test" and parent.name in _TYPE_TESTS and parent.node is node:
                break  # the same answer for every string
            if kind in ("Not", "And", "Or") and _is_condition(parent, parents):
                verdict = "truthiness"
                break
            return "inspected"
        else:
            return "inspected"
    return verdict


def _captured(node, parents) -> bool:
    while node is not None:
        if type(node).__name__ in _CAPTURING:
            return True
        node = parents.get(id(node))
    return False


def _is_condition(node, parents) -> bool:
    """Whether a boolean expression ends up as the test of an `if` (through not/and/or)."""
    while True:
        parent = parents.get(id(node))
        kind = type(parent).__name__
        if kind in ("If", "CondExpr"):
            return parent.test is node
        if kind not in ("Not", "And", "Or"):
            return False
        node = parent


REPLY_MARK = "SLOTHCTL-REPLY-7f3a"  # a reply text no template changes and no tokenizer merges with neighbours


def after_reply(template_source: str, bos_token: str | None = "", eos_token: str | None = "") -> str:
    """What the template writes right after an assistant reply: its end-of-turn text (`<|im_end|>\\n`,
    `<|eot_id|>`, eos…), or "" when it writes nothing or cannot render a plain exchange."""
    try:
        text = render(template_source, [{"role": "user", "content": "Hi"},
                                        {"role": "assistant", "content": REPLY_MARK}],
                      bos_token=bos_token, eos_token=eos_token)
    except Exception:  # noqa: BLE001 - a template that rejects the probe: the caller falls back to eos
        return ""
    return text.split(REPLY_MARK, 1)[1] if REPLY_MARK in text else ""


# ---- templates without a system role --------------------------------------------------------------------------

SYSTEM_PROBE = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]


@functools.lru_cache(maxsize=8)
def lacks_system_role(template_source: str, bos_token: str | None = "", eos_token: str | None = "") -> bool:
    """Whether the template refuses a system message (Gemma's raises 'System role not supported')
    while it renders the same conversation without one."""
    try:
        render(template_source, SYSTEM_PROBE, add_generation_prompt=True, bos_token=bos_token, eos_token=eos_token)
        return False
    except Exception:  # noqa: BLE001 - any refusal
        pass
    try:
        render(template_source, SYSTEM_PROBE[1:], add_generation_prompt=True, bos_token=bos_token, eos_token=eos_token)
        return True
    except Exception:  # noqa: BLE001 - a template that renders nothing: not a system-role question
        return False


SYSTEM_RULE = "merged into the first user turn (the chat template has no system role)"


def fold_system(messages: list[dict]) -> list[dict]:
    """A leading system message merged into the first user turn ("system\\n\\nuser"), the way Gemma's
    own later templates do it; anything else is left for the template to judge."""
    if len(messages) > 1 and messages[0]["role"] == "system" and messages[1]["role"] == "user":
        system, first = messages[0]["content"], messages[1]
        content = f"{system}\n\n{first['content']}" if system else first["content"]
        return [{**first, "content": content}] + messages[2:]
    return messages
