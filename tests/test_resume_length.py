"""`resume` continues to the end the interrupted run was heading for (issue 14, item 9): its recorded
max_steps and --set values, not the project file's (which here would train a whole epoch), unless
the resume command sets them itself."""

from __future__ import annotations

import signal

from conftest import assert_usage_error, make_project, run_cli
from slothctl.runs import RunPaths
from training_process import TrainingProcess


def first_status(events: list[dict]) -> str:
    return next(e["message"] for e in events if e["event"] == "status")


def test_resume_goes_to_the_recorded_max_steps_unless_told_otherwise(tmp_path, embedded_model):
    project = make_project(tmp_path / "length", "train.batch_size=2")  # the file: one epoch, no checkpoints
    run_dir = project / "runs" / "length"
    process = TrainingProcess("train", "--max-steps", "8", "--set", "train.save_steps=2", cwd=project)
    process.freeze_on(lambda e: e["event"] == "checkpoint" and e["step"] == 4)  # step 5 cannot end before the kill
    process.wait_for(lambda e: e["event"] == "checkpoint" and e["step"] == 4)
    process.signal(signal.SIGKILL)
    assert process.finish() == -signal.SIGKILL
    assert [step for step, _ in RunPaths(run_dir).checkpoints()][-1] == 4

    result = run_cli("resume", "--json", cwd=project)
    assert result.returncode == 0, result.stderr[-3000:]
    events = result.json_lines()
    assert first_status(events) == f"Resuming {run_dir} from step 4 to step 8 (checkpoint-4)"
    kept = " ".join(e["message"] for e in events if e["event"] == "status")
    assert "train.max_steps 8 (the file says 0)" in kept and "train.save_steps 2 (the file says 0)" in kept
    assert [e["step"] for e in events if e["event"] == "step"] == [5, 6, 7, 8]
    assert events[-1]["event"] == "done" and events[-1]["steps"] == 8
    assert [step for step, _ in RunPaths(run_dir).checkpoints()][-1] == 8  # its save_steps = 2 kept too

    longer = run_cli("resume", "--max-steps", "10", "--json", cwd=project)
    assert longer.returncode == 0, longer.stderr[-3000:]
    events = longer.json_lines()
    assert first_status(events) == f"Resuming {run_dir} from step 8 to step 10 (checkpoint-8)"
    assert [e["step"] for e in events if e["event"] == "step"] == [9, 10]
    assert events[-1]["event"] == "done" and events[-1]["steps"] == 10

    # A --set on resume is a change like any other: one that is not free to change needs --force-resume.
    assert_usage_error(run_cli("resume", "--set", "lora.alpha=32", cwd=project), "different config", "lora.alpha")
