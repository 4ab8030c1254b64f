"""Out of memory for real, on the GPU, with the embedded model: 512 rows of 1,024 tokens per optimizer step
without gradient checkpointing (~217 GiB by the estimate). `micro_batch = "auto"` splits the step into
micro-batches that fit and finishes; a fixed micro_batch = 512 runs out of memory in its first step and
ends with exit 1, one error line (peak measured, the GPU's total, the changes that fit) and the newest
checkpoint intact, which `resume` then continues (auto again).

Measured numbers go to $SLOTHCTL_GPU_RESULTS (a JSON file) when it is set."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from conftest import error_text, make_project, run_cli

from slothctl.runs import RunPaths, is_complete_checkpoint

ROWS, SEQ = 512, 1024


def record(name: str, value) -> None:
    """Add `name` to the JSON file $SLOTHCTL_GPU_RESULTS (as test_unsloth_backend.py does)."""
    target = os.environ.get("SLOTHCTL_GPU_RESULTS")
    if target:
        path = Path(target)
        data = json.loads(path.read_text()) if path.exists() else {}
        path.write_text(json.dumps({**data, name: value}, indent=2))


def long_rows(path, rows: int = ROWS, words: int = SEQ + 200) -> None:
    rng = random.Random(0)
    vocabulary = "sloth tree leaf branch slow green forest river stone cloud rain sun moon star wind".split()
    with open(path, "w") as handle:
        for _ in range(rows):
            handle.write(json.dumps({"text": " ".join(rng.choice(vocabulary) for _ in range(words))}) + "\n")


def test_far_too_large_micro_batch_runs_out_of_memory_cleanly_and_auto_finishes(tmp_path, embedded_model):
    data = tmp_path / "long.jsonl"
    long_rows(data)
    project = make_project(tmp_path / "oom", f"model.max_seq_length={SEQ}", f"train.batch_size={ROWS}",
                           "train.gradient_accumulation_steps=1", "train.gradient_checkpointing=false",
                           "train.save_steps=1", "model.backend=unsloth", "data.eval_fraction=0.0",
                           f"data.source={data}", "data.format=text", fast=False)
    paths = RunPaths(project / "runs" / "oom")

    auto = run_cli("train", "--max-steps", "1", "--json", cwd=project)
    assert auto.returncode == 0, auto.stderr[-4000:]
    layout = next(e for e in auto.json_lines() if e["event"] == "layout")
    assert layout["source"] == "auto" and layout["micro_batch"] < ROWS, layout
    assert layout["micro_batch"] * layout["grad_accum"] == ROWS
    summary = json.loads(paths.summary.read_text())
    halvings = [e for e in auto.json_lines() if e["event"] == "out_of_memory"]
    record("micro_batch_auto", {"layout": layout, "estimated_peak_gib": layout["estimate"]["peak_vram_bytes"] / 2**30,
                                "measured_peak_gib": summary["peak_vram_gb"], "halvings": halvings,
                                "tokens_per_s": summary["tokens_per_s"]})
    before = json.loads((paths.checkpoint(1) / "slothctl_checkpoint.json").read_text())

    fixed = run_cli("resume", "--max-steps", "2", "--set", f"train.micro_batch={ROWS}", "--json", cwd=project)
    assert fixed.returncode == 1, fixed.stderr[-4000:]
    assert "Traceback" not in fixed.stderr
    text = error_text(fixed.stderr)
    record("micro_batch_fixed_out_of_memory", text)
    assert f"ran out of memory in step 2 with micro-batch {ROWS} x 1" in text, text
    assert "GiB of the GPU's" in text and "newest checkpoint checkpoint-1 is intact" in text, text
    assert "--set train.micro_batch=" in text, text
    assert [step for step, _ in paths.checkpoints()] == [1] and not paths.incomplete_checkpoints()
    assert is_complete_checkpoint(paths.checkpoint(1))
    after = json.loads((paths.checkpoint(1) / "slothctl_checkpoint.json").read_text())
    assert after == before
    for name, entry in after["files"].items():
        assert (paths.checkpoint(1) / name).stat().st_size == entry["size"], name

    resumed = run_cli("resume", "--max-steps", "2", "--json", cwd=project)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    again = next(e for e in resumed.json_lines() if e["event"] == "layout")
    recorded = halvings[-1]["micro_batch"] if halvings else layout["micro_batch"]  # what checkpoint-1 holds
    assert (again["micro_batch"], again["source"]) == (recorded, "checkpoint")
    summary = json.loads(paths.summary.read_text())
    assert summary["steps"] == 2 and summary["resumed_from"] == 1
