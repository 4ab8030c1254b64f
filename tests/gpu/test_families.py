"""The model families (tests/families.py) with the unsloth backend on a real GPU: each family's tiny
random-weight model with its real tokenizer and chat template trains a few steps (Unsloth patches
each architecture differently), `chat` stops at the family's end-of-turn token, and a 16-bit merge
passes its fidelity check.

Each family is one test and records what happened, failing or not, under `family_<name>` in
$SLOTHCTL_GPU_RESULTS. The device has no internet: the tokenizers come from the archive that
`python tests/families.py pack .gpuchunks/families` writes (SLOTHCTL_FAMILY_TOKENIZERS points at
it, see bench/device.sh), and the models are built from them there.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest

import families as F
from conftest import run_cli
from gpu.test_unsloth_backend import record

ROWS = [
    {"messages": [{"role": "system", "content": "You are a terse assistant."},
                  {"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4."}]},
    {"messages": [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello! How can I help?"},
                  {"role": "user", "content": "Tell me a joke."},
                  {"role": "assistant", "content": "Why did the sloth cross the road? It didn't."}]},
    {"messages": [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hello"},
                  {"role": "assistant", "content": "Bonjour"}, {"role": "user", "content": "Thanks"},
                  {"role": "assistant", "content": "De rien !"}]},
] * 4
BACKEND = "unsloth"
SETTINGS = ["model.max_seq_length=128", "train.batch_size=4",
            "train.gradient_accumulation_steps=1", "data.eval_fraction=0.0", "train.save_steps=0",
            "chat.system_prompt=Be brief."]


def tail(text: str) -> str:
    return text[-2500:]


@pytest.mark.parametrize("name", list(F.FAMILIES))
def test_family_trains_chats_and_merges_with_unsloth(name, tmp_path):
    family = F.FAMILIES[name]
    started = time.time()
    outcome: dict = {"family": family.label, "architecture": family.architecture}
    try:
        model = F.model_dir(name)
        from transformers import AutoTokenizer

        end_id = AutoTokenizer.from_pretrained(model).convert_tokens_to_ids(family.end_of_turn)
        data = tmp_path / "chat.jsonl"
        data.write_text("".join(json.dumps(row) + "\n" for row in ROWS), encoding="utf-8")
        project = tmp_path / name
        init = run_cli("init", str(project), "--model", str(model), "--dataset", str(data),
                       *[arg for s in SETTINGS + [f"model.backend={BACKEND}"] for arg in ("--set", s)])
        assert init.returncode == 0, init.stderr

        train = run_cli("train", "--max-steps", "4", "--json", cwd=project)
        losses = [e["loss"] for e in train.json_lines() if e.get("event") == "step"] if train.returncode == 0 else []
        outcome["train"] = {"returncode": train.returncode, "losses": losses, "stderr": tail(train.stderr)}
        assert train.returncode == 0, tail(train.stderr)
        summary = json.loads((project / "runs" / name / "summary.json").read_text())
        outcome["train"].update(backend=summary.get("backend"), device=summary.get("device"),
                                tokens_per_s=summary.get("tokens_per_s"))
        assert summary["backend"] == BACKEND and len(losses) == 4 and all(math.isfinite(x) for x in losses)
        adapter = project / "runs" / name / "adapter"
        eos = json.loads((adapter / "tokenizer_config.json").read_text()).get("eos_token")
        outcome["adapter_eos"] = eos
        assert eos == family.end_of_turn

        chat = run_cli("chat", "--prompt", "Hi", "--temperature", "0", "--max-new-tokens", "8", "--json", cwd=project)
        reply = json.loads(chat.stdout.splitlines()[-1]) if chat.returncode == 0 else None
        outcome["chat"] = {"returncode": chat.returncode, "reply": reply, "stderr": tail(chat.stderr)}
        assert chat.returncode == 0, tail(chat.stderr)
        assert (reply["finish_reason"], reply["tokens"]) == ("stop", 1), reply

        merge = run_cli("merge", "--json", cwd=project)
        merged = project / "runs" / name / "merged"
        check = json.loads((merged / "slothctl_check.json").read_text()) \
            if (merged / "slothctl_check.json").is_file() else None
        outcome["merge"] = {"returncode": merge.returncode, "check": check, "stderr": tail(merge.stderr)}
        assert merge.returncode == 0, tail(merge.stderr)
        assert check["passed"] and check["eos_token_ids"][0] == end_id, check
        outcome["passed"] = True
    finally:
        outcome.setdefault("passed", False)
        outcome["seconds"] = round(time.time() - started, 1)
        record(f"family_{name}", outcome)
