"""`slothctl chat`: real generation with the embedded model, its GGUF file and the trained adapter."""

from __future__ import annotations

from pathlib import Path

from conftest import assert_usage_error, run_cli
from slothctl.models import embedded_gguf_path

GREEDY = ["--temperature", "0"]
TRAINING_QUESTION = "What is 9 times 3?"  # a row of the example data: "Sloth says: 9 times 3 is 27. Stay slow!"


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def prompt_tokens(tokenizer_dir: Path, messages: list[dict]) -> int:
    """The prompt length transformers' own apply_chat_template gives (an independent check of ours)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def answer_json(result) -> dict:
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.json_lines()
    assert len(lines) == 1, result.stdout  # nothing but the answer on stdout
    return lines[0]


def test_prompt_greedy_is_reproducible_and_prints_only_the_answer(tmp_path: Path, embedded_model):
    """No project file is needed with --model; `--prompt -` reads the prompt from stdin."""
    args = ["chat", "--model", "embedded:smollm2-135m", *GREEDY, "--max-new-tokens", "12"]
    first = answer_json(run_cli(*args, "--prompt", "Hi", "--json", cwd=tmp_path))
    assert first["prompt"] == "Hi" and first["answer"].strip()
    assert 0 < first["tokens"] <= 12 and first["seconds"] > 0
    assert first["prompt_tokens"] == prompt_tokens(embedded_model, [user("Hi")])
    assert first["finish_reason"] in ("stop", "length")
    second = run_cli(*args, "--prompt", "-", cwd=tmp_path, input="Hi\n")
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout == first["answer"] + "\n"


def test_gguf_answers_through_llama_cpp_and_stops_at_end_of_turn(tmp_path: Path, embedded_model: Path):
    gguf = ["--gguf", str(embedded_gguf_path("smollm2-135m")), "--max-new-tokens", "64"]
    reply = answer_json(run_cli("chat", *gguf, "--prompt", "Hi", *GREEDY, "--json", cwd=tmp_path))
    assert reply["answer"].strip() and "<|im_end|>" not in reply["answer"]
    assert reply["finish_reason"] == "stop" and reply["tokens"] < 64, reply
    # the chat template stored in the GGUF, tokenized by llama.cpp, gives the prompt transformers gives
    assert reply["prompt_tokens"] == prompt_tokens(embedded_model, [user("Hi")])
    # the REPL, piped into without --json, prints each answer on stdout and nothing else
    repl = run_cli("chat", *gguf, *GREEDY, cwd=tmp_path, input="Hi\n/reset\nHi\n")
    assert repl.returncode == 0, repl.stderr
    assert repl.stdout == f"{reply['answer']}\n{reply['answer']}\n" and "conversation reset" in repl.stderr
    # sampling is reproducible with the same seed
    sampled = [answer_json(run_cli("chat", *gguf, "-p", "Tell me a joke.", "--temperature", "1.0", "--seed", "7",
                                   "--json", cwd=tmp_path))["answer"] for _ in range(2)]
    assert sampled[0] == sampled[1]


def test_repl_through_a_pipe_keeps_history_and_obeys_commands(trained_run: Path):
    """Checkpoint 20 (the last) of the run, driven line by line through stdin, one JSON line per input line."""
    lines = [TRAINING_QUESTION, "And what is 7 plus 22?", "/reset", TRAINING_QUESTION,
             "/system You are a pirate.", TRAINING_QUESTION, "/help", "/bogus", "/exit", "What is 1 plus 1?"]
    result = run_cli("chat", "--checkpoint", "20", *GREEDY, "--max-new-tokens", "16", "--json", cwd=trained_run,
                     input="\n".join(lines) + "\n")
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.json_lines()
    kinds = [o.get("event", "answer") for o in out]
    assert kinds == ["answer", "answer", "reset", "answer", "system", "answer", "help", "error"], out
    first, second, after_reset, with_system = (o for o in out if "answer" in o)
    assert "checkpoint-20 on embedded:smollm2-135m" in first["model"]
    # each prompt is the whole conversation so far, rendered with the training template
    adapter = trained_run / "runs" / "proj" / "checkpoint-20"
    q, a1, a3 = TRAINING_QUESTION, first["answer"], after_reset["answer"]
    assert first["prompt_tokens"] == prompt_tokens(adapter, [user(q)])
    assert second["prompt_tokens"] == prompt_tokens(adapter, [user(q), assistant(a1), user(lines[1])])
    assert after_reset["prompt_tokens"] == first["prompt_tokens"] and a3 == a1  # /reset forgot turn 1 and 2
    system = {"role": "system", "content": "You are a pirate."}
    assert with_system["prompt_tokens"] == prompt_tokens(adapter, [system, user(q), assistant(a3), user(q)])
    assert out[4]["system"] == "You are a pirate."
    assert "/reset" in out[6]["message"] and "/bogus" in out[7]["message"]
    assert all(o.get("prompt") != "What is 1 plus 1?" for o in out)  # nothing after /exit


def test_compare_base_and_tuned_and_the_adapter_learned(trained_run: Path):
    reply = answer_json(run_cli("chat", "--compare", "--prompt", TRAINING_QUESTION, *GREEDY,
                                "--max-new-tokens", "24", "--json", cwd=trained_run))
    base, tuned = reply["base"], reply["tuned"]
    assert reply["prompt"] == TRAINING_QUESTION
    assert base["model"] == "embedded:smollm2-135m" and tuned["model"].endswith("adapter on embedded:smollm2-135m")
    assert base["prompt_tokens"] == tuned["prompt_tokens"]  # the same rendered prompt
    assert base["answer"] != tuned["answer"]
    assert tuned["answer"].startswith("Sloth says:") and not base["answer"].startswith("Sloth says:")
    assert tuned["finish_reason"] == "stop"  # it learned to end its turn, too


def test_chat_usage_errors(project: Path, tmp_path: Path):
    assert_usage_error(run_cli("chat", "-p", "hi", cwd=project), "no run at", "train first")
    assert_usage_error(run_cli("chat", "-p", "hi", "--checkpoint", "3", cwd=project), "no checkpoint 3")
    assert_usage_error(run_cli("chat", "-p", "hi", "--gguf", str(tmp_path / "x.gguf"), cwd=project),
                       "--gguf", "no such file")
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_text("hello")
    assert_usage_error(run_cli("chat", "-p", "hi", "--gguf", str(not_gguf), cwd=project), "not a GGUF file")
    assert_usage_error(run_cli("chat", "-p", "hi", "--adapter", str(tmp_path), cwd=project), "not a LoRA adapter")
    assert_usage_error(run_cli("chat", "-p", "hi", "--adapter", str(tmp_path), "--gguf", str(not_gguf),
                               cwd=project), "cannot be used together")
    assert_usage_error(run_cli("chat", "-p", "hi", "--compare", "--gguf", str(embedded_gguf_path("smollm2-135m")),
                               cwd=project), "--compare")
    assert_usage_error(run_cli("chat", "-p", "hi", "--temperature", "-1", cwd=project), "temperature", "at least 0")
    assert_usage_error(run_cli("chat", "-p", "-", cwd=project, input=""), "--prompt is empty")
    assert_usage_error(run_cli("chat", "-p", "hi", cwd=tmp_path), "slothctl.toml", "no such file")


def test_parse_command():
    from slothctl.chat import parse_command, user_text

    assert parse_command("/reset") == ("/reset", "")
    assert parse_command("  /system  Be brief. ") == ("/system", "Be brief.")
    assert parse_command("hello") is None and parse_command("//etc/hosts?") is None
    assert user_text("//etc/hosts?") == "/etc/hosts?" and user_text(" hello ") == "hello"
