"""Rendering conversations with a Jinja chat template, the way transformers does, without importing it.

The environment mirrors transformers' (trim_blocks, lstrip_blocks, loop controls, its `tojson`,
`raise_exception` and `strftime_now`), so the text is the same as `apply_chat_template` gives.
`{% generation %}` blocks are accepted and rendered as plain text.
"""

from __future__ import annotations

import functools
import json
from datetime import datetime

from slothctl.errors import DataError


@functools.lru_cache(maxsize=8)
def compile_template(source: str):
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
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise DataError(f"the chat template has a syntax error on line {exc.lineno}: {exc.message}") from None


def render(template_source: str, messages: list[dict], *, add_generation_prompt: bool = False,
           bos_token: str | None = "", eos_token: str | None = "") -> str:
    """Render one conversation. Template errors are raised as-is for the caller to locate."""
    template = compile_template(template_source)
    return template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                           bos_token=bos_token or "", eos_token=eos_token or "")
