"""Crash-safe checkpoints and `slothctl resume`, tested with real training runs and real signals.

One uninterrupted reference run (module fixture) is compared with a run that is SIGKILLed right
after a checkpoint and then resumed: same losses, same eval losses, same adapter weights.
"""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import pytest

from conftest import assert_usage_error, error_text, make_project, run_cli, strict_json
from slothctl.runs import CHECKPOINT_INFO, RunPaths, read_metrics
from training_process import TrainingProcess

# Tiny but real: 5 steps of 2 rows, a checkpoint every 2 steps and at the end (keep 2), eval on 2% of
# the rows at step 4 and at the end, TensorBoard on. The learning rate is high so that the adapter visibly moves.
RESUME_SETS = ("train.batch_size=2", "train.max_steps=5", "train.save_steps=2", "train.save_total_limit=2",
               "data.eval_fraction=0.02", "train.eval_steps=4", "train.report_to=tensorboard",
               "train.learning_rate=0.001")
TOLERANCE = 1e-5


def metrics(run: Path) -> tuple[dict[int, float], dict[int, float]]:
    records = read_metrics(run / "metrics.jsonl")
    steps = [r["step"] for r in records if r["event"] == "step"]
    assert len(steps) == len(set(steps)), steps  # no step twice in the effective history
    return ({r["step"]: r["loss"] for r in records if r["event"] == "step"},
            {r["step"]: r["eval_loss"] for r in records if r["event"] == "eval"})


def adapter_weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def assert_same_series(logged: list[tuple[int, float]], expected: dict[int, float]) -> None:
    """TensorBoard stores float32: equal steps, values within float32 rounding."""
    assert [step for step, _ in logged] == sorted(expected)
    for step, value in logged:
        assert value == pytest.approx(expected[step], rel=1e-6), (step, value, expected[step])


def tensorboard_scalars(folder: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder))
    accumulator.Reload()
    return [(e.step, e.value) for e in accumulator.Scalars(tag)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, embedded_model) -> Path:
    """The uninterrupted run: runs/ref/ of a project trained to the end in one go."""
    project = make_project(tmp_path_factory.mktemp("resume") / "ref", *RESUME_SETS)
    result = run_cli("train", "--json", cwd=project)
    assert result.returncode == 0, result.stderr[-3000:]
    return project


def test_sigkill_right_after_a_checkpoint_then_resume_matches_the_uninterrupted_run(reference, tmp_path):
    project = make_project(tmp_path / "killed", *RESUME_SETS)
    run_dir = project / "runs" / "killed"
    process = TrainingProcess("train", cwd=project)
    process.freeze_on(lambda e: e["event"] == "step" and e["step"] == 3)  # frozen there: step 4 never starts
    process.wait_for(lambda e: e["event"] == "checkpoint" and e["step"] == 2)
    process.wait_for(lambda e: e["event"] == "step" and e["step"] == 3)  # logged after the checkpoint
    process.signal(signal.SIGKILL)
    assert process.finish() == -signal.SIGKILL
    assert [step for step, _ in RunPaths(run_dir).checkpoints()] == [2]
    logged_before = (run_dir / "metrics.jsonl").read_bytes()
    assert b'"step": 3' in logged_before  # a step past the checkpoint, to be voided on resume

    # What a crash in the middle of writing a checkpoint leaves: never taken for a checkpoint.
    (run_dir / ".checkpoint-4.tmp-crashed").mkdir()
    (run_dir / ".checkpoint-4.tmp-crashed" / "optimizer.pt").write_bytes(b"partial")
    shutil.copytree(run_dir / "checkpoint-2", run_dir / "checkpoint-4")
    (run_dir / "checkpoint-4" / "slothctl_checkpoint.json").unlink()

    result = run_cli("resume", "--json", cwd=project)
    assert result.returncode == 0, result.stderr[-3000:]
    events = result.json_lines()
    warnings = " ".join(e["message"] for e in events if e["event"] == "warning")
    assert ".checkpoint-4.tmp-crashed" in warnings and "checkpoint-4" in warnings
    assert any("Resuming" in e.get("message", "") and "checkpoint-2" in e["message"] for e in events)
    assert [e["step"] for e in events if e["event"] == "step"] == [3, 4, 5]
    done = events[-1]
    assert done["event"] == "done" and done["steps"] == 5 and done["resumed_from"] == 2

    # Same numbers as the run that was never interrupted.
    ref_dir = reference / "runs" / "ref"
    losses, evals = metrics(run_dir)
    ref_losses, ref_evals = metrics(ref_dir)
    assert sorted(losses) == sorted(ref_losses) == [1, 2, 3, 4, 5]
    assert sorted(evals) == sorted(ref_evals) == [4, 5]
    for step in ref_losses:
        assert abs(losses[step] - ref_losses[step]) <= TOLERANCE, (step, losses[step], ref_losses[step])
    for step in ref_evals:
        assert abs(evals[step] - ref_evals[step]) <= TOLERANCE, (step, evals[step], ref_evals[step])
    weights, ref_weights = adapter_weights(run_dir / "adapter"), adapter_weights(ref_dir / "adapter")
    assert weights.keys() == ref_weights.keys()
    start = adapter_weights(run_dir / "checkpoint-4")  # proves the weights moved after the resume point
    moved = max((ref_weights[k] - start[k]).abs().max().item() for k in ref_weights)
    worst = max((weights[k] - ref_weights[k]).abs().max().item() for k in ref_weights)
    assert worst <= TOLERANCE < moved, (worst, moved)

    # metrics.jsonl was only appended to: the killed run's lines stay, a resume line voids step 3 of them.
    text = (run_dir / "metrics.jsonl").read_bytes()
    assert text.startswith(logged_before)
    appended = [strict_json(line) for line in text[len(logged_before):].splitlines()]
    assert appended[0]["event"] == "resume" and appended[0]["step"] == 2
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [step for step, _ in summary["losses"]] == [1, 2, 3, 4, 5] and summary["resumed_from"] == 2
    assert [step for step, _ in summary["evals"]] == [4, 5] and summary["eval_loss"] == evals[5]

    # Leftovers cleaned, the newest two complete checkpoints kept, the final adapter apart.
    assert not (run_dir / ".checkpoint-4.tmp-crashed").exists()
    assert [step for step, _ in RunPaths(run_dir).checkpoints()] == [4, 5]
    info = json.loads((run_dir / "checkpoint-4" / "slothctl_checkpoint.json").read_text())
    assert info["step"] == 4 and info["data_position"]["batches_done_in_epoch"] == 4
    assert info["config_hash"] == summary["config_hash"] and info["data"]["hash"] == summary["data"]["hash"]
    for name in ("adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"):
        assert (run_dir / "checkpoint-4" / name).is_file(), name
    # The marker vouches for every file of its folder, with its size.
    files = {p.name: p.stat().st_size for p in (run_dir / "checkpoint-4").iterdir() if p.name != CHECKPOINT_INFO}
    assert {name: entry["size"] for name, entry in info["files"].items()} == files

    # TensorBoard: the resumed writer hides what the killed run logged after step 2.
    assert_same_series(tensorboard_scalars(run_dir / "tensorboard", "train/loss"), losses)


def test_reference_run_logs_eval_and_tensorboard(reference):
    run_dir = reference / "runs" / "ref"
    losses, evals = metrics(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["eval_loss"] == evals[5] and summary["best_eval_loss"] == min(evals.values())
    assert_same_series(tensorboard_scalars(run_dir / "tensorboard", "train/loss"), losses)
    assert_same_series(tensorboard_scalars(run_dir / "tensorboard", "eval/loss"), evals)
    assert not (run_dir / "README.md").exists()  # TRL's model card stays out of the run folder


def test_checkpoint_size_estimate_covers_the_real_checkpoint(reference, embedded_model):
    from slothctl import config
    from slothctl.training.checkpoints import estimate_checkpoint_bytes

    cfg = config.load(reference / "slothctl.toml")
    estimate = estimate_checkpoint_bytes(cfg.lora, cfg.model, str(embedded_model), "adamw_torch")
    checkpoint = reference / "runs" / "ref" / "checkpoint-4"
    real = sum(p.stat().st_size for p in checkpoint.iterdir())
    assert real <= estimate["checkpoint"] <= 1.3 * real, (real, estimate)


def test_config_changes_are_refused_listing_the_keys(reference):
    summary_before = (reference / "runs" / "ref" / "summary.json").read_text()
    line = assert_usage_error(run_cli("train", "--set", "train.learning_rate=0.002", "--set", "lora.alpha=32",
                                      cwd=reference), "different config", "train.learning_rate", "lora.alpha",
                              "--fresh", "--force-resume")
    assert "runs/ref-2" in line
    assert_usage_error(run_cli("resume", "--force-resume", "--set", "lora.r=8", cwd=reference), "lora.r", "shape")
    assert_usage_error(run_cli("resume", "--from", "3", cwd=reference), "checkpoint-3", "4, 5")
    assert_usage_error(run_cli("train", "--fresh", "--force-resume", cwd=reference), "--fresh")
    assert_usage_error(run_cli("resume", "--set", "output.name=nothing-here", cwd=reference), "no run at")
    assert (reference / "runs" / "ref" / "summary.json").read_text() == summary_before


def test_a_finished_run_is_not_trained_again(reference):
    result = run_cli("train", "--json", cwd=reference)
    assert result.returncode == 0, result.stderr[-2000:]
    done = result.json_lines()[-1]
    assert done["already_complete"] and done["steps"] == 5
    assert not [e for e in result.json_lines() if e["event"] == "step"]


def test_a_run_killed_after_its_last_checkpoint_saves_that_checkpoint_as_its_adapter(reference, tmp_path):
    """Killed between the last checkpoint and adapter/: resuming trains nothing and saves the last
    checkpoint's weights (loaded through PEFT) as the final adapter."""
    project = tmp_path / "ref"
    shutil.copytree(reference, project)
    run_dir = project / "runs" / "ref"
    shutil.rmtree(run_dir / "adapter")
    (run_dir / "summary.json").unlink()
    result = run_cli("resume", "--json", cwd=project)
    assert result.returncode == 0, result.stderr[-3000:]
    events = result.json_lines()
    assert not [e for e in events if e["event"] == "step"]
    assert events[-1]["steps"] == 5 and events[-1]["resumed_from"] == 5
    adapter, last = adapter_weights(run_dir / "adapter"), adapter_weights(run_dir / "checkpoint-5")
    assert adapter.keys() == last.keys() and all((adapter[k] == last[k]).all() for k in adapter)


def test_fresh_starts_a_new_folder_and_early_stopping_stops(reference):
    """--fresh with another config trains in runs/ref-2; a learning rate of 1.0 makes the eval loss
    worse after the first real update, so patience 1 stops the run at step 2 of 5."""
    before = (reference / "runs" / "ref" / "summary.json").read_text()
    result = run_cli("train", "--fresh", "--json", "--set", "train.learning_rate=1.0", "--set",
                     "train.early_stopping_patience=1", "--set", "train.eval_steps=1", cwd=reference)
    assert result.returncode == 0, result.stderr[-3000:]
    events = result.json_lines()
    assert any("Starting fresh in" in e.get("message", "") and "ref-2" in e["message"] for e in events)
    done = events[-1]
    assert done["run_dir"].endswith("runs/ref-2") and done["stopped_early"] and done["steps"] == 2
    evals = [e["eval_loss"] for e in events if e["event"] == "eval"]
    assert len(evals) == 2 and evals[1] > evals[0]
    summary = json.loads((reference / "runs" / "ref-2" / "summary.json").read_text())
    assert summary["stopped_early"] and summary["run"] == "ref-2"
    assert (reference / "runs" / "ref" / "summary.json").read_text() == before


@pytest.mark.slow  # not in CI (./scripts/test -m slow runs these)
def test_first_sigterm_saves_a_checkpoint_then_train_resumes_and_trains_longer(tmp_path, embedded_model):
    project = make_project(tmp_path / "term", "train.batch_size=2", "train.max_steps=2", "train.save_steps=5")
    run_dir = project / "runs" / "term"
    process = TrainingProcess("train", cwd=project)
    process.freeze_on(lambda e: e["event"] == "start")  # the loop is about to run: a signal now ends step 1 cleanly
    process.wait_for(lambda e: e["event"] == "start")
    process.signal(signal.SIGTERM)
    process.thaw()
    assert process.finish() == 130, process.stderr[-3000:]
    stopping, stopped = process.of("stopping"), process.of("stopped")
    assert stopping and stopping[0]["signal"] == "SIGTERM" and stopping[0]["step"] == 1
    assert stopped and stopped[0]["step"] == 1 and stopped[0]["resume"] == "slothctl resume"
    assert [e["step"] for e in process.of("step")] == [1]
    error = error_text(process.stderr)
    assert "stopped by SIGTERM after step 1" in error and "slothctl resume" in error
    assert [step for step, _ in RunPaths(run_dir).checkpoints()] == [1]  # not a save step: the signal saved it
    assert not (run_dir / "adapter").exists()

    # `train` on that folder resumes (and says so); a larger --max-steps trains longer.
    result = run_cli("train", "--max-steps", "3", "--json", cwd=project)
    assert result.returncode == 0, result.stderr[-3000:]
    events = result.json_lines()
    messages = " ".join(e.get("message", "") for e in events)
    assert "Resuming" in messages and "checkpoint-1" in messages and "config matches" in messages
    assert "max_steps 2 → 3" in messages
    assert [e["step"] for e in events if e["event"] == "step"] == [2, 3]
    assert events[-1]["steps"] == 3 and events[-1]["resumed_from"] == 1
    losses, _ = metrics(run_dir)
    assert sorted(losses) == [1, 2, 3]


def test_second_ctrl_c_stops_at_once_and_keeps_the_previous_checkpoint(tmp_path, embedded_model):
    """Each Ctrl-C is sent while the process is frozen on an event (checkpoint-1, then the notice that
    comes after the first of step 2's four micro-batches), so the second lands inside step 2."""
    project = make_project(tmp_path / "twice", "train.batch_size=1", "train.gradient_accumulation_steps=4",
                           "train.max_steps=3", "train.save_steps=1")
    run_dir = project / "runs" / "twice"
    process = TrainingProcess("train", cwd=project)
    process.freeze_on(lambda e: e["event"] == "checkpoint" and e["step"] == 1)
    process.wait_for(lambda e: e["event"] == "checkpoint" and e["step"] == 1)
    before = {p.name: p.read_bytes() for p in (run_dir / "checkpoint-1").iterdir()}
    process.freeze_on(lambda e: e["event"] == "stopping")
    process.signal(signal.SIGINT)
    process.thaw()
    notice = process.wait_for(lambda e: e["event"] == "stopping")
    assert notice["signal"] == "SIGINT" and notice["step"] == 2
    process.signal(signal.SIGINT)
    process.thaw()
    assert process.finish() == 130, process.stderr[-3000:]
    error = error_text(process.stderr)
    assert "stopped at once by a second SIGINT" in error and "checkpoint-1" in error
    assert not process.of("stopped") and not process.of("step")[1:]  # step 2 never finished
    assert [step for step, _ in RunPaths(run_dir).checkpoints()] == [1]
    assert {p.name: p.read_bytes() for p in (run_dir / "checkpoint-1").iterdir()} == before
    assert not [p for p in run_dir.iterdir() if ".tmp" in p.name] and not (run_dir / "adapter").exists()


def test_resume_from_an_older_checkpoint_sets_newer_ones_aside_and_repeats_the_same_step(reference):
    run_dir = reference / "runs" / "ref"
    adapter_before = adapter_weights(run_dir / "adapter")
    losses_before, _ = metrics(run_dir)
    result = run_cli("resume", "--from", "checkpoint-4", "--json", cwd=reference)
    assert result.returncode == 0, result.stderr[-3000:]
    events = result.json_lines()
    assert any("checkpoint-5 is newer" in e.get("message", "") for e in events if e["event"] == "warning")
    assert [e["step"] for e in events if e["event"] == "step"] == [5] and events[-1]["resumed_from"] == 4
    assert [step for step, _ in RunPaths(run_dir).checkpoints()] == [4, 5]
    assert len([p for p in run_dir.iterdir() if p.name.startswith("checkpoint-5.superseded-")]) == 1
    losses, _ = metrics(run_dir)
    assert sorted(losses) == [1, 2, 3, 4, 5] and abs(losses[5] - losses_before[5]) <= TOLERANCE
    adapter = adapter_weights(run_dir / "adapter")
    assert max((adapter[k] - adapter_before[k]).abs().max().item() for k in adapter) <= TOLERANCE
