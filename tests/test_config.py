"""The project TOML: every bad input is one line on stderr naming file, key and problem, exit 2,
no traceback, nothing written; overrides are typed; the schema drives templates and README."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import REPO, assert_usage_error, run_cli
from slothctl import config
from slothctl.project import PRESETS, render_template, template_path

GOOD = """\
[model]
name = "embedded:smollm2-135m"

[data]
source = "data.jsonl"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "slothctl.toml"
    path.write_text(text, encoding="utf-8")
    (tmp_path / "data.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}, '
                                         '{"role": "assistant", "content": "hello"}]}\n')
    return path


BAD_FILES = [
    # (what is wrong, TOML appended to GOOD or replacing it, fragments the one line must contain)
    ("unknown key with a suggestion", GOOD + "[train]\nlearning_rat = 1e-4\n",
     ["[train] learning_rat", "unknown key", "did you mean `learning_rate`"]),
    ("unknown section", GOOD + "[trian]\nmax_steps = 3\n", ["[trian]", "unknown section", "`train`"]),
    ("key in the wrong section", GOOD + "[lora]\nmax_steps = 3\n", ["[lora] max_steps", "belongs under [train]"]),
    ("string for an integer", GOOD + "[train]\nbatch_size = \"four\"\n",
     ["[train] batch_size", "expected an integer", "\"four\""]),
    ("integer for a boolean", GOOD.replace("[data]", "load_in_4bit = 1\n\n[data]"),
     ["[model] load_in_4bit", "expected true or false"]),
    ("float for an integer", GOOD + "[train]\nmax_steps = 2.5\n", ["[train] max_steps", "expected an integer"]),
    ("out of range", GOOD + "[lora]\nr = 0\n", ["[lora] r", "must be at least 1"]),
    ("above the maximum", GOOD.replace("source = \"data.jsonl\"", "source = \"data.jsonl\"\neval_fraction = 0.9"),
     ["[data] eval_fraction", "at most 0.5"]),
    ("not a choice", GOOD + "[train]\nlr_scheduler = \"cosin\"\n",
     ["[train] lr_scheduler", "not one of", "did you mean `cosine`"]),
    ("missing model name", "[data]\nsource = \"data.jsonl\"\n", ["[model] name", "missing required key"]),
    ("missing data source", "[model]\nname = \"embedded:smollm2-135m\"\n", ["[data] source", "missing required"]),
    ("TOML syntax error", GOOD + "[train\nmax_steps = 3\n", ["TOML syntax error", "line 6"]),
    ("list of numbers for target_modules", GOOD + "[lora]\ntarget_modules = [1, 2]\n",
     ["[lora] target_modules", "expected a list of strings"]),
    ("section given as a value", "output = \"runs\"\n" + GOOD, ["output", "expected a [section] table"]),
    ("4-bit and 8-bit together", GOOD.replace("[data]", "load_in_4bit = true\nload_in_8bit = true\n\n[data]"),
     ["[model] load_in_8bit", "both true"]),
    ("run name with a slash", GOOD + "[output]\nname = \"a/b\"\n", ["[output] name", "not a valid folder name"]),
    ("zero learning rate", GOOD + "[train]\nlearning_rate = 0.0\n", ["[train] learning_rate", "greater than 0"]),
    ("NUL in the run name", GOOD + "[output]\nname = \"a\\u0000b\"\n", ["[output] name", "NUL character"]),
    ("NUL in the data source", GOOD.replace('"data.jsonl"', '"data\\u0000.jsonl"'), ["[data] source", "NUL"]),
    ("run name too long", GOOD + f"[output]\nname = \"{'x' * 256}\"\n", ["[output] name", "255 bytes"]),
    ("seed past numpy's range", GOOD + "[train]\nseed = 18446744073709551616\n",
     ["[train] seed", "at most 4294967295", "numpy"]),
    ("chat seed past llama.cpp's range", GOOD + "[chat]\nseed = 4294967296\n", ["[chat] seed", "at most 4294967295"]),
    ("data seed past 64 bits", GOOD.replace('source = "data.jsonl"', 'source = "data.jsonl"\nseed = 2**63'
                                            .replace("2**63", str(2**63))), ["[data] seed", str(2**63 - 1)]),
    ("step count past 64 bits", GOOD + "[train]\nmax_steps = 18446744073709551616\n",
     ["[train] max_steps", "at most 9223372036854775807"]),
    ("lora_r under [train]", GOOD + "[train]\nlora_r = 8\n", ["[train] lora_r", "unknown key", "`r` under [lora]"]),
    ("lora_alpha under [train]", GOOD + "[train]\nlora_alpha = 8\n", ["[train] lora_alpha", "`alpha` under [lora]"]),
    ("train_batch_size under [model]", GOOD.replace("[data]", "train_batch_size = 4\n\n[data]"),
     ["[model] train_batch_size", "`batch_size` under [train]"]),
    ("lora_dropout under [lora]", GOOD + "[lora]\nlora_dropout = 0.1\n", ["[lora] lora_dropout", "`dropout`"]),
    ("empty data source", GOOD.replace('"data.jsonl"', '""'), ["[data] source", "is empty"]),
    ("blank model name", GOOD.replace('"embedded:smollm2-135m"', '"  "'), ["[model] name", "is empty"]),
]


@pytest.mark.parametrize("what,text,fragments", BAD_FILES, ids=[case[0] for case in BAD_FILES])
def test_bad_config_is_one_line_exit_2_nothing_written(tmp_path, what, text, fragments):
    path = write(tmp_path, text)
    before = sorted(p.name for p in tmp_path.iterdir())
    line = assert_usage_error(run_cli("train", "-c", str(path)), str(path), *fragments)
    assert line.startswith("Error:")
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no runs/ folder, nothing else


def test_missing_file_names_it_and_suggests_init(tmp_path):
    assert_usage_error(run_cli("train", "-c", str(tmp_path / "nope.toml")), "nope.toml", "no such file",
                       "slothctl init")


def test_a_byte_order_mark_is_accepted(tmp_path):
    path = write(tmp_path, GOOD)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # what Notepad writes
    result = run_cli("train", "-c", str(path), "--dry-run", "--json")
    assert result.returncode == 0, result.stderr
    assert result.json()["config"]["data"]["source"] == "data.jsonl"


def test_folder_and_binary_files_are_refused(tmp_path):
    assert_usage_error(run_cli("train", "-c", str(tmp_path)), "is a folder")
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"[model]\nname = \"\xff\xfe\"\n")
    assert_usage_error(run_cli("train", "-c", str(binary)), "bin.toml", "not UTF-8")


BAD_SETS = [
    (["--set", "train.batch_sise=3"], ["--set train.batch_sise=3", "unknown key", "train.batch_size"]),
    (["--set", "train.batch_size=three"], ["[train] batch_size", "expected an integer"]),
    (["--set", "trainbatch_size"], ["expected section.key=value"]),
    (["--set", "lora.r=-1"], ["[lora] r", "at least 1"]),
    (["--set", "train.lora_r=8"], ["--set train.lora_r=8", "unknown key", "lora.r"]),
    (["--set", "train.seed=4294967296"], ["[train] seed", "at most 4294967295"]),
    (["--set", "data.source="], ["[data] source", "is empty"]),
]


@pytest.mark.parametrize("args,fragments", BAD_SETS, ids=["unknown", "type", "shape", "range", "prefixed", "seed",
                                                          "empty"])
def test_bad_overrides(tmp_path, args, fragments):
    path = write(tmp_path, GOOD)
    assert_usage_error(run_cli("train", "-c", str(path), *args), *fragments)


def test_overrides_are_typed_and_flags_win(tmp_path):
    path = write(tmp_path, GOOD + "[train]\nmax_steps = 3\n")
    result = run_cli("train", "-c", str(path), "--dry-run", "--json", "--set", "train.max_steps=7",
                     "--set", "lora.r=8", "--set", "output.name=2024", "--set", "lora.target_modules=[\"q_proj\"]",
                     "--set", "train.learning_rate=1e-4", "--set", "model.load_in_4bit=false", "--max-steps", "9")
    assert result.returncode == 0, result.stderr
    resolved = result.json()["config"]
    assert resolved["train"]["max_steps"] == 9  # the flag beats --set, which beats the file
    assert resolved["lora"]["r"] == 8
    assert resolved["output"]["name"] == "2024"  # a string key keeps digits as text
    assert resolved["lora"]["target_modules"] == ["q_proj"]
    assert resolved["train"]["learning_rate"] == pytest.approx(1e-4)
    assert resolved["train"]["warmup_ratio"] == pytest.approx(0.06)  # untouched default
    assert not (tmp_path / "runs").exists()


def test_relative_paths_resolve_against_the_toml(tmp_path):
    path = write(tmp_path, GOOD)
    cfg = config.load(path)
    assert cfg.resolve_path(cfg.data.source) == tmp_path.resolve() / "data.jsonl"
    assert cfg.run_dir == tmp_path.resolve() / "runs" / "run"


def test_written_config_round_trips(tmp_path):
    cfg = config.load(write(tmp_path, GOOD), ["lora.r=32", "data.columns={q=\"prompt\"}"])
    again = tmp_path / "again.toml"
    again.write_text(config.to_toml(cfg))
    reloaded = config.load(again)
    assert reloaded.to_dict() == cfg.to_dict()


def test_schema_documents_every_key_and_defaults_validate():
    for spec in config.schema():
        assert spec.doc.endswith("."), spec.dotted
        if not spec.required:
            config.check_value(spec, spec.default, "defaults")
    lora = {s.name: s.default for s in config.schema() if s.section == "lora"}
    assert lora["r"] == 16 and lora["alpha"] == 16 and lora["dropout"] == 0 and lora["bias"] == "none"
    assert lora["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.mark.parametrize("preset", list(PRESETS))
def test_templates_are_current_complete_and_valid(preset):
    text = template_path(preset).read_text()
    assert text == render_template(preset), "run: python -m slothctl.project"
    for spec in config.schema():
        assert re.search(rf"^{spec.name} = ", text, re.M), spec.dotted
    config.build(config.tomllib.loads(text), preset)


def test_readme_toml_reference_is_generated_from_the_schema():
    readme = (REPO / "README.md").read_text()
    start, end = "<!-- toml-reference:start -->", "<!-- toml-reference:end -->"
    assert start in readme and end in readme
    current = readme.split(start)[1].split(end)[0].strip()
    assert current == config.reference_markdown().strip(), "run: python scripts/update_readme.py"
