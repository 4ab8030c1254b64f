"""`train --gpus 2` on CPU: two data-parallel ranks (gloo) through torchrun, slothctl the launcher.

Real runs on the embedded model: one rank with batch 2 against two ranks with batch 1 (the same
global batch, no dropout), a kill -9 of the launcher after a checkpoint then `resume --gpus 2`, a
Ctrl-C of the launcher, a rank killed in the middle. On CPU `--gpus N` means N CPU processes.
"""

from __future__ import annotations

import json
import random
import signal
from pathlib import Path

import psutil
import pytest

from conftest import assert_usage_error, final_error, make_project, run_cli
from slothctl.runs import RunPaths, read_metrics
from slothctl.training import launcher
from slothctl.training.batching import LengthGroupedBatches
from training_process import TrainingProcess

# 4 steps of one row per rank, a checkpoint every 2 steps; the learning rate makes the adapter move.
# float32: on a CPU with native bf16 `auto` trains in bf16 autocast, where one padded batch of 2 and two
# batches of 1 round differently (~5e-3 in the loss); the comparison is of the maths, not the rounding.
SETS = ("train.batch_size=1", "train.max_steps=4", "train.save_steps=2", "train.learning_rate=0.001",
        "model.dtype=float32")
SAME_GLOBAL_BATCH = 1e-4  # one process with batch 2 vs two ranks with batch 1: other sums, same maths
SAME_RANKS = 1e-6  # a resumed run on the same two ranks


def losses(run: Path) -> dict[int, float]:
    records = [r for r in read_metrics(run / "metrics.jsonl") if r["event"] == "step"]
    steps = [r["step"] for r in records]
    assert len(steps) == len(set(steps)), steps  # no step twice: only rank 0 writes
    return {r["step"]: r["loss"] for r in records}


def adapter(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, embedded_model) -> tuple[Path, list[dict]]:
    """The uninterrupted run on two ranks: the project and its events."""
    project = make_project(tmp_path_factory.mktemp("ranks") / "two", *SETS)
    result = run_cli("train", "--gpus", "2", "--json", cwd=project, env={"TMPDIR": str(project)})
    assert result.returncode == 0, result.stderr[-3000:]
    return project, result.json_lines()


def test_two_ranks_train_like_one_process_with_the_same_global_batch(two_ranks, tmp_path):
    project, events = two_ranks
    single = make_project(tmp_path / "one", *SETS, "train.batch_size=2", "train.save_steps=0")
    result = run_cli("train", "--json", cwd=single)
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = losses(single / "runs" / "one"), losses(project / "runs" / "two")
    assert sorted(one) == sorted(two) == [1, 2, 3, 4]
    for step in one:
        assert abs(one[step] - two[step]) <= SAME_GLOBAL_BATCH, (step, one[step], two[step])

    # Rank 0 alone reported: one start (stating the global batch), each step once, one result.
    start = [e for e in events if e["event"] == "start"]
    assert len(start) == 1 and start[0]["world_size"] == 2 and start[0]["global_batch"] == 2
    assert any("2 ranks, global batch 2 = 1 x 1 x 2" in e.get("message", "") for e in events)
    assert [e["step"] for e in events if e["event"] == "step"] == [1, 2, 3, 4]
    assert [e["event"] for e in events].count("done") == 1 and events[-1]["event"] == "done"
    assert not [e for e in events if e["event"] in ("error", "warning")]

    # Rank 0 alone wrote: the same files as one process, each rank's RNG state in the checkpoints.
    run = project / "runs" / "two"
    assert sorted(p.name for p in run.iterdir()) == sorted(
        [".lock", "adapter", "checkpoint-2", "checkpoint-4", "config.toml", "metrics.jsonl", "summary.json"])
    for step in (2, 4):
        checkpoint = run / f"checkpoint-{step}"
        assert (checkpoint / "rng_state_0.pth").is_file() and (checkpoint / "rng_state_1.pth").is_file()
        assert not (checkpoint / "rng_state.pth").exists()
        info = json.loads((checkpoint / "slothctl_checkpoint.json").read_text())
        assert info["world_size"] == 2 and info["step"] == step
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 4
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["config"]["train"]["gpus"] == 2
    single_summary = json.loads((single / "runs" / "one" / "summary.json").read_text())
    assert summary["train_tokens"] == single_summary["train_tokens"]  # both ranks' tokens counted
    assert not list(project.glob("slothctl-ranks-*"))  # the launcher's log folder is gone after success


def test_kill_9_of_the_launcher_stops_every_rank_and_resume_on_two_ranks_matches(two_ranks, tmp_path,
                                                                                monkeypatch):
    reference, _ = two_ranks
    project = make_project(tmp_path / "two", *SETS)
    run = project / "runs" / "two"
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the launcher's log folder, left behind by kill -9
    process = TrainingProcess("train", "--gpus", "2", cwd=project)
    process.freeze_on(lambda e: e["event"] == "step" and e["step"] == 3)  # every rank frozen: step 4 never starts
    process.wait_for(lambda e: e["event"] == "checkpoint" and e["step"] == 2)
    process.wait_for(lambda e: e["event"] == "step" and e["step"] == 3)  # logged after the checkpoint
    family = psutil.Process(process.proc.pid).children(recursive=True)  # torchrun and the two ranks
    assert len(family) >= 3, family
    process.signal(signal.SIGKILL)
    assert process.finish() == -signal.SIGKILL
    gone, alive = psutil.wait_procs(family, timeout=30)
    assert not alive, alive
    assert [step for step, _ in RunPaths(run).checkpoints()] == [2]

    result = run_cli("resume", "--gpus", "2", "--json", cwd=project, env={"TMPDIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-3000:]
    events = result.json_lines()
    assert [e["step"] for e in events if e["event"] == "step"] == [3, 4]
    assert not [e for e in events if e["event"] == "warning"]  # same ranks: nothing to warn about
    resumed, expected = losses(run), losses(reference / "runs" / "two")
    assert sorted(resumed) == [1, 2, 3, 4]
    for step in expected:
        assert abs(resumed[step] - expected[step]) <= SAME_RANKS, (step, resumed[step], expected[step])
    weights, expected_weights = adapter(run / "adapter"), adapter(reference / "runs" / "two" / "adapter")
    worst = max((weights[k] - expected_weights[k]).abs().max().item() for k in expected_weights)
    assert worst <= SAME_RANKS, worst


@pytest.mark.slow  # not in CI (./scripts/test -m slow runs these)
def test_ctrl_c_stops_every_rank_after_a_checkpoint_and_one_rank_resumes_with_a_warning(tmp_path,
                                                                                      embedded_model):
    project = make_project(tmp_path / "stop", *SETS, "train.save_steps=10")
    run = project / "runs" / "stop"
    process = TrainingProcess("train", "--gpus", "2", cwd=project)
    step = process.ctrl_c_after_step(1)
    assert len(process.of("stopped")) == 1 and len(process.of("stopping")) == 1
    assert [s for s, _ in RunPaths(run).checkpoints()] == [step]  # saved by rank 0 where every rank stopped
    error = final_error(process.stderr)
    assert f"after step {step}" in error and "Hint: continue with: slothctl resume" in process.stderr, \
        process.stderr[-2000:]

    result = run_cli("resume", "--json", cwd=project)  # on one rank: the global batch halves
    assert result.returncode == 0, result.stderr[-3000:]
    events = result.json_lines()
    warnings = [e["message"] for e in events if e["event"] == "warning"]
    assert len(warnings) == 1 and "written by 2 ranks (global batch 2)" in warnings[0], warnings
    assert "this run has 1 (global batch 1)" in warnings[0]
    assert [e["step"] for e in events if e["event"] == "step"] == list(range(step + 1, 5))


@pytest.mark.slow  # not in CI (./scripts/test -m slow runs these)
def test_a_rank_that_dies_stops_the_others_with_one_line_naming_it(tmp_path, embedded_model, monkeypatch):
    project = make_project(tmp_path / "dies", *SETS)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    process = TrainingProcess("train", "--gpus", "2", cwd=project)
    process.wait_for(lambda e: e["event"] == "step" and e["step"] == 1)
    family = psutil.Process(process.proc.pid).children(recursive=True)
    rank_1 = [p for p in family if p.environ().get("RANK") == "1"]
    assert len(rank_1) == 1, family
    rank_1[0].kill()
    assert process.finish() == 1, process.stderr[-3000:]
    assert not psutil.wait_procs(family, timeout=30)[1]
    lines = [line for line in process.stderr.splitlines() if line.strip()]
    assert len(lines) == 2 and lines[0].startswith("Error: rank 1 died by SIGKILL"), process.stderr[-3000:]
    assert lines[1].startswith("Hint: the output of every rank is in "), process.stderr[-3000:]
    log = Path(lines[1].split("the output of every rank is in ")[1])
    assert log.is_file() and "exitcode" in log.read_text()
    assert process.of("error")[0]["exit_code"] == 1


def test_gpus_is_checked_before_anything_runs(project, monkeypatch):
    assert_usage_error(run_cli("train", "--gpus", "0", cwd=project), "--gpus 0", "at least 1")
    assert_usage_error(run_cli("train", "--gpus", "all", cwd=project), "--gpus all", '"auto"')
    assert_usage_error(run_cli("train", "--set", "train.gpus=0", cwd=project), "[train] gpus", "at least 1")
    assert not (project / "runs").exists()
    monkeypatch.setattr(launcher, "cuda_count", lambda: 2)
    assert launcher.ranks_wanted("auto") == 2 and launcher.ranks_wanted(1) == 1
    with pytest.raises(Exception, match="2 CUDA GPUs are visible"):
        launcher.ranks_wanted(4)
    monkeypatch.setattr(launcher, "cuda_count", lambda: 0)
    assert launcher.ranks_wanted("auto") == 1 and launcher.ranks_wanted(3) == 3  # CPU: N processes


def test_length_grouped_steps_give_every_rank_rows_of_similar_length():
    """Batches are dealt to ranks in turn, so they are shuffled in runs of one per rank: the ranks of a
    step wait little for each other. One rank keeps the one-rank order."""
    rng = random.Random(0)
    lengths = [rng.randint(10, 2000) for _ in range(1001)]
    single = LengthGroupedBatches(lengths, 4, 3407).batches()
    assert LengthGroupedBatches(lengths, 4, 3407, ranks=1).batches() == single
    dealt = LengthGroupedBatches(lengths, 4, 3407, ranks=2).batches()
    assert sorted(map(sorted, dealt)) == sorted(map(sorted, single)) and dealt != single

    def waiting(batches):  # mean length difference of the two ranks' longest rows in a step
        longest = [max(lengths[i] for i in batch) for batch in batches[:-1]]
        return sum(abs(a - b) for a, b in zip(longest[::2], longest[1::2])) / (len(longest) // 2)

    assert waiting(dealt) < waiting(single) / 10, (waiting(dealt), waiting(single))


def test_the_launcher_names_a_rank_killed_by_a_signal_first(tmp_path):
    log = tmp_path / "ranks.log"
    log.write_text("Root Cause (first observed failure):\n[0]:\n  time      : x\n  host      : h\n"
                   "  rank      : 0 (local_rank: 0)\n  exitcode  : 1 (pid: 7)\n[1]:\n  rank      : 1 (local_rank: 1)\n"
                   "  exitcode  : -9 (pid: 8)\n")
    failures = {0: {"rank": 0, "message": "RuntimeError: Connection closed by peer", "exit_code": 1, "time": 1.0}}
    assert launcher.root_cause(failures, log, 1).one_line().startswith("rank 1 died by SIGKILL")
    log.write_text("")
    failures[1] = {"rank": 1, "message": "RuntimeError: CUDA out of memory", "exit_code": 1, "time": 0.5}
    assert launcher.root_cause(failures, log, 1).one_line().startswith("rank 1 failed: RuntimeError: CUDA out")
    usage = {0: {"rank": 0, "message": "[train] gpus: bad (hint: fix it)", "exit_code": 2, "time": 1.0}}
    error = launcher.root_cause(usage, log, 1)
    assert error.exit_code == 2 and error.one_line() == "[train] gpus: bad (hint: fix it)"
