"""micro_batch and the memory estimate in a run: the layout a run records, out of memory (raised for real
by a callback on the embedded model: torch.OutOfMemoryError, as CUDA raises it), `train --dry-run`'s
estimate and `doctor`'s GPU lines. The GPU side is in tests/gpu/test_micro_batch_gpu.py."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import error_text, make_project, run_cli, strict_json

from slothctl.runs import RunPaths, is_complete_checkpoint

# Runs `slothctl ARGS` in this process after adding a callback that raises CUDA's out-of-memory error at
# the start of step AT+1, once, when the micro-batch is ROWS rows.
OUT_OF_MEMORY_RUN = """
import sys, torch
from transformers import TrainerCallback
from slothctl.training import run
from slothctl.cli.app import main

made, fired = run.make_trainer, []

class OutOfMemory(TrainerCallback):
    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == {at} and args.per_device_train_batch_size == {rows} and not fired:
            fired.append(state.global_step)
            if {poison}:  # the weights went bad in the step before: no checkpoint may keep them
                with torch.no_grad():
                    next(p for p in kwargs["model"].parameters() if p.requires_grad).fill_(float("nan"))
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (raised by the test)")

run.make_trainer = lambda model, tok, args, train, evals, hooks: made(model, tok, args, train, evals, hooks + [OutOfMemory()])
main({argv!r})
"""


def run_out_of_memory(directory, *argv: str, at: int, rows: int, poison: bool = False):
    code = OUT_OF_MEMORY_RUN.format(at=at, rows=rows, argv=list(argv), poison=poison)
    return subprocess.run([sys.executable, "-c", code], cwd=directory, capture_output=True, text=True, timeout=900)


def marker(folder) -> dict:
    return json.loads((folder / "slothctl_checkpoint.json").read_text())


@pytest.mark.slow  # not in CI (./scripts/test -m slow runs these)
def test_out_of_memory_with_a_fixed_micro_batch_ends_with_the_changes_and_the_checkpoint_resumes(tmp_path, embedded_model):
    directory = make_project(tmp_path / "proj", "model.max_seq_length=64", "train.save_steps=2", "train.micro_batch=4")
    proc = run_out_of_memory(directory, "train", "--max-steps", "3", at=2, rows=4)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    text = error_text(proc.stderr)
    assert "ran out of memory in step 3 with micro-batch 4 x 1 accumulation step" in text, text
    assert "newest checkpoint checkpoint-2 is intact" in text, text
    assert "slothctl resume --set train.max_steps=3 --set train.micro_batch=2" in text, text
    paths = RunPaths(directory / "runs" / "proj")
    assert [step for step, _ in paths.checkpoints()] == [2] and not paths.incomplete_checkpoints()
    assert marker(paths.checkpoint(2))["layout"] == {"micro_batch": 4, "grad_accum": 1, "gradient_checkpointing": False,
                                                     "batching": "padded", "source": "fixed"}
    # what the hint says: a smaller micro-batch is no config change a resume refuses
    result = run_cli("resume", "--set", "train.max_steps=3", "--set", "train.micro_batch=2", "--json", cwd=directory)
    assert result.returncode == 0, result.stderr[-3000:]
    layout = next(e for e in result.json_lines() if e["event"] == "layout")
    assert (layout["micro_batch"], layout["grad_accum"], layout["source"]) == (2, 2, "fixed")
    summary = json.loads(paths.summary.read_text())
    assert summary["steps"] == 3 and summary["resumed_from"] == 2


def test_out_of_memory_with_auto_halves_the_micro_batch_and_continues_from_the_step(tmp_path, embedded_model):
    directory = make_project(tmp_path / "proj", "model.max_seq_length=64", "train.save_steps=0")
    proc = run_out_of_memory(directory, "train", "--max-steps", "4", "--json", at=2, rows=4)
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = [strict_json(line) for line in proc.stdout.splitlines() if line.strip()]
    layout = next(e for e in events if e["event"] == "layout")
    assert (layout["micro_batch"], layout["grad_accum"], layout["source"]) == (4, 1, "configured")  # auto on CPU
    oom = [e for e in events if e["event"] == "out_of_memory"]
    assert len(oom) == 1 and (oom[0]["step"], oom[0]["micro_batch"], oom[0]["grad_accum"]) == (2, 2, 2)
    assert "micro-batch 4 → 2, accumulation 1 → 2" in oom[0]["message"]
    steps = [e["step"] for e in events if e["event"] == "step"]
    assert steps == [1, 2, 3, 4]
    paths = RunPaths(directory / "runs" / "proj")
    written = paths.checkpoint(2)  # written when memory ran out (save_steps = 0 writes none)
    assert is_complete_checkpoint(written)
    info = marker(written)
    assert info["step"] == 2 and info["layout"]["micro_batch"] == 2 and info["layout"]["source"] == "halved"
    summary = json.loads(paths.summary.read_text())
    assert summary["steps"] == 4 and summary["layout"]["micro_batch"] == 2 and summary["layout"]["grad_accum"] == 2


def test_out_of_memory_with_weights_gone_nan_writes_no_checkpoint_and_names_the_step(tmp_path, embedded_model):
    """The checkpoint written when memory runs out is checked like every other: NaN weights end the run."""
    directory = make_project(tmp_path / "proj", "model.max_seq_length=64", "train.save_steps=0")
    proc = run_out_of_memory(directory, "train", "--max-steps", "4", at=2, rows=4, poison=True)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    text = error_text(proc.stderr)
    assert "the LoRA weights became NaN or infinite at step 2" in text and "no checkpoint was written" in text, text
    assert RunPaths(directory / "runs" / "proj").checkpoints() == []


# Packed rows fill max_seq_length: 64 x 4,096 tokens per micro-batch, far beyond a T4
BIG = ["--set", "model.max_seq_length=4096", "--set", "train.batch_size=64", "--set", "train.micro_batch=64",
       "--set", "train.gradient_accumulation_steps=1", "--set", "train.packing=true"]


def test_dry_run_on_a_terminal_prints_the_estimate_as_toml_comments_and_the_fixes(project, tmp_path):
    import tomllib

    from terminal import run_terminal

    stdout = tmp_path / "resolved.toml"
    result = run_terminal("train", "--dry-run", "--gpu", "T4", *BIG, cwd=project, stdout=stdout, columns=60)
    assert result.returncode == 0, result.text
    assert tomllib.loads(stdout.read_text())["train"]["micro_batch"] == 64  # stdout: the TOML, as before
    lines = result.lines
    assert lines and all(line.startswith("#") for line in lines), lines  # `2>&1` keeps the TOML valid
    text = "\n".join(lines)
    assert "# Plan for T4 (14.6 GiB): unsloth backend, adamw_torch_fused" in text, text
    assert "micro-batch 64 x 1 accumulation step (64 rows per update)" in text
    assert "will not fit" in text and "changes that fit:" in text and "--set train.micro_batch=" in text, text
    assert "tokens per step" in text and "steps of" in text and "to the end" in text


def test_dry_run_json_is_one_object_with_the_estimate(project):
    result = run_cli("train", "--dry-run", "--json", cwd=project)
    assert result.returncode == 0, result.stderr[-2000:]
    found = result.json()  # one object: no event lines
    estimate = found["estimate"]
    assert found["gpu"] is None and found["layout"]["source"] == "configured" and estimate["fits"] is None
    assert estimate["peak_vram_bytes"] == sum(estimate["breakdown"].values()) > 0
    assert estimate["total_seconds"] == estimate["step_seconds"] * found["steps"] > 0
    assert found["config"]["train"]["micro_batch"] == "auto" and found["train_rows"] > 0
    refused = run_cli("train", "--gpu", "T4", cwd=project)
    assert refused.returncode == 2 and "--gpu NAME plans a dry run" in error_text(refused.stderr)


def test_doctor_says_what_fits_each_gpu(project):
    from slothctl import config
    from slothctl.doctor import project_fits
    from slothctl.memory import lookup

    cfg = config.load(project / "slothctl.toml", [arg for arg in BIG if arg != "--set"])
    (t4,) = project_fits(cfg, [lookup("T4")])
    assert t4["gpu"] == "T4" and t4["estimate"]["fits"] is False and "will not fit" in t4["summary"]
    assert t4["fixes"] and all(fix["peak_vram_bytes"] <= t4["estimate"]["budget_bytes"] for fix in t4["fixes"])
    auto = config.load(project / "slothctl.toml", [arg for arg in BIG if arg != "--set"] + ["train.micro_batch=auto"])
    (h200,) = project_fits(auto, [lookup("H200")])
    assert h200["layout"]["source"] == "auto" and h200["estimate"]["fits"] is True and ": fits" in h200["summary"]
    assert h200["layout"]["micro_batch"] * h200["layout"]["grad_accum"] == 64
