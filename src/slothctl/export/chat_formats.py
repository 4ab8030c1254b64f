"""What an exported model needs to know about its chat template: which tokens end a turn
(generation_config's eos ids, Ollama's stop words) and the Ollama TEMPLATE that writes the same
prompt as the Jinja template used in training.

Families are recognised by behaviour, not by name: a family matches only when its Go template,
rendered the way Ollama renders it (the Modelfile's SYSTEM prepended when a conversation has no
system message, consecutive messages of one role joined, every system message also in `.System`),
gives exactly the text of the Jinja template on a set of probe conversations. A template without a
system role (Gemma) is probed with the system message merged into the first user turn, the rule
training and `chat` apply.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from slothctl.data.chat_template import after_reply, fold_system, lacks_system_role, render as render_jinja
from slothctl.data.tokenizer import TextTokenizer
from slothctl.export import gotemplate

PROBES = [
    [{"role": "user", "content": "Hi there"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 2+2?"}],
    [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi! How can I help?"},
     {"role": "user", "content": "Tell me a joke."}],
    [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "A"},
     {"role": "assistant", "content": "B"}, {"role": "user", "content": "C"}],
]


@dataclass(frozen=True)
class Family:
    name: str
    go_template: str  # `{eos}` is replaced by the tokenizer's eos text, `{preamble}` by the found preamble
    stops: tuple[str, ...]
    default_re: str  # on the rendering of a lone user message: a default system prompt, or a fixed preamble
    default_is: str = "system"  # "system": Modelfile SYSTEM; "preamble": text the template always writes


FAMILIES = (
    Family("chatml",
           "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
           "<|im_start|>assistant\n",
           ("<|im_end|>", "<|im_start|>"),
           r"<\|im_start\|>system\n(.*?)<\|im_end\|>\n"),
    Family("llama-3",
           "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>"
           "{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n",
           ("<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"),
           r"<\|start_header_id\|>system<\|end_header_id\|>\n\n(.*?)<\|eot_id\|>"),
    # Llama 3.1 / 3.3: a system turn always, opened by a fixed preamble (knowledge cutoff, date).
    Family("llama-3.1",
           "<|start_header_id|>system<|end_header_id|>\n\n{preamble}{{ .System }}<|eot_id|>"
           "{{- range .Messages }}{{ if ne .Role \"system\" }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n"
           "{{ .Content }}<|eot_id|>{{ end }}{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n",
           ("<|eot_id|>", "<|eom_id|>", "<|start_header_id|>", "<|end_header_id|>"),
           r"^<\|start_header_id\|>system<\|end_header_id\|>\n\n(.*?)<\|eot_id\|>", "preamble"),
    # Gemma: no system role; the system prompt opens the first user turn.
    Family("gemma",
           "{{- $system := .System }}{{- range .Messages }}"
           "{{- if eq .Role \"user\" }}<start_of_turn>user\n{{ if $system }}{{ $system }}\n\n{{ $system = \"\" }}{{ end }}"
           "{{ .Content }}<end_of_turn>\n"
           "{{ else if eq .Role \"assistant\" }}<start_of_turn>model\n{{ .Content }}<end_of_turn>\n{{ end }}"
           "{{- end }}<start_of_turn>model\n",
           ("<end_of_turn>", "<start_of_turn>"),
           r"$^"),
    Family("phi-3",
           "{{- range .Messages }}{{ if and (eq .Role \"system\") .Content }}<|system|>\n{{ .Content }}<|end|>\n"
           "{{ else if eq .Role \"user\" }}<|user|>\n{{ .Content }}<|end|>\n"
           "{{ else if eq .Role \"assistant\" }}<|assistant|>\n{{ .Content }}<|end|>\n{{ end }}{{ end }}<|assistant|>\n",
           ("<|end|>", "<|user|>", "<|assistant|>"),
           r"$^"),
    # Mistral's [INST] templates: the system prompt goes before the last user message.
    Family("mistral",
           "{{- range $i, $_ := .Messages }}"
           "{{- if eq .Role \"user\" }}[INST]{{ if and $.System (eq (len (slice $.Messages $i)) 1) }}{{ $.System }}\n\n"
           "{{ end }}{{ .Content }}[/INST]"
           "{{- else if eq .Role \"assistant\" }}{{ .Content }}{eos}{{ end }}{{ end }}",
           ("[INST]", "[/INST]"),
           r"$^"),
    Family("alpaca",
           '{{- range .Messages }}\n{{- if eq .Role "system" }}{{ .Content }}\n\n'
           '{{ else if eq .Role "user" }}### Instruction:\n{{ .Content }}\n\n'
           '{{ else if eq .Role "assistant" }}### Response:\n{{ .Content }}{eos}\n\n{{ end }}\n'
           "{{- end }}### Response:\n",
           ("### Instruction:",),
           r"(.*?)\n\n### Instruction:\n"),
)


@dataclass(frozen=True)
class OllamaChat:
    """A chat template translated for Ollama."""

    family: str
    template: str
    system: str | None  # the template's built-in system prompt, for the Modelfile's SYSTEM
    stops: list[str]
    starts_with_bos: bool  # the Jinja template writes the BOS token itself


BOS_MARK = "<SLOTHCTL-BOS-7f3a>"  # tells a BOS the template writes from text that merely equals it


def _jinja(template: str, messages: list[dict], tok: TextTokenizer) -> str:
    if messages[0]["role"] == "system" and lacks_system_role(template, BOS_MARK, tok.eos_token):
        messages = fold_system(messages)
    return render_jinja(template, messages, add_generation_prompt=True, bos_token=BOS_MARK,
                        eos_token=tok.eos_token)


def as_ollama(messages: list[dict], system: str | None) -> dict:
    """What Ollama's chat handler gives a TEMPLATE: the Modelfile's SYSTEM first when the request has
    no system message; consecutive messages of one role joined by a blank line; all system messages
    also joined into `.System`."""
    if system and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system}] + messages
    collated: list[dict] = []
    for message in messages:
        if collated and collated[-1]["Role"] == message["role"]:
            collated[-1]["Content"] += "\n\n" + message["content"]
        else:
            collated.append({"Role": message["role"], "Content": message["content"]})
    return {"System": "\n\n".join(m["content"] for m in messages if m["role"] == "system"), "Messages": collated}


def translate(template: str, tok: TextTokenizer) -> OllamaChat | None:
    """The Ollama equivalent of `template`, or None when no known family renders identically."""
    try:
        expected = [_jinja(template, probe, tok) for probe in PROBES]
    except Exception:  # noqa: BLE001 - a template that cannot render the probes cannot be translated
        return None
    starts_with_bos = all(text.startswith(BOS_MARK) for text in expected)
    expected = [text.removeprefix(BOS_MARK) for text in expected]
    if any(BOS_MARK in text for text in expected):
        return None
    for family in FAMILIES:
        go = family.go_template.replace("{eos}", tok.eos_token or "")
        found = re.match(family.default_re, expected[0], re.S)
        if family.default_is == "preamble":
            if not found or "{{" in found.group(1):
                continue
            go, defaults = go.replace("{preamble}", found.group(1)), [None]
        else:
            defaults = [None] + ([found.group(1)] if found else [])
        for system in defaults:
            try:
                same = all(gotemplate.render(go, as_ollama(probe, system)) == text
                           for probe, text in zip(PROBES, expected))
            except gotemplate.TemplateError:
                same = False
            if same:
                stops = list(family.stops)
                if tok.eos_token and tok.eos_token not in stops:
                    stops.append(tok.eos_token)
                return OllamaChat(family.name, go, system, stops, starts_with_bos)
    return None


def end_of_turn_ids(tok: TextTokenizer, template: str | None) -> list[int]:
    """Token ids that end an assistant reply: the special token the template writes right after a
    reply (e.g. <|im_end|>, <|eot_id|>), then the tokenizer's eos. Used as generation_config's eos."""
    ids: list[int] = []
    if template:
        after = after_reply(template, tok.bos_token, tok.eos_token)
        for special in sorted(tok.special_tokens, key=len, reverse=True):
            if after.lstrip(" ").startswith(special):
                token_id = tok.token_to_id(special)
                if token_id is not None:
                    ids.append(token_id)
                break
    if tok.eos_id is not None and tok.eos_id not in ids:
        ids.append(tok.eos_id)
    return ids
