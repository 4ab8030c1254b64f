"""Chat templates as exports need them, without a model: Ollama TEMPLATEs, end-of-turn tokens,
and the tokenizer form llama.cpp's converter understands."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from slothctl.data.chat_template import render
from slothctl.data.tokenizer import load_text_tokenizer
from slothctl.export import gotemplate
from slothctl.export.chat_formats import PROBES, end_of_turn_ids, translate
from slothctl.export.gguf import PROBE_TEXTS, _same_tokenizer, canonical_byte_level, parse_quants
from slothctl.errors import UsageError
from slothctl.resources import chat_template_text

MISTRAL = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
           "{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}")


@pytest.fixture(scope="module")
def tok(embedded_model):
    return load_text_tokenizer(str(embedded_model))


def test_go_renderer_follows_go_trimming_rules():
    source = 'A {{- range .Messages }}\n  [{{ .Role -}}\n ]{{ if eq .Role "user" }}U{{ else if .Content }}C' \
             '{{ else }}E{{ end }}{{ end }} Z'
    data = {"Messages": [{"Role": "user", "Content": ""}, {"Role": "bot", "Content": "x"},
                         {"Role": "bot", "Content": ""}]}
    assert gotemplate.render(source, data) == "A\n  [user]U\n  [bot]C\n  [bot]E Z"


def test_go_renderer_variables_builtins_and_scopes():
    """What Ollama's family templates use: `$` and declared variables, assignment across a range,
    parentheses, len/slice/eq/and/not, and variables that end with their block."""
    source = ('{{- $first := true }}{{- range $i, $m := .Messages }}{{ if $first }}[{{ $.System }}]{{ $first = false }}'
              '{{ end }}{{ $i }}:{{ $m.Role }}{{ if and (eq .Role "user") (eq (len (slice $.Messages $i)) 1) }}!'
              '{{ else if not .Content }}?{{ end }} {{ end }}{{ $first }}')
    data = {"System": "S", "Messages": [{"Role": "user", "Content": "a"}, {"Role": "bot", "Content": ""},
                                        {"Role": "user", "Content": "b"}]}
    assert gotemplate.render(source, data) == "[S]0:user 1:bot? 2:user! false"
    with pytest.raises(gotemplate.TemplateError):
        gotemplate.render("{{ range .Messages }}{{ $x := 1 }}{{ end }}{{ $x }}", {"Messages": [1]})
    with pytest.raises(gotemplate.TemplateError):
        gotemplate.render("{{ if .A }}x", {})


def test_chatml_template_of_the_embedded_model_translates_with_its_default_system(tok):
    chat = translate(tok.chat_template, tok)
    assert chat.family == "chatml" and chat.system.startswith("You are a helpful AI assistant named SmolLM")
    assert chat.stops[:2] == ["<|im_start|>", "<|im_end|>"][::-1]
    # what Ollama renders for a plain question, written out by hand
    ollama = gotemplate.render(chat.template, {"Messages": [{"Role": "system", "Content": chat.system},
                                                            {"Role": "user", "Content": "Hi"}]})
    assert ollama == (f"<|im_start|>system\n{chat.system}<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                      "<|im_start|>assistant\n")
    assert ollama == render(tok.chat_template, [{"role": "user", "content": "Hi"}], add_generation_prompt=True)


@pytest.mark.parametrize("name,family,system,bos", [("chatml", "chatml", None, False),
                                                    ("llama-3", "llama-3", None, True),
                                                    ("alpaca", "alpaca", "Below is an instruction", False)])
def test_bundled_templates_translate_exactly(tok, name, family, system, bos):
    llama_tok = replace(tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
    use = llama_tok if name == "llama-3" else tok
    template = chat_template_text(name)
    chat = translate(template, use)
    assert chat is not None and chat.family == family and chat.starts_with_bos is bos
    assert (chat.system or "").startswith(system or "")
    for probe in PROBES:  # the proof translate() relies on, repeated here on every probe
        messages = probe if probe[0]["role"] == "system" or not chat.system else \
            [{"role": "system", "content": chat.system}] + probe
        expected = render(template, probe, add_generation_prompt=True, bos_token=use.bos_token,
                          eos_token=use.eos_token).removeprefix(use.bos_token if bos else "")
        got = gotemplate.render(chat.template, {"Messages": [{"Role": m["role"], "Content": m["content"]}
                                                             for m in messages]})
        assert got == expected
    if name == "alpaca":
        assert "{{ .Content }}<|im_end|>" in chat.template  # the tokenizer's eos after each answer


def test_unknown_template_is_not_guessed(tok):
    assert translate(MISTRAL, tok) is None
    assert translate("{{ raise_exception('no') }}", tok) is None


def test_end_of_turn_ids(tok):
    assert end_of_turn_ids(tok, tok.chat_template) == [2]  # <|im_end|>
    llama_tok = replace(tok, special_tokens=[*tok.special_tokens, "<|im_start|>"])
    assert end_of_turn_ids(llama_tok, chat_template_text("alpaca")) == [2]  # alpaca ends answers with eos
    assert end_of_turn_ids(tok, None) == [2]


def test_gguf_rebuilt_tokenizer_is_presented_in_hub_form(embedded_model):
    """transformers rebuilds the embedded GGUF's byte-level BPE with byte_fallback and a SentencePiece
    decoder chain; the canonical form must tokenize and decode every id identically."""
    original = (embedded_model / "tokenizer.json").read_text()
    data = json.loads(original)
    assert data["model"]["byte_fallback"] is True  # why the converter would mistake it for SentencePiece
    fixed = canonical_byte_level(data)
    assert fixed["model"]["byte_fallback"] is False and fixed["decoder"]["type"] == "ByteLevel"
    assert _same_tokenizer(original, json.dumps(fixed), PROBE_TEXTS)
    assert canonical_byte_level(fixed) is None  # already canonical
    spm_like = json.loads(original)
    spm_like["model"]["vocab"]["<0x0A>"] = len(spm_like["model"]["vocab"])
    assert canonical_byte_level(spm_like) is None  # real byte-fallback tokens: left alone


def test_quant_names():
    assert parse_quants(["Q4_K_M", "f16", "q4_k_m"]) == ["q4_k_m", "f16"]
    assert parse_quants(["f16,q8_0"]) == ["f16", "q8_0"]
    with pytest.raises(UsageError) as caught:
        parse_quants(["q2_k"])
    assert "valid: f16, bf16, q8_0, q4_k_m" in caught.value.one_line()
