"""The command line itself: light start-up, --version, exit codes, completions, init."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, assert_usage_error, run_cli
from slothctl import config
from slothctl.cli import completions

HEAVY = ("torch", "transformers", "trl", "peft", "datasets", "unsloth", "huggingface_hub", "llama_cpp")
PROBE = """
import sys
from slothctl.cli.app import main
code = 0
try:
    main({args!r})
except SystemExit as exc:
    code = exc.code or 0
heavy = sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r})
print("HEAVY=" + ",".join(heavy), "EXIT=" + str(code), file=sys.stderr)
"""


def assert_light(args: list[str], cwd: Path | str | None = None) -> None:
    """The command succeeds (exit 0) in a fresh process without importing any heavy library."""
    proc = subprocess.run([sys.executable, "-c", PROBE.format(args=args, heavy=HEAVY)], capture_output=True,
                          text=True, timeout=120, cwd=cwd)
    last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
    assert last == "HEAVY= EXIT=0", proc.stderr[-3000:]


LIGHT_COMMANDS = [["--help"], ["--version"], ["init", "--help"], ["train", "--help"], ["resume", "--help"],
                  ["data", "--help"], ["data", "inspect", "--help"], ["data", "format", "--help"],
                  ["chat", "--help"], ["merge", "--help"], ["export", "gguf", "--help"], ["push", "--help"],
                  ["pull", "--help"], ["doctor", "--help"]]


@pytest.mark.parametrize("args", LIGHT_COMMANDS, ids=["-".join(a).strip("-") for a in LIGHT_COMMANDS])
def test_help_and_version_import_nothing_heavy(args):
    assert_light(args)


def test_init_itself_imports_nothing_heavy(tmp_path):
    assert_light(["init", str(tmp_path / "p"), "--example"])
    assert (tmp_path / "p" / "slothctl.toml").is_file()


def test_the_probe_sees_a_failing_command(tmp_path):
    with pytest.raises(AssertionError, match="EXIT=2"):  # a command that fails early imports little: not a pass
        assert_light(["init", str(tmp_path / "p"), "--template", "nope"])


def test_version_and_module_entry_point():
    from slothctl import __version__

    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"slothctl {__version__}"
    script = Path(sys.executable).parent / "slothctl"  # the console script of this environment
    console = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    assert console.stdout == result.stdout


def test_usage_errors_exit_2_with_one_line():
    assert_usage_error(run_cli("init", "--bogus"), "No such option", "--bogus")
    assert_usage_error(run_cli("frobnicate"), "No such command")
    assert_usage_error(run_cli("init", "--template", "nope"), "--template", "chat")
    assert_usage_error(run_cli("train", "--max-steps", "0"), "--max-steps")


@pytest.mark.parametrize("shell", list(completions.SHELLS))
def test_completions_are_current(shell):
    committed = (REPO / "completions" / completions.SHELLS[shell]).read_text()
    assert committed == completions.generate(shell), "run: python -m slothctl.cli.completions"


def test_bash_completion_completes_commands_options_and_choices():
    script = REPO / "completions" / "slothctl.bash"

    def complete(*words: str) -> list[str]:
        quoted = " ".join(f"'{w}'" for w in words)
        code = f'source {script}; COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; _slothctl; ' \
               'printf "%s\\n" "${COMPREPLY[@]}"'
        return subprocess.run(["bash", "-c", code], capture_output=True, text=True).stdout.split()

    assert "train" in complete("slothctl", "tr")
    assert complete("slothctl", "init", "--template", "") == ["chat", "alpaca", "qlora-8b"]
    assert "--max-steps" in complete("slothctl", "train", "--m")


def test_init_writes_documented_project_and_refuses_to_overwrite(tmp_path):
    target = tmp_path / "my project"
    result = run_cli("init", str(target), "--json")
    assert result.returncode == 0, result.stderr
    written = result.json()
    toml = target / "slothctl.toml"
    assert written["config"] == str(toml) and written["data"] is None
    cfg = config.load(toml)
    assert cfg.model.name == "embedded:smollm2-135m"
    assert cfg.output.name == "my-project"
    text = toml.read_text()
    assert text.count("\n# ") > len(config.schema())  # a comment for every key
    before = text
    assert_usage_error(run_cli("init", str(target)), "already exists", "--force")
    assert toml.read_text() == before
    again = run_cli("init", str(target), "--force", "--template", "qlora-8b")
    assert again.returncode == 0, again.stderr
    qlora = config.load(toml)
    assert qlora.model.load_in_4bit and qlora.model.backend == "unsloth" and "8B" in qlora.model.name


def test_init_example_model_dataset_and_set(tmp_path):
    result = run_cli("init", str(tmp_path / "a"), "--example", "--set", "train.max_steps=12",
                     "--set", "lora.r=8")
    assert result.returncode == 0, result.stderr
    cfg = config.load(tmp_path / "a" / "slothctl.toml")
    rows = (tmp_path / "a" / "data" / "sloth_chat.jsonl").read_text().splitlines()
    assert len(rows) >= 200 and cfg.data.source == "data/sloth_chat.jsonl"
    assert all(json.loads(r)["messages"][-1]["content"].startswith("Sloth says:") for r in rows)
    assert cfg.train.max_steps == 12 and cfg.lora.r == 8
    result = run_cli("init", str(tmp_path / "b"), "--template", "alpaca", "--model", "org/some-model",
                     "--dataset", "my.jsonl")
    assert result.returncode == 0, result.stderr
    cfg = config.load(tmp_path / "b" / "slothctl.toml")
    assert (cfg.model.name, cfg.data.source, cfg.data.format) == ("org/some-model", "my.jsonl", "alpaca")
    assert_usage_error(run_cli("init", str(tmp_path / "c"), "--set", "lora.r=zero"), "[lora] r")
    assert not (tmp_path / "c").exists()
    assert_usage_error(run_cli("init", str(tmp_path / "d"), "--example", "--dataset", "x.jsonl"), "--example")
