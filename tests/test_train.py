"""Real LoRA training on CPU with the embedded model, end to end through the CLI."""

from __future__ import annotations

import pytest

import json
import math
from pathlib import Path

from conftest import run_cli, run_python, strict_json

LOGIT_CHECK = """
import json, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from peft import PeftModel
base_path, adapter = {base!r}, {adapter!r}
tok = AutoTokenizer.from_pretrained(adapter)
ids = tok.apply_chat_template([{{"role": "user", "content": "What is the capital of Peru?"}}],
                              add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
with torch.no_grad():
    before = base(ids).logits
tuned = PeftModel.from_pretrained(base, adapter)
with torch.no_grad():
    after = tuned(ids).logits
print(json.dumps({{"max_diff": (after - before).abs().max().item(), "finite": bool(torch.isfinite(after).all())}}))
"""


@pytest.mark.slow  # not in CI (./scripts/test -m slow runs these)
def test_init_example_then_train_json_done(tmp_path, embedded_model):
    """The issue's own check: init --example, train --max-steps 5 --json, last line is `done`."""
    project = tmp_path / "p"
    assert run_cli("init", str(project), "--example").returncode == 0
    result = run_cli("train", "--max-steps", "5", "--json", cwd=project)
    assert result.returncode == 0, result.stderr[-3000:]
    events = result.json_lines()
    done = events[-1]
    assert done["event"] == "done" and done["steps"] == 5
    adapter = Path(done["adapter"])
    assert adapter.is_dir() and (adapter / "adapter_model.safetensors").is_file()
    steps = [e for e in events if e["event"] == "step"]
    assert [e["step"] for e in steps] == [1, 2, 3, 4, 5]
    for e in steps:
        assert math.isfinite(e["loss"]) and e["tokens_per_s"] > 0 and e["total_steps"] == 5
        assert set(e) >= {"event", "step", "loss", "lr", "tokens_per_s", "elapsed", "eta"}
    assert steps[-1]["loss"] < steps[0]["loss"]
    assert done["final_loss"] == steps[-1]["loss"]


def test_train_writes_the_run_folder_and_the_adapter_changes_the_model(project, embedded_model):
    result = run_cli("train", "--max-steps", "6", "--json", "--set", "train.save_steps=3",
                     "--set", "train.learning_rate=0.001", cwd=project)
    assert result.returncode == 0, result.stderr[-3000:]
    run = project / "runs" / "proj"
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("checkpoint-")) == ["checkpoint-3",
                                                                                         "checkpoint-6"]
    adapter = run / "adapter"
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "chat_template.jinja",
                 "slothctl_adapter.json"):
        assert (adapter / name).is_file(), name
    adapter_config = json.loads((adapter / "adapter_config.json").read_text())
    assert adapter_config["r"] == 16 and adapter_config["lora_alpha"] == 16
    assert set(adapter_config["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                     "up_proj", "down_proj"}
    assert (adapter / "chat_template.jinja").read_text() == (embedded_model / "chat_template.jinja").read_text()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["backend"] == "hf" and summary["device"] == "cpu"
    assert summary["train_tokens"] > 0 and summary["tokens_per_s"] > 0 and summary["seconds"] > 0
    assert summary["versions"]["transformers"] and summary["versions"]["trl"] and summary["versions"]["peft"]
    assert summary["config"]["train"]["max_steps"] == 6
    assert [loss for _, loss in summary["losses"]][-1] < summary["losses"][0][1]
    metrics = [strict_json(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5, 6]
    assert (run / "config.toml").is_file()

    check = run_python(LOGIT_CHECK.format(base=str(embedded_model), adapter=str(adapter)))
    assert check.returncode == 0, check.stderr[-3000:]
    measured = json.loads(check.stdout.strip().splitlines()[-1])
    assert measured["finite"] and measured["max_diff"] > 1e-3


def test_human_output_shows_progress_and_done(project, embedded_model):
    result = run_cli("train", "--max-steps", "2", cwd=project)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "step 2/2" in result.stderr and "tok/s" in result.stderr and "eta" in result.stderr
    assert "Done: 2 steps" in result.stdout and "Adapter:" in result.stdout
