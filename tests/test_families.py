"""The model families slothctl names, on tiny random-weight models with their real tokenizers and
chat templates (built once per cache by tests/families.py): Llama 3.1, Qwen 2.5, Qwen 3, Gemma 2,
Phi 3.5 and Mistral.

Every family, every run: `data inspect` on a chat set with system turns, multi-turn conversations
and an empty reply; each row's tokens must equal transformers' `apply_chat_template` and its trained
tokens must be exactly each reply and its end-of-turn token; and the Ollama TEMPLATE slothctl writes
must render what the Jinja template renders.

The whole path — train 2 steps, chat, merge with its check, GGUF f16 with its check and Modelfile —
runs for Phi 3.5 by default (its eos is not its end-of-turn token, its projections are fused, and
llama.cpp treats its SentencePiece tokens specially); SLOTHCTL_ALL_FAMILIES=1 runs it for all six
(about 2.5 CPU-minutes each). The default run of this file takes about 170 CPU-seconds.
The tiny models always answer with their end-of-turn token first (families._force_end_of_turn),
so a chat that stops after one token proves that token is among the stop tokens; where the tokenizer's
own eos is another token (Gemma's <eos>, Phi's <|endoftext|>), stopping on eos alone would run to
max_new_tokens instead.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

import families as F
from conftest import run_cli
from data_files import config_for, write_jsonl

ALL = bool(os.environ.get("SLOTHCTL_ALL_FAMILIES"))
SYSTEM = "You are a terse assistant."
ROWS = [
    {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is 2+2?"},
                  {"role": "assistant", "content": "4."}]},
    {"messages": [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello! How can I help?"},
                  {"role": "user", "content": "Tell me a joke."},
                  {"role": "assistant", "content": "Why did the sloth cross the road? It didn't."}]},
    {"messages": [{"role": "user", "content": "Say nothing."}, {"role": "assistant", "content": ""}]},
    {"messages": [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hello"},
                  {"role": "assistant", "content": "Bonjour"}, {"role": "user", "content": "Thanks"},
                  {"role": "assistant", "content": "De rien ! 🦥"}]},
    {"messages": [{"role": "user", "content": "  spaced  "}, {"role": "assistant", "content": " 42 "}]},
]
TRIMS = {"llama-3.1", "gemma-2"}  # templates that trim message contents
SYSTEM_HANDLING = {"gemma-2": "merged into the first user turn", "mistral": "left out of conversations that end"}


@pytest.fixture(scope="session")
def family_models() -> dict[str, Path]:
    """All six tiny models (built once per cache, safe across processes)."""
    return {name: F.model_dir(name) for name in F.FAMILIES}


def merged_system(messages: list[dict]) -> list[dict]:
    """The documented rule for a template without a system role, written out here on its own."""
    if messages[0]["role"] != "system":
        return messages
    return [{"role": "user", "content": messages[0]["content"] + "\n\n" + messages[1]["content"]}] + messages[2:]


def expected_replies(name: str, messages: list[dict]) -> list[str]:
    """Each reply as the family's template writes it, with its end-of-turn token."""
    family = F.FAMILIES[name]
    replies = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        text = message["content"].strip() if name in TRIMS else message["content"]
        if name == "qwen3" and i == len(messages) - 1:  # Qwen 3 writes an empty think block in the last reply
            text = "<think>\n\n</think>\n\n" + text
        replies.append(text + family.end_of_turn)
    return replies


def trained_runs(example) -> list[list[int]]:
    runs, run = [], []
    for token, label in zip(example.input_ids + [None], example.labels + [-100]):
        if label != -100:
            run.append(token)
        elif run:
            runs.append(run)
            run = []
    return runs


@pytest.mark.parametrize("name", list(F.FAMILIES))
def test_rendering_is_apply_chat_template_and_only_replies_are_trained(name, family_models, tmp_path):
    from transformers import AutoTokenizer

    from slothctl.data import prepare
    from slothctl.data.tokenizer import load_text_tokenizer

    family, model = F.FAMILIES[name], family_models[name]
    data = write_jsonl(tmp_path / "chat.jsonl", ROWS)
    result = run_cli("data", "inspect", str(data), "--model", str(model), "--json",
                     env={"SLOTHCTL_DATA_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr
    report = result.json()
    assert (report["chat_template"], report["end_of_turn"]) == ("tokenizer", family.end_of_turn)
    assert report["pad_token"] not in (family.eos, family.end_of_turn, None)
    assert report["system_turns"]["turns"] == 2
    assert report["system_turns"]["handling"].startswith(SYSTEM_HANDLING.get(name, "kept"))
    assert {p["row"] for p in report["problems"]} <= {3}  # an empty reply may be dropped, nothing else

    hf = AutoTokenizer.from_pretrained(model)
    end_id = hf.convert_tokens_to_ids(family.end_of_turn)
    prepared = prepare(config_for(data, model), load_text_tokenizer(str(model)))
    assert len(prepared.row_numbers) >= 4
    for i, row in enumerate(prepared.row_numbers.tolist()):
        messages = ROWS[row - 1]["messages"]
        example = prepared.tokens.example(i)
        reference = merged_system(messages) if family.system == "merged" else messages
        assert example.input_ids == hf.apply_chat_template(reference, tokenize=True, return_dict=True)["input_ids"], row
        runs = trained_runs(example)
        assert [run[-1] for run in runs] == [end_id] * len(runs), row  # every reply ends with the end of turn
        assert [hf.decode(run).strip() for run in runs] == [r.strip() for r in expected_replies(name, messages)], row


@pytest.mark.parametrize("name", list(F.FAMILIES))
def test_ollama_template_renders_what_the_chat_template_renders(name, family_models):
    from slothctl.data.chat_template import render
    from slothctl.data.tokenizer import load_text_tokenizer
    from slothctl.export import gotemplate
    from slothctl.export.chat_formats import translate

    family = F.FAMILIES[name]
    tok = load_text_tokenizer(str(family_models[name]))
    chat = translate(tok.chat_template, tok)
    assert chat is not None and chat.family == family.ollama
    assert family.end_of_turn in chat.stops
    conversations = [[{"role": "user", "content": "Why are sloths slow?"}],
                     [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}]]
    for messages in conversations:
        system = messages[0]["content"] if messages[0]["role"] == "system" else chat.system
        ollama = {"System": system or "", "Messages": ([{"Role": "system", "Content": system}] if system else [])
                  + [{"Role": m["role"], "Content": m["content"]} for m in messages if m["role"] != "system"]}
        reference = merged_system(messages) if family.system == "merged" else messages
        jinja = render(tok.chat_template, reference, add_generation_prompt=True, bos_token=tok.bos_token,
                       eos_token=tok.eos_token)
        if chat.starts_with_bos:
            jinja = jinja.removeprefix(tok.bos_token)
        assert gotemplate.render(chat.template, ollama) == jinja


def modelfile_parts(text: str) -> dict:
    return {key: value for key, value in re.findall(r'^(TEMPLATE|SYSTEM) """(.*?)"""', text, re.S | re.M)}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(F.FAMILIES))
def test_train_chat_merge_and_gguf(name, family_models, tmp_path):
    if name not in F.FAST and not ALL:
        pytest.skip(f"the default run takes {', '.join(F.FAST)} through the whole path; SLOTHCTL_ALL_FAMILIES=1")
    from transformers import AutoTokenizer

    from slothctl.data.chat_template import render
    from slothctl.export import gotemplate

    family, model = F.FAMILIES[name], family_models[name]
    template = (model / "chat_template.jinja").read_text(encoding="utf-8")
    end_id = AutoTokenizer.from_pretrained(model).convert_tokens_to_ids(family.end_of_turn)
    data = write_jsonl(tmp_path / "chat.jsonl", ROWS)
    project = tmp_path / name
    sets = ["model.max_seq_length=128", "train.batch_size=2", "train.gradient_accumulation_steps=1",
            "train.gradient_checkpointing=false", "data.eval_fraction=0.0", "train.save_steps=0",
            f"chat.system_prompt={SYSTEM}"]
    init = run_cli("init", str(project), "--model", str(model), "--dataset", str(data),
                   *[arg for s in sets for arg in ("--set", s)])
    assert init.returncode == 0, init.stderr
    env = {"SLOTHCTL_DATA_CACHE": str(tmp_path / "cache")}

    train = run_cli("train", "--max-steps", "2", "--json", cwd=project, env=env)
    assert train.returncode == 0, train.stderr[-3000:]
    adapter = project / "runs" / name / "adapter"
    assert json.loads((adapter / "tokenizer_config.json").read_text())["eos_token"] == family.end_of_turn
    assert (adapter / "chat_template.jinja").read_text(encoding="utf-8") == template

    chat = run_cli("chat", "--prompt", "Hi", "--temperature", "0", "--max-new-tokens", "8", "--json", cwd=project)
    assert chat.returncode == 0, chat.stderr[-3000:]
    reply = chat.json_lines()[-1]
    assert (reply["finish_reason"], reply["tokens"], reply["answer"]) == ("stop", 1, "")

    export = run_cli("export", "gguf", "--quant", "f16", "--json", cwd=project, env=env)
    assert export.returncode == 0, export.stderr[-3000:]
    done = export.json_lines()[-1]
    merged = project / "runs" / name / "merged"
    check = json.loads((merged / "slothctl_check.json").read_text())
    assert check["passed"] and check["chat_template_matches"], check
    generation = json.loads((merged / "generation_config.json").read_text())
    eos_ids = generation["eos_token_id"] if isinstance(generation["eos_token_id"], list) else [generation["eos_token_id"]]
    assert eos_ids[0] == end_id and check["eos_token_ids"][0] == end_id
    assert json.loads((merged / "tokenizer_config.json").read_text())["eos_token"] == family.end_of_turn

    files = done["check"]["files"]
    (gguf_name, gguf_check), = files.items()
    assert gguf_check["tokenization_matches"] and gguf_check["stops_at_eos"], gguf_check
    metadata = done["files"][0]["metadata"]
    assert (metadata["chat_template"], metadata["eos_token_id"]) == (template, end_id)
    assert done["ollama_template"] == family.ollama
    parts = modelfile_parts((project / "runs" / name / "gguf" / "Modelfile").read_text(encoding="utf-8"))
    assert parts["SYSTEM"] == SYSTEM  # [chat] system_prompt
    ollama = {"System": SYSTEM, "Messages": [{"Role": "system", "Content": SYSTEM}, {"Role": "user", "Content": "Hi"}]}
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hi"}]
    tokenizer = AutoTokenizer.from_pretrained(merged)
    trained = tokenizer.apply_chat_template(merged_system(messages) if family.system == "merged" else messages,
                                            add_generation_prompt=True, tokenize=False)
    bos = tokenizer.bos_token if metadata["add_bos_token"] and tokenizer.bos_token else ""
    assert bos + gotemplate.render(parts["TEMPLATE"], ollama) == trained
    assert trained == render(template, merged_system(messages) if family.system == "merged" else messages,
                             add_generation_prompt=True, bos_token=tokenizer.bos_token, eos_token=tokenizer.eos_token)
