"""Bad data that used to be trained on silently, data errors that named no file, caches in the way and
models that need code: each is found before anything is written (one line, exit 2), or dropped and
listed. And the formatted-data cache misses whenever something that shapes the tokens changes."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from conftest import assert_usage_error, final_error, make_project, run_cli
from data_files import config_for, sharegpt, tokenizer_copy, write_jsonl
from slothctl.config import DataConfig
from slothctl.data import formatted, prepare
from slothctl.data.tokenizer import load_text_tokenizer
from slothctl.errors import DataError

MODEL = "embedded:smollm2-135m"


@pytest.fixture(scope="module")
def tok(embedded_model):
    return load_text_tokenizer(str(embedded_model))


@pytest.fixture
def env(tmp_path) -> dict:
    return {"SLOTHCTL_DATA_CACHE": str(tmp_path / "cache")}


def assert_refused(result, *fragments: str) -> str:
    """Exit 2 and one error line, the last on stderr but for its hint (after any progress lines of `train`); returns it."""
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    error = final_error(result.stderr)
    for fragment in fragments:
        assert fragment in error, (fragment, error)
    return error


def inspect_json(path: Path, env: dict, *args: str) -> dict:
    result = run_cli("data", "inspect", str(path), "--model", MODEL, "--json", *args, env=env)
    assert result.returncode == 0, result.stderr
    return result.json()


# ---- CSV quoting that swallows records ------------------------------------------------------------------------

def csv_rows(n: int = 8) -> list[str]:
    return [f"Question {i}?,Answer {i}." for i in range(1, n + 1)]


def write_csv(path: Path, rows: list[str]) -> Path:
    path.write_text("instruction,output\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_an_unclosed_quote_is_refused_with_the_line_it_opens_on(tmp_path, env):
    rows = csv_rows()
    rows[1] = 'Question 2?,"Answer 2 never closes'  # row 2 of 8: line 3 of the file
    data = write_csv(tmp_path / "bad.csv", rows)
    for command in (["inspect"], ["format", "--strict"]):
        line = assert_usage_error(run_cli("data", *command, str(data), "--model", MODEL, env=env),
                                  "bad.csv: line 3", "quote", "never closed", "lines 4-9")
    assert "Answer 2" not in line  # the one line stays short
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv"]  # no cache entry

    project = make_project(tmp_path / "proj")  # `train` refuses it before writing anything
    shutil.copy(data, project / "data" / "bad.csv")
    assert_refused(run_cli("train", "--set", "data.source=data/bad.csv", cwd=project, env=env), "bad.csv: line 3")
    assert not (project / "runs").exists() and not (tmp_path / "cache").exists()


def test_a_quote_closed_records_later_is_reported_and_strict_refuses(tmp_path, env):
    rows = csv_rows()
    rows[1] = 'Question 2?,"Answer 2 opens a quote'
    rows[5] = 'Question 6?,6"'  # a stray quote before a line end closes the field: valid CSV, wrong rows
    data = write_csv(tmp_path / "swallow.csv", rows)
    result = run_cli("data", "inspect", str(data), "--model", MODEL, "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert result.json()["rows"] == 4  # what the CSV says: rows 3-6 became part of row 2
    warning = " ".join(result.stderr.split())  # data commands warn on stderr, wrapped for reading
    assert warning.count("warning:") == 1 and "swallow.csv: line 3: the quoted `output` field" in warning
    assert "lines 4-7 look like records" in warning
    again = run_cli("data", "inspect", str(data), "--model", MODEL, "--json", env=env)  # a cache hit warns too
    assert json.loads(again.stdout)["cache"]["hit"] is True and "look like records" in " ".join(again.stderr.split())
    assert_usage_error(run_cli("data", "inspect", str(data), "--model", MODEL, "--strict", env=env),
                       "swallow.csv: line 3", "look like records")  # and --strict refuses on a hit too


def test_legitimate_multi_line_fields_are_not_suspected(tmp_path, env):
    text = ('instruction,output\n"Write a list, please","1. eggs\n2. flour\n3. milk"\n'
            '"A poem","Roses are red,\nviolets are blue"\nQ,A\n')
    data = tmp_path / "ok.csv"
    data.write_text(text, encoding="utf-8")
    result = run_cli("data", "inspect", str(data), "--model", MODEL, "--json", "--strict", env=env)
    assert result.returncode == 0, result.stderr
    assert result.json()["rows"] == 3 and "warning" not in result.stderr


# ---- empty replies are dropped and listed, --strict refuses them ----------------------------------------------

def msgs(*turns: tuple[str, str]) -> dict:
    return {"messages": [{"role": role, "content": text} for role, text in turns]}


EMPTY_REPLIES = {
    "messages": [msgs(("user", "Hi"), ("assistant", "Hello")), msgs(("user", "Hi"), ("assistant", "")),
                 msgs(("user", "Hi"), ("assistant", " \n\t"))],
    "sharegpt": [sharegpt(("human", "Hi"), ("gpt", "Hello")), sharegpt(("human", "Hi"), ("gpt", "")),
                 sharegpt(("human", "A"), ("gpt", "B"), ("human", "C"), ("gpt", "  "))],
    "alpaca": [{"instruction": "Hi", "input": "", "output": "Hello"}, {"instruction": "Hi", "output": ""},
               {"instruction": "Hi", "input": "x", "output": "\n"}],
    "prompt_completion": [{"prompt": "Hi", "completion": "Hello"}, {"prompt": "Hi", "completion": ""},
                          {"prompt": [{"role": "user", "content": "Hi"}],
                           "completion": [{"role": "assistant", "content": " "}]}],
}


@pytest.mark.parametrize("fmt", list(EMPTY_REPLIES))
def test_empty_replies_are_dropped_listed_and_refused_with_strict(fmt, tmp_path, embedded_model, tok):
    source = write_jsonl(tmp_path / "d.jsonl", EMPTY_REPLIES[fmt])
    prepared = prepare(config_for(source, embedded_model), tok)
    assert prepared.format == fmt
    assert prepared.row_numbers.tolist() == [1]
    assert [(p.row, p.reason) for p in prepared.invalid] == [(2, "has an empty assistant reply"),
                                                             (3, "has an empty assistant reply")]
    assert prepared.report["empty"] == [2, 3] and prepared.report["invalid"] == [2, 3]
    with pytest.raises(DataError, match=r"2 row\(s\) would be dropped \(strict\): row 2 \(d.jsonl:2\): has an empty"):
        prepare(config_for(source, embedded_model, strict=True), tok)


def test_empty_replies_in_the_inspect_report(tmp_path, env):
    source = write_jsonl(tmp_path / "d.jsonl", EMPTY_REPLIES["messages"])
    report = inspect_json(source, env)
    assert report["empty"] == [2, 3] and report["train_rows"] == 1
    assert [(p["row"], p["reason"]) for p in report["problems"]] == [(2, "has an empty assistant reply"),
                                                                     (3, "has an empty assistant reply")]
    human = run_cli("data", "inspect", str(source), "--model", MODEL, env=env)
    assert human.returncode == 0 and "2 rows dropped: 2, 3" in human.stdout
    assert_usage_error(run_cli("data", "inspect", str(source), "--model", MODEL, "--strict", env=env),
                       "2 row(s) would be dropped (strict)", "has an empty assistant reply")


# ---- data errors name their file ------------------------------------------------------------------------------

@pytest.mark.parametrize("rows, args, fragments", [
    ([{"question": "Add", "answer": "2"}], [], ["cannot tell the data format"]),
    ([{"instruction": "Add", "output": "2"}], ["--set", "data.format=sharegpt"], ["does not match the data"]),
    ([{"instruction": "Add", "output": "2"}], ["--set", 'data.columns={ questoin = "prompt" }'], ["questoin"]),
], ids=["unknown-columns", "forced-format", "mapped-column"])
def test_column_errors_name_the_file(rows, args, fragments, tmp_path, env):
    source = write_jsonl(tmp_path / "wrong.jsonl", rows)
    line = assert_usage_error(run_cli("data", "inspect", str(source), "--model", MODEL, *args, env=env), *fragments)
    assert str(source) in line


# ---- caches in the way ------------------------------------------------------------------------------------------

def test_a_data_cache_path_that_is_a_file_is_named_with_what_to_do(tmp_path):
    source = write_jsonl(tmp_path / "d.jsonl", EMPTY_REPLIES["messages"][:1])
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    for cache in (blocker, blocker / "data"):
        line = assert_usage_error(run_cli("data", "format", str(source), "--model", MODEL,
                                          env={"SLOTHCTL_DATA_CACHE": str(cache)}),
                                  f"{blocker} is a file", "SLOTHCTL_DATA_CACHE")
        assert "File exists" not in line and "Not a directory" not in line
    assert blocker.read_text() == "not a folder"


def test_a_model_cache_that_is_a_file_is_named_with_what_to_do(tmp_path):
    source = write_jsonl(tmp_path / "d.jsonl", EMPTY_REPLIES["messages"][:1])
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    line = assert_usage_error(run_cli("data", "inspect", str(source), "--model", MODEL,
                                      env={"SLOTHCTL_CACHE": str(blocker), "SLOTHCTL_DATA_CACHE": ""}),
                              f"{blocker} is a file", "SLOTHCTL_CACHE")
    assert "NotADirectoryError" not in line


# ---- a model that needs its own code ----------------------------------------------------------------------------

def remote_code_model(embedded: Path, target: Path, model_type: str) -> Path:
    """A copy of the embedded model's tokenizer with a config.json whose architecture lives in the model's
    own Python files (auto_map), as on the Hub."""
    tokenizer_copy(embedded, target)
    config = json.loads((embedded / "config.json").read_text())
    config.update(model_type=model_type, auto_map={"AutoConfig": "configuration_sloth.SlothConfig",
                                                   "AutoModelForCausalLM": "modeling_sloth.SlothForCausalLM"})
    (target / "config.json").write_text(json.dumps(config))
    return target


def test_a_model_needing_its_own_code_is_refused_naming_the_toml_key(tmp_path, embedded_model):
    project = make_project(tmp_path / "proj")
    remote_code_model(embedded_model, project / "custom", "sloth_custom")
    env = {"SLOTHCTL_DATA_CACHE": str(tmp_path / "cache")}
    line = assert_refused(run_cli("train", "--set", "model.name=custom", cwd=project, env=env),
                          "[model] trust_remote_code", "configuration_sloth.py")
    assert "trust_remote_code=True" not in line
    assert not (project / "runs").exists() and not (tmp_path / "cache").exists()


def test_auto_map_beside_a_known_architecture_needs_no_code(tmp_path, embedded_model):
    from slothctl import models

    folder = remote_code_model(embedded_model, tmp_path / "llama-with-code", "llama")  # transformers knows llama
    models.check_remote_code(str(folder), trust_remote_code=False)
    custom = remote_code_model(embedded_model, tmp_path / "custom", "sloth_custom")
    models.check_remote_code(str(custom), trust_remote_code=True)
    models.check_remote_code("nobody/not-in-the-cache", trust_remote_code=False)  # found out when it loads


# ---- the formatted-data cache misses when anything that shapes the tokens changes ------------------------------

# Every [data] key either shapes the tokens (so it is in the cache key) or does not (so a change keeps the
# entry): a new key must be added to one of these, or this test fails.
SHAPES_TOKENS = {"source": None, "format": "sharegpt", "split": "other", "subset": "x",
                 "columns": {"note": "comment"}, "chat_template": "chatml", "train_on_responses_only": False,
                 "eval_fraction": 0.25, "seed": 7, "max_rows": 3}
KEEPS_TOKENS = {"num_proc": 2, "strict": True}


def test_every_data_key_is_classified():
    assert set(SHAPES_TOKENS) | set(KEEPS_TOKENS) == {f.name for f in dataclasses.fields(DataConfig)}


@pytest.fixture
def cached(tmp_path, embedded_model, monkeypatch):
    """A small dataset formatted once into an empty cache; returns (rows file, its first entry's key)."""
    monkeypatch.setenv("SLOTHCTL_DATA_CACHE", str(tmp_path / "cache"))
    rows = [sharegpt(("human", f"Question {i}?"), ("gpt", f"Answer {i}.")) | {"note": "n"} for i in range(8)]
    source = write_jsonl(tmp_path / "d.jsonl", rows)
    return source


def format_with(source: Path, tokenizer_folder: Path, **data):
    cfg = config_for(source, tokenizer_folder, **data)
    return formatted(cfg, load_text_tokenizer(str(tokenizer_folder)))


@pytest.mark.parametrize("key", [k for k in SHAPES_TOKENS if k not in ("source", "split", "subset")])
def test_a_changed_data_key_misses_the_cache(key, cached, embedded_model):
    first = format_with(cached, embedded_model)
    assert format_with(cached, embedded_model).cache["hit"] is True
    changed = format_with(cached, embedded_model, **{key: SHAPES_TOKENS[key]})
    assert changed.cache["hit"] is False and changed.cache["key"] != first.cache["key"]


def test_keys_that_do_not_shape_tokens_keep_the_entry(cached, embedded_model):
    first = format_with(cached, embedded_model)
    again = format_with(cached, embedded_model, **KEEPS_TOKENS)
    assert again.cache["hit"] is True and again.cache["key"] == first.cache["key"]


def test_hub_split_and_subset_are_in_the_key(embedded_model):
    from slothctl.data import cache

    tok = load_text_tokenizer(str(embedded_model))
    fingerprint = {"hub": "org/data", "fingerprint": "f"}
    keys = {cache.cache_key(config_for("org/data", embedded_model, **extra), fingerprint, tok, None)
            for extra in ({}, {"split": "test"}, {"subset": "en"})}
    assert len(keys) == 3


def test_a_changed_chat_template_misses_the_cache(cached, embedded_model, tmp_path):
    base = tokenizer_copy(embedded_model, tmp_path / "base")
    first = format_with(cached, base)
    assert format_with(cached, tokenizer_copy(embedded_model, tmp_path / "copy")).cache["hit"] is True
    original = (embedded_model / "chat_template.jinja").read_text()
    edited = tokenizer_copy(embedded_model, tmp_path / "edited",
                            template=original.replace("<|im_start|>", "<|im_start|> "))
    changed = format_with(cached, edited)
    assert changed.cache["hit"] is False and changed.cache["key"] != first.cache["key"]


def test_a_changed_tokenizer_misses_the_cache(cached, embedded_model, tmp_path):
    first = format_with(cached, tokenizer_copy(embedded_model, tmp_path / "base"))
    added = tokenizer_copy(embedded_model, tmp_path / "added", add_special=["<|sloth|>"])
    assert format_with(cached, added).cache["hit"] is False
    eos = tokenizer_copy(embedded_model, tmp_path / "eos", config={"eos_token": "<|endoftext|>"})
    assert format_with(cached, eos).cache["key"] not in (first.cache["key"], format_with(cached, added).cache["key"])
