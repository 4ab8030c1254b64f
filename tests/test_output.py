"""The output sink as people and scripts see it: under a real pseudo-terminal (styled, measured,
animated), with stdout redirected to a file, and as strict JSON on every path, errors included."""

from __future__ import annotations

import errno
import io
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, assert_usage_error, make_project, run_cli, strict_json
from slothctl import config
from slothctl.cli import app, failures, output
from terminal import run_terminal

LONG = "You are a patient assistant who answers questions about sloths in full sentences, " * 3


@pytest.fixture(scope="module")
def proj(tmp_path_factory) -> Path:
    """A project (init only: nothing here needs the model unless a test asks for it)."""
    return make_project(tmp_path_factory.mktemp("out") / "proj")


def test_config_error_on_a_terminal_keeps_its_section(proj):
    result = run_terminal("train", "--set", "lora.r=0", cwd=proj)
    assert result.returncode == 2, result.text
    assert result.lines == ["Error: --set lora.r=0: [lora] r: must be at least 1, got 0"]
    assert "\x1b[" in result.raw  # styled: it really ran as on a terminal


def test_markup_like_value_is_one_error_and_its_hint_exit_2(proj):
    result = run_terminal("train", "--set", "output.name=[/x]", "--set", "lora.alpha=[bold]", cwd=proj)
    assert result.returncode == 2, result.text
    assert "Traceback" not in result.text
    assert len(result.lines) <= 2 and result.lines[0].startswith("Error: ") and "[bold]" in result.lines[0]
    result = run_terminal("train", "--set", "output.name=[/x]", cwd=proj, columns=40)
    assert result.returncode == 2, result.text
    assert result.lines == ['Error: slothctl.toml: [output] name: "[/x]" is not a valid folder name',
                            "Hint: use letters, digits, '-' and '_'"]  # not wrapped at 40 columns either


def test_dry_run_redirected_to_a_file_parses_back_to_the_same_config(proj, tmp_path):
    target = tmp_path / "resolved.toml"
    sets = ["--set", "lora.r=8", "--set", f"chat.system_prompt={LONG}", "--set", "data.source=data/[v1] chat.jsonl"]
    result = run_terminal("train", "--dry-run", *sets, cwd=proj, stdout=target, columns=40)
    assert result.returncode == 0, result.text
    assert all(line.startswith("# ") for line in result.lines), result.text  # the estimate, as TOML comments
    text = target.read_text()
    assert "[model]" in text and "[lora]" in text and "\x1b" not in text
    assert any(len(line) > 200 for line in text.splitlines())  # the long prompt: one line, not wrapped at 40
    written = config.load(target)
    expected = config.load(proj / "slothctl.toml", [s for s in sets if s != "--set"])
    assert written.to_dict() == expected.to_dict()
    assert written.chat.system_prompt == LONG.strip() and written.data.source == "data/[v1] chat.jsonl"


def test_result_and_hint_lines_on_a_terminal(tmp_path):
    created = run_terminal("init", str(tmp_path / "[demo]"), "--example", cwd=tmp_path)
    assert created.returncode == 0, created.text
    assert created.lines[0] == f"Created {tmp_path / '[demo]' / 'slothctl.toml'} (template: chat)"
    again = run_terminal("init", str(tmp_path / "[demo]"), cwd=tmp_path)
    assert again.returncode == 2 and len(again.lines) == 2, again.text
    assert again.lines[0].startswith("Error: ") and "[demo]" in again.lines[0]
    assert again.lines[1].startswith("Hint: ") and "--force" in again.lines[1]


def test_data_report_on_a_terminal_shows_bracketed_names(proj, embedded_model, tmp_path):
    source = tmp_path / "rows [v1].jsonl"
    source.write_text((proj / "data" / "sloth_chat.jsonl").read_text())
    result = run_terminal("data", "inspect", str(source), "--model", "embedded:smollm2-135m", "--show", "1",
                          cwd=tmp_path, columns=200)
    assert result.returncode == 0, result.text
    assert any("rows [v1].jsonl" in line for line in result.lines), result.text
    assert any(line.startswith("format") for line in result.lines) and "Traceback" not in result.text


def test_training_on_a_terminal_draws_the_live_bar_and_ends_with_done(proj, embedded_model):
    result = run_terminal("train", "--max-steps", "1", cwd=proj, columns=120)
    assert result.returncode == 0, result.text
    assert "1/1" in result.text and "tok/s" in result.text  # the live bar's last state
    assert any(line.startswith("Done: 1 steps") for line in result.lines), result.text
    assert "Next: slothctl chat" in result.lines[-1]
    quiet = run_terminal("train", "--max-steps", "1", "--quiet", cwd=proj)
    assert quiet.returncode == 0 and quiet.lines == [], quiet.text  # already complete: nothing to say


def test_chat_answer_redirected_from_a_terminal_is_raw_and_unwrapped(embedded_model, tmp_path):
    args = ["chat", "--model", "embedded:smollm2-135m", "--temperature", "0", "--max-new-tokens", "40",
            "-p", "Write one long sentence about sloths."]
    expected = run_cli(*args, "--json", cwd=tmp_path)
    assert expected.returncode == 0, expected.stderr[-2000:]
    answer = expected.json_lines()[-1]["answer"]
    target = tmp_path / "answer.txt"
    result = run_terminal(*args, cwd=tmp_path, stdout=target, columns=20)
    assert result.returncode == 0, result.text
    assert target.read_text() == answer + "\n" and len(answer) > 20
    assert "Traceback" not in result.text


# ---- strict JSON on every path ----------------------------------------------------------------------------------

def _error_event(result) -> dict:
    events = result.json_lines()  # strict: NaN / Infinity would fail here
    assert events and events[-1]["event"] == "error", result.stdout
    assert events[-1]["exit_code"] == result.returncode
    return events[-1]


@pytest.mark.parametrize("args", [["train", "--bogus"], ["train", "--max-steps", "abc"], ["frobnicate"],
                                  ["train", "--set", "lora.r=0"], ["train", "--json", "--quiet"]],
                         ids=["unknown-option", "bad-int", "unknown-command", "bad-config", "json-and-quiet"])
def test_usage_errors_in_json_mode_are_strict_json_events(proj, args):
    result = run_cli(*args, "--json", cwd=proj)
    assert_usage_error(result)
    event = _error_event(result)
    assert event["message"] in result.stderr


def test_runtime_error_in_json_mode_is_a_strict_json_event(tmp_path, proj):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    (broken / "tokenizer.json").write_text('{"version": "1.0", "truncated": ')
    result = run_cli("data", "inspect", str(proj / "data" / "sloth_chat.jsonl"), "--model", str(broken), "--json",
                     cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    event = _error_event(result)
    assert event["hint"] == "set SLOTHCTL_DEBUG=1 to see the traceback"
    debug = run_cli("data", "inspect", str(proj / "data" / "sloth_chat.jsonl"), "--model", str(broken),
                    cwd=tmp_path, env={"SLOTHCTL_DEBUG": "1"})
    assert debug.returncode == 1 and "Traceback" in debug.stderr
    assert "SLOTHCTL_DEBUG" not in debug.stderr.split("Traceback")[-1].split("\nError: ")[-1]


def test_json_writes_null_for_nan_and_infinity():
    obj = {"loss": float("nan"), "deep": [{"grad_norm": float("inf")}, (1.5, float("-inf"))], "ok": 2.0}
    assert strict_json(output.dumps(obj)) == {"loss": None, "deep": [{"grad_norm": None}, [1.5, None]], "ok": 2.0}
    with pytest.raises(ValueError):
        strict_json(json.dumps(obj))  # what Python writes by default is not JSON


def test_a_flag_is_reported_as_the_flag_not_as_a_set(proj):
    text = assert_usage_error(run_cli("chat", "--temperature", "-1", "-p", "hi", cwd=proj), "--temperature",
                              "must be at least 0")
    assert "--set" not in text and "chat.temperature" not in text


# ---- the exception table and the last-resort handler ------------------------------------------------------------

def _hub_error(name: str, repo_id: str):
    import httpx
    from huggingface_hub import errors

    response = httpx.Response(403 if name == "GatedRepoError" else 404,
                              request=httpx.Request("GET", f"https://huggingface.co/api/models/{repo_id}"))
    exc = getattr(errors, name)(f"{name} for {repo_id}", response=response)
    exc.repo_id = repo_id
    return exc


def _raised_from(cause: BaseException, outer: BaseException) -> BaseException:
    try:
        try:
            raise cause
        except BaseException as inner:
            raise outer from inner
    except BaseException as exc:  # noqa: BLE001
        return exc


@pytest.mark.parametrize("make,fragments,code", [
    (lambda: _raised_from(_hub_error("GatedRepoError", "meta-llama/x"), OSError("You are trying to access a gated repo")),
     ["`meta-llama/x` is gated", "https://huggingface.co/meta-llama/x"], 2),
    (lambda: _raised_from(_hub_error("RepositoryNotFoundError", "me/nope"), OSError("not a valid model identifier")),
     ["`me/nope` was not found", "HF_TOKEN"], 2),
    (lambda: _raised_from(__import__("huggingface_hub").errors.LocalEntryNotFoundError("no cache"),
                          OSError("We couldn't connect")), ["not in the local cache", "HF_HUB_OFFLINE"], 1),
    (lambda: OSError(errno.ENOSPC, "No space left on device", "/runs/x/checkpoint-4/optimizer.pt"),
     ["no space left", "checkpoint-4/optimizer.pt", "free some disk space"], 1),
    (lambda: RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 123 vs 456"),
     ["no space left"], 1),
    (lambda: __import__("torch").OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
     ["ran out of memory", "train.batch_size"], 1),
    (lambda: RuntimeError("CUDA error: out of memory"), ["ran out of memory"], 1),
], ids=["gated", "not-found", "offline", "disk-full", "torch-save-full", "cuda-oom", "cuda-oom-runtime"])
def test_known_third_party_errors_become_one_line_and_a_hint(monkeypatch, capsys, make, fragments, code):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("SLOTHCTL_DEBUG", raising=False)
    output.current = output.Output("json")
    assert app._unexpected(make()) == code
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 2 and lines[0].startswith("Error: ") and lines[1].startswith("Hint: "), captured.err
    for fragment in fragments:
        assert fragment in captured.err, (fragment, captured.err)
    event = strict_json(captured.out)
    assert event["exit_code"] == code and event["hint"] == lines[1][len("Hint: "):]


def test_unknown_errors_name_their_type_and_debug_shows_the_traceback(monkeypatch, capsys):
    monkeypatch.delenv("SLOTHCTL_DEBUG", raising=False)
    output.current = output.Output()
    assert failures.explain(ValueError("odd")) is None
    assert app._unexpected(ValueError("odd [value]")) == 1
    assert capsys.readouterr().err.splitlines() == ["Error: ValueError: odd [value]",
                                                    "Hint: set SLOTHCTL_DEBUG=1 to see the traceback"]
    monkeypatch.setenv("SLOTHCTL_DEBUG", "1")
    try:
        raise ValueError("odd")
    except ValueError as exc:
        assert app._unexpected(exc) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.splitlines()[-1] == "Error: ValueError: odd" and "SLOTHCTL_DEBUG" not in err


# ---- help and start-up ------------------------------------------------------------------------------------------

def _help(*args: str, capsys) -> str:
    with pytest.raises(SystemExit) as stopped:
        app.main([*args, "--help"])
    assert stopped.value.code == 0
    return capsys.readouterr().out


def _every_command(group=None, path=()):
    group = group or app.command()
    yield path
    for name in group.list_commands(None):
        sub = group.commands[name]
        yield from (_every_command(sub, path + (name,)) if hasattr(sub, "commands") else [path + (name,)])


def test_every_help_ends_with_examples_and_the_summaries_match(capsys):
    root = app.command()
    for name, (_, summary) in app.COMMANDS.items():
        assert root.commands[name].help.strip().splitlines()[0] == summary, name
    for path in _every_command():
        text = _help(*path, capsys=capsys)
        panel = text[text.rindex("Examples"):].splitlines()[1:]
        assert panel[-1].startswith("╰"), (path, text)  # the examples are the last thing
        assert 2 <= len([line for line in panel if line.startswith("│ ") and line[2] != " "]) <= 3, (path, text)


def _median_seconds(commands: list[list[str]], rounds: int) -> list[float]:
    times: list[list[float]] = [[] for _ in commands]
    for _ in range(rounds):
        for i, command in enumerate(commands):  # interleaved, so that load on the machine hits both alike
            start = time.perf_counter()
            subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
            times[i].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def test_help_starts_about_as_fast_as_importing_typer_and_rich():
    """The target is 2x (bench/cli_startup.py measures it); 2.5x here leaves room for a busy machine."""
    baseline, help_ = _median_seconds([[sys.executable, "-c", "import typer, rich"],
                                       [sys.executable, "-m", "slothctl", "--help"]], rounds=7)
    assert help_ / baseline <= 2.5, f"slothctl --help {help_:.3f}s vs import typer, rich {baseline:.3f}s"


def test_root_help_loads_no_command_module():
    code = ("import json, sys; from slothctl.cli.app import main\ntry:\n    main(['--help'])\nexcept SystemExit as e:\n"
            "    assert e.code == 0\nprint(json.dumps(sorted(m for m in sys.modules if m.startswith('slothctl.'))))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 0, proc.stderr
    loaded = set(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert not loaded & {f"slothctl.cli.{name}" for name in app.COMMANDS}, loaded
    assert "slothctl.config" not in loaded


def test_output_never_reads_markup_from_payload():
    buffer = io.StringIO()
    out = output.Output()
    out._out = output._console(buffer)
    out.result({}, "Saved [bold]x[/bold] :thumbs_up: [/x]")
    out.result({}, [("Done", "green"), ": [lora] r"])
    assert buffer.getvalue() == "Saved [bold]x[/bold] :thumbs_up: [/x]\nDone: [lora] r\n"
