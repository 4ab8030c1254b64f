"""`slothctl data inspect` and `slothctl data format` as users run them: exact numbers on a known file,
every bad input (one line, exit 2, nothing written), the cache (hit, miss, stale, partial) and `train`
training on the cache."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_usage_error, make_project, run_cli
from data_files import config_for, sharegpt, write_jsonl
from test_cli import assert_light

MODEL = "embedded:smollm2-135m"

KNOWN = [
    sharegpt(("human", "What is 2+2?"), ("gpt", "4")),
    sharegpt(("system", "Be brief."), ("human", "Hi"), ("gpt", "Hello"), ("human", "Bye"), ("gpt", "Bye!")),
    sharegpt(("human", "Tell me a story"), ("gpt", "Once upon a time a sloth hung in a tree. " * 6)),
    sharegpt(("human", "Only asking")),
    sharegpt(("human", " "), ("gpt", "")),
    {"conversation": [{"from": "human", "value": "typo"}]},
    sharegpt(("human", "What is 2+2?"), ("gpt", "4")),
    sharegpt(("human", "Q"), ("gpt", "A")),
]


def chatml_pieces(row: dict) -> list[tuple[str, bool]]:
    """The ChatML rendering of a row written out by hand: prompts untrained, replies trained."""
    roles = {"system": "system", "human": "user", "gpt": "assistant"}
    pieces = []
    for turn in row["conversations"]:
        role = roles[turn["from"]]
        if role == "assistant":
            pieces += [("<|im_start|>assistant\n", False), (turn["value"] + "<|im_end|>", True), ("\n", False)]
        else:
            pieces.append((f"<|im_start|>{role}\n{turn['value']}<|im_end|>\n", False))
    merged: list[tuple[str, bool]] = []  # neighbouring prompt pieces are one segment
    for text, trained in pieces:
        if merged and not trained and not merged[-1][1]:
            merged[-1] = (merged[-1][0] + text, False)
        else:
            merged.append((text, trained))
    return merged


@pytest.fixture
def env(tmp_path) -> dict:
    return {"SLOTHCTL_DATA_CACHE": str(tmp_path / "cache")}


def test_inspect_json_gives_the_right_numbers(tmp_path, embedded_model, env):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(embedded_model / "tokenizer.json"))
    data = write_jsonl(tmp_path / "known.jsonl", KNOWN)
    result = run_cli("data", "inspect", str(data), "--model", MODEL, "--json", "--set", "model.max_seq_length=40",
                     "--set", "data.chat_template=chatml", "--set", "data.eval_fraction=0.25", env=env)
    assert result.returncode == 0, result.stderr
    report = result.json()
    lengths, kept_tokens, kept_trained = [], 0, 0
    for number in (1, 2, 3, 4, 7, 8):  # the rows that render
        ids, trained = [], []
        for text, is_trained in chatml_pieces(KNOWN[number - 1]):
            encoded = tok.encode(text, add_special_tokens=False).ids
            ids += encoded
            trained += [is_trained] * len(encoded)
        lengths.append(len(ids))
        if number != 4:  # row 4 has no reply
            kept_tokens += min(len(ids), 40)
            kept_trained += sum(trained[:40])
    lengths = np.array(lengths)
    assert report["rows"] == 8 and report["format"] == "sharegpt"
    assert report["detection"] == "detected sharegpt: column `conversations` with from/value keys in 7/8 rows"
    assert report["tokens"] == {"min": int(lengths.min()), "mean": round(float(lengths.mean()), 1),
                                "p50": int(np.sort(lengths)[2]), "p95": int(lengths.max()),
                                "max": int(lengths.max()), "total": int(lengths.sum())}
    assert report["truncated"] == 1 and report["truncated_pct"] == 16.67 and report["max_seq_length"] == 40
    assert report["trained_tokens"] == kept_trained
    assert report["trained_token_fraction"] == round(kept_trained / kept_tokens, 4)
    assert report["invalid"] == [5, 6] and report["empty"] == [5] and report["no_trained_tokens"] == [4]
    assert [p["reason"] for p in report["problems"]] == ["is empty", "`conversations` is missing",
                                                         "has no assistant reply to train on"]
    assert report["problems"][0]["origin"] == "known.jsonl:5"
    assert report["duplicates"] == {"count": 1, "rows": [7]}
    assert report["roles"] == {"system": 1, "user": 7, "assistant": 6}
    assert report["turns"] == {"min": 1, "mean": 2.33, "max": 5}
    assert (report["train_rows"], report["eval_rows"]) == (4, 1)
    assert report["chat_template"] == "chatml" and report["end_of_turn"] == "<|im_end|>"
    assert report["pad_token"] == "<|endoftext|>" and report["cache"]["formatted"] is True
    assert report["cache"]["hit"] is False
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [report["cache"]["key"]]  # train's cache
    again = run_cli("data", "format", str(data), "--model", MODEL, "--json", "--set", "model.max_seq_length=40",
                    "--set", "data.chat_template=chatml", "--set", "data.eval_fraction=0.25", env=env)
    assert again.returncode == 0, again.stderr
    assert again.json_lines()[-1]["hit"] is True and again.json_lines()[-1]["key"] == report["cache"]["key"]


def test_inspect_show_highlights_trained_tokens(tmp_path, env):
    data = write_jsonl(tmp_path / "d.jsonl", KNOWN[:2])
    result = run_cli("data", "inspect", str(data), "--model", MODEL, "--show", "2", "--json", env=env)
    assert result.returncode == 0, result.stderr
    examples = result.json()["examples"]
    assert [e["row"] for e in examples] == [1, 2]
    second = examples[1]["spans"]
    assert [s["text"] for s in second if s["trained"]] == ["Hello", "<|im_end|>", "Bye!", "<|im_end|>"]
    assert {s["text"] for s in second if s["special"]} == {"<|im_start|>", "<|im_end|>"}
    human = run_cli("data", "inspect", str(data), "--model", MODEL, "--show", "1", env=env)
    assert human.returncode == 0, human.stderr
    assert "detected sharegpt" in human.stdout and "<|im_start|>assistant" in human.stdout
    assert "row 1 (d.jsonl:1, train): " in human.stdout and "trained" in human.stdout  # a cache hit: origins read
    assert "cache hit: train will use it" in human.stdout


def test_inspect_uses_the_project_and_imports_nothing_heavy(project, tmp_path):
    result = run_cli("data", "inspect", "--json", cwd=project)
    assert result.returncode == 0, result.stderr
    report = result.json()
    assert report["rows"] == 216 and report["format"] == "messages" and report["model"] == MODEL
    rows = [json.loads(line) for line in (project / "data" / "sloth_chat.jsonl").read_text().splitlines()]
    csv_file = tmp_path / "d.csv"
    csv_file.write_text("instruction,output\n" + "".join(f"Q{i},A{i}\n" for i in range(5)))
    jsonl_file = write_jsonl(tmp_path / "d.jsonl", rows[:20])
    for args in (["data", "inspect", str(jsonl_file), "--model", MODEL, "--show", "1"],
                 ["data", "inspect", str(csv_file), "--model", MODEL, "--json"],
                 ["data", "inspect", "-c", str(project / "slothctl.toml"), "--json"]):
        assert_light(args, cwd=tmp_path)


BAD_INPUTS = {
    "malformed-json": ('{"text": "ok"}\n{"text": "fine"}\n{"text": broken\n', [],
                       ["bad.jsonl: line 3: malformed JSON"]),
    "misspelled-column": ([{"instrution": "Add", "input": "", "output": "2"}], [],
                          ["columns found: input, instrution, output", "did you mean `instrution` → `instruction`?",
                           "alpaca: instruction, input (optional), output"]),
    "missing-column": ([{"question": "Add", "answer": "2"}], [],
                       ["cannot tell the data format", "columns found: answer, question", "prompt, completion"]),
    "unknown-role": ([sharegpt(("human", "Hi"), ("gpt", "Yo")), sharegpt(("narrator", "Once"), ("gpt", "Hm"))], [],
                     ['bad.jsonl:2 (row 2): unknown role "narrator"', "known roles:"]),
    "empty-dataset": ("\n\n", [], ["is empty (no rows)"]),
    "not-utf8": (b'{"text": "ok"}\n{"text": "caf\xe9"}\n', [], ["bad.jsonl: line 2: not UTF-8"]),
    "format-mismatch": ([{"instruction": "Add", "output": "2"}], ["--set", "data.format=sharegpt"],
                        ['format = "sharegpt" does not match the data', "columns found: instruction, output"]),
    "template-cannot-render": ([{"messages": [{"role": "user", "content": "Hi"}, {"role": "tool", "content": "x"},
                                              {"role": "assistant", "content": "Yo"}]}],
                               ["--set", "data.chat_template=alpaca"],
                               ["bad.jsonl:1 (row 1): the chat template cannot render it",
                                "no place for a tool message"]),
    "template-needs-tokens": ([sharegpt(("human", "Hi"), ("gpt", "Yo"))], ["--set", "data.chat_template=llama-3"],
                              ['chat_template = "llama-3" writes special tokens', "<|eot_id|>"]),
    "strict": ([sharegpt(("human", "Hi"), ("gpt", "Yo")), {"text": "stray"}], ["--strict"],
               ["1 row(s) would be dropped (strict): row 2 (bad.jsonl:2): `conversations` is missing"]),
    "unreadable": ('{"text": "ok"}\n', ["--unreadable"], ["bad.jsonl: cannot be read ("]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, tmp_path, env):
    content, args, fragments = BAD_INPUTS[case]
    path = tmp_path / "bad.jsonl"
    if isinstance(content, list):
        write_jsonl(path, content)
    else:
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    if "--unreadable" in args:
        if os.geteuid() == 0:  # root reads any file whatever its permissions, but not this one
            path.unlink()
            path.symlink_to("/proc/self/mem")
        else:
            path.chmod(0)
        args = [a for a in args if a != "--unreadable"]
    out = tmp_path / "review.jsonl"
    for command in ("inspect", "format"):
        extra = ["--out", str(out)] if command == "format" else []
        assert_usage_error(run_cli("data", command, str(path), "--model", MODEL, *args, *extra, env=env), *fragments)
    assert not out.exists() and not (tmp_path / "cache").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl"]


def test_missing_model_or_project_is_a_usage_error(tmp_path, env):
    data = write_jsonl(tmp_path / "d.jsonl", KNOWN[:1])
    assert_usage_error(run_cli("data", "inspect", str(data), cwd=tmp_path, env=env), "no project file", "--model")
    assert_usage_error(run_cli("data", "format", cwd=tmp_path, env=env), "slothctl.toml", "no such file")


def test_format_cache_hit_miss_stale_and_out(tmp_path, env):
    data = write_jsonl(tmp_path / "d.jsonl", KNOWN)

    def fmt(*args: str) -> dict:
        result = run_cli("data", "format", str(data), "--model", MODEL, "--json", *args, env=env)
        assert result.returncode == 0, result.stderr
        return result.json_lines()[-1]

    first = fmt("--out", str(tmp_path / "review.jsonl"))
    assert first["hit"] is False and Path(first["cache"]).parent == tmp_path / "cache"
    assert (first["rows"], first["train_rows"], first["invalid"], first["no_trained_tokens"]) == (8, 5, 2, 1)
    review = [json.loads(line) for line in (tmp_path / "review.jsonl").read_text().splitlines()]
    assert [r["row"] for r in review] == [1, 2, 3, 7, 8] and review[0]["origin"] == "d.jsonl:1"
    assert review[0]["trained"] == ["4<|im_end|>"] and review[0]["text"].endswith("assistant\n4<|im_end|>\n")
    again = fmt()
    assert again["hit"] is True and again["key"] == first["key"]
    assert fmt("--set", "model.max_seq_length=64")["hit"] is False  # every token-changing key is in the key
    write_jsonl(data, KNOWN + [sharegpt(("human", "New"), ("gpt", "Row"))])
    changed = fmt()
    assert changed["hit"] is False and changed["key"] != first["key"] and changed["rows"] == 9
    write_jsonl(data, KNOWN)
    assert fmt()["key"] == first["key"]
    human = run_cli("data", "format", str(data), "--model", MODEL, env=env)
    assert "cache hit" in human.stdout and first["key"] in human.stdout.replace("\n", "")


def test_partial_or_damaged_cache_is_never_used(tmp_path, embedded_model, monkeypatch):
    from slothctl.data import cache, formatted, pipeline
    from slothctl.data.tokenizer import load_text_tokenizer

    monkeypatch.setenv("SLOTHCTL_DATA_CACHE", str(tmp_path / "cache"))
    cfg = config_for(write_jsonl(tmp_path / "d.jsonl", KNOWN), embedded_model)
    tok = load_text_tokenizer(str(embedded_model))
    first = formatted(cfg, tok)
    entry = Path(first.cache["path"])
    assert first.cache["hit"] is False and sorted(p.name for p in entry.iterdir()) == [
        "full_lengths.npy", "is_eval.npy", "manifest.json", "prepared.json", "row_numbers.npy", "tokens.arrow"]
    calls = []
    real_prepare = pipeline.prepare
    monkeypatch.setattr("slothctl.data.prepare", lambda *a, **k: calls.append(1) or real_prepare(*a, **k))
    hit = formatted(cfg, tok)
    assert hit.cache["hit"] is True and not calls  # a hit formats nothing
    assert hit.train[0].input_ids == first.train[0].input_ids and hit.report == first.report

    def damage(how) -> None:
        how()
        again = formatted(cfg, tok)
        assert again.cache["hit"] is False and again.cache["key"] == first.cache["key"]
        assert (entry / "manifest.json").is_file() and cache.read(first.cache["key"]) is not None

    damage(lambda: (entry / "manifest.json").unlink())  # a write that never finished
    damage(lambda: (entry / "tokens.arrow").write_bytes((entry / "tokens.arrow").read_bytes()[:-8]))  # truncated
    flipped = bytearray((entry / "tokens.arrow").read_bytes())
    flipped[len(flipped) // 2] ^= 1
    damage(lambda: (entry / "tokens.arrow").write_bytes(bytes(flipped)))  # same size, other content
    assert len(calls) == 3
    leftovers = [p.name for p in (tmp_path / "cache").iterdir() if p.name != first.cache["key"]]
    assert leftovers == []  # temporary folders are renamed or removed


def test_train_trains_on_the_formatted_cache(tmp_path, embedded_model):
    """`data format` once, then `train` finds the same entry and formats nothing (one short real training)."""
    project = make_project(tmp_path / "proj")
    env = {"SLOTHCTL_DATA_CACHE": str(tmp_path / "cache")}
    formatted = run_cli("data", "format", "--json", cwd=project, env=env)
    assert formatted.returncode == 0, formatted.stderr
    key = formatted.json_lines()[-1]["key"]
    trained = run_cli("train", "--max-steps", "1", "--json", cwd=project, env=env)
    assert trained.returncode == 0, trained.stderr[-3000:]
    events = trained.json_lines()
    hits = [e for e in events if e.get("cache")]
    assert [(e["cache"], e["key"]) for e in hits] == [("hit", key)]
    assert not any("Rendering and tokenizing" in e.get("message", "") for e in events)
    assert events[-1]["event"] == "done" and events[-1]["steps"] == 1
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [key]
