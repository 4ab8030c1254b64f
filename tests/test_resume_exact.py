"""Exact resume in the states that are hard to restore: LoRA dropout (the RNG), gradient accumulation
(killed in the middle of a step), an epoch boundary after the resume point (the next epoch's order),
the length-grouped sampler forced on CPU, float32 (bf16 autocast would round differently). The run
killed with SIGKILL and resumed must give the uninterrupted run's losses, learning rates and adapter
tensors to the bit (torch.equal). And a longer `--max-steps` continues on the longer schedule.
"""

from __future__ import annotations

import math
import shutil
import signal
from pathlib import Path

import pytest

from conftest import make_project, run_cli
from slothctl.runs import RunPaths, read_metrics
from training_process import TrainingProcess

# 12 rows in batches of 2, two batches per step: 3 steps per epoch, the 4th step starts the second; checkpoints at 2, 4.
EXACT_SETS = ("model.dtype=float32", "lora.dropout=0.1", "train.batch_size=2", "train.gradient_accumulation_steps=2",
              "data.max_rows=12", "train.batching=length_grouped", "train.max_steps=4", "train.save_steps=2",
              "train.save_total_limit=3", "train.learning_rate=0.001")


# slothctl, announcing each micro-batch as a JSON line, so that a test can stop it inside a step's accumulation
ANNOUNCE_MICRO_BATCHES = """
import sys
from slothctl.cli import output
from slothctl.training import trainer
plain = trainer.trainer_class
def trainer_class():
    class Announcing(plain()):
        def training_step(self, model, inputs, num_items_in_batch=None):
            loss = super().training_step(model, inputs, num_items_in_batch)
            output.current.json({"event": "micro_batch", "step": self.state.global_step + 1})  # --json's stdout
            return loss
    return Announcing
trainer.trainer_class = trainer_class
from slothctl.cli.app import main
main(sys.argv[1:])
"""


def step_records(run: Path) -> dict[int, dict]:
    records = [r for r in read_metrics(run / "metrics.jsonl") if r["event"] == "step"]
    return {r["step"]: r for r in records}


def adapter_tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, embedded_model) -> Path:
    project = make_project(tmp_path_factory.mktemp("exact") / "run", *EXACT_SETS)
    result = run_cli("train", "--json", cwd=project)
    assert result.returncode == 0, result.stderr[-3000:]
    events = result.json_lines()
    start = next(e for e in events if e["event"] == "start")
    assert start["batching"]["strategy"] == "length_grouped" and start["global_batch"] == 4
    return project


def test_sigkill_mid_accumulation_then_resume_across_an_epoch_is_bit_identical(uninterrupted, tmp_path):
    project = make_project(tmp_path / "run", *EXACT_SETS)
    run_dir = project / "runs" / "run"
    process = TrainingProcess("train", cwd=project, code=ANNOUNCE_MICRO_BATCHES)
    # frozen after the first of step 3's two micro-batches (its gradients accumulated, no update yet), killed there
    process.freeze_on(lambda e: e["event"] == "micro_batch" and e["step"] == 3)
    process.wait_for(lambda e: e["event"] == "micro_batch" and e["step"] == 3)
    assert [e["step"] for e in process.of("checkpoint")] == [2] and [e["step"] for e in process.of("step")] == [1, 2]
    process.signal(signal.SIGKILL)
    assert process.finish() == -signal.SIGKILL
    assert [step for step, _ in RunPaths(run_dir).checkpoints()] == [2] and not (run_dir / "adapter").exists()

    result = run_cli("resume", "--json", cwd=project)
    assert result.returncode == 0, result.stderr[-3000:]
    events = result.json_lines()
    assert [e["step"] for e in events if e["event"] == "step"] == [3, 4]
    assert events[-1]["event"] == "done" and events[-1]["resumed_from"] == 2

    ref_dir = uninterrupted / "runs" / "run"
    steps, ref_steps = step_records(run_dir), step_records(ref_dir)
    assert sorted(steps) == sorted(ref_steps) == [1, 2, 3, 4]
    assert ref_steps[3]["epoch"] == 1.0 < ref_steps[4]["epoch"]  # the epoch boundary lies after the resume point
    for step in ref_steps:  # equal to the bit: losses, gradient norms, learning rates
        for key in ("loss", "grad_norm", "lr", "epoch"):
            assert steps[step][key] == ref_steps[step][key], (step, key, steps[step][key], ref_steps[step][key])
    import torch

    weights, ref_weights = adapter_tensors(run_dir / "adapter"), adapter_tensors(ref_dir / "adapter")
    assert weights.keys() == ref_weights.keys()
    unequal = [k for k in ref_weights if not torch.equal(weights[k], ref_weights[k])]
    assert not unequal, unequal
    start = adapter_tensors(run_dir / "checkpoint-2")  # the weights moved after the resume point
    assert any(not torch.equal(start[k], ref_weights[k]) for k in ref_weights)


def cosine_lrs(base: float, warmup_ratio: float, total: int) -> list[float]:
    """The learning rate of each step 1..total on transformers' cosine schedule with warmup."""
    import torch
    from transformers import get_scheduler

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base)
    schedule = get_scheduler("cosine", optimizer, num_warmup_steps=math.ceil(warmup_ratio * total),
                             num_training_steps=total)
    lrs = []
    for _ in range(total):
        lrs.append(schedule.get_last_lr()[0])
        optimizer.step()
        schedule.step()
    return lrs


def test_a_longer_max_steps_continues_on_the_longer_schedule(uninterrupted, tmp_path):
    """The finished 4-step run trained to 6: steps 5 and 6 take the learning rates of a 6-step schedule
    (an optimizer restored with the 4-step schedule's last rate would train step 5 at rate 0)."""
    ref_steps = step_records(uninterrupted / "runs" / "run")
    assert [ref_steps[s]["lr"] for s in range(1, 5)] == pytest.approx(cosine_lrs(0.001, 0.06, 4), rel=1e-9)
    project = tmp_path / "run"
    shutil.copytree(uninterrupted, project)
    result = run_cli("train", "--max-steps", "6", "--json", cwd=project)
    assert result.returncode == 0, result.stderr[-3000:]
    events = result.json_lines()
    assert events[-1]["resumed_from"] == 4 and events[-1]["steps"] == 6
    lrs = {e["step"]: e["lr"] for e in events if e["event"] == "step"}
    expected = cosine_lrs(0.001, 0.06, 6)
    assert sorted(lrs) == [5, 6]
    assert [lrs[5], lrs[6]] == pytest.approx(expected[4:], rel=1e-9), (lrs, expected)
    assert lrs[5] > 0
