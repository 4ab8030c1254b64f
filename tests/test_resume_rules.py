"""The rules behind resuming, without training: the metrics de-duplication rule, which config
changes a continuation allows, checkpoint discovery and the resume command shown to the user."""

from __future__ import annotations

import json
from pathlib import Path

from slothctl import config
from slothctl.runs import CHECKPOINT_INFO, RunPaths, clean_incomplete, read_metrics, rotate_checkpoints
from slothctl.training.checkpoints import changed_keys, config_hash
from slothctl.training.plan import resume_command


def test_a_resume_line_voids_later_steps_of_the_killed_run(tmp_path):
    lines = [{"event": "step", "step": 1, "loss": 3.0}, {"event": "step", "step": 2, "loss": 2.5},
             {"event": "eval", "step": 2, "eval_loss": 2.4}, {"event": "step", "step": 3, "loss": 9.9},
             {"event": "eval", "step": 3, "eval_loss": 9.9},
             {"event": "resume", "step": 2, "checkpoint": "checkpoint-2"},
             {"event": "step", "step": 3, "loss": 2.0}, {"event": "step", "step": 4, "loss": 1.5}]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"event": "step", "st')  # torn line
    effective = read_metrics(path)
    assert [(r["event"], r["step"]) for r in effective] == [("step", 1), ("step", 2), ("eval", 2), ("resume", 2),
                                                            ("step", 3), ("step", 4)]
    assert [r["loss"] for r in effective if r["event"] == "step"] == [3.0, 2.5, 2.0, 1.5]


def test_run_length_and_bookkeeping_may_change_the_rest_may_not(tmp_path):
    (tmp_path / "slothctl.toml").write_text('[model]\nname = "embedded:smollm2-135m"\n[data]\nsource = "d.jsonl"\n')
    base = config.load(tmp_path / "slothctl.toml")
    longer = config.load(tmp_path / "slothctl.toml", ["train.max_steps=100", "train.save_steps=7",
                                                       "train.report_to=tensorboard", "output.name=x"])
    assert changed_keys(base, longer) == [] and config_hash(base) == config_hash(longer)
    other = config.load(tmp_path / "slothctl.toml", ["train.learning_rate=0.001", "data.seed=1"])
    assert [k for k, _, _ in changed_keys(base, other)] == ["data.seed", "train.learning_rate"]
    assert config_hash(base) != config_hash(other)


def test_only_complete_checkpoints_count_and_rotation_keeps_the_newest(tmp_path):
    paths = RunPaths(tmp_path / "run")
    for step in (2, 4, 6, 10):
        folder = paths.checkpoint(step)
        folder.mkdir(parents=True)
        if step != 10:  # checkpoint-10 never got its info file: incomplete
            (folder / CHECKPOINT_INFO).write_text("{}")
    (paths.root / ".checkpoint-12.tmp-abc").mkdir()
    assert [s for s, _ in paths.checkpoints()] == [2, 4, 6] and paths.latest_checkpoint() == paths.checkpoint(6)
    assert sorted(p.name for p in clean_incomplete(paths)) == [".checkpoint-12.tmp-abc", "checkpoint-10"]
    assert sorted(p.name for p in paths.root.iterdir()) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    rotate_checkpoints(paths, 2)
    assert [s for s, _ in paths.checkpoints()] == [4, 6]


def test_resume_command_repeats_what_differs_from_the_file(tmp_path, monkeypatch):
    project = tmp_path / "my proj"
    project.mkdir()
    (project / "slothctl.toml").write_text('[model]\nname = "embedded:smollm2-135m"\n[data]\nsource = "d.jsonl"\n')
    monkeypatch.chdir(project)
    assert resume_command(config.load(Path("slothctl.toml"))) == "slothctl resume"
    cfg = config.load(Path("slothctl.toml"), ["train.max_steps=40", "output.name=run-2"])
    assert resume_command(cfg) == "slothctl resume --set train.max_steps=40 --set output.name=run-2"
    monkeypatch.chdir(tmp_path)
    assert resume_command(config.load(project / "slothctl.toml")) == "slothctl resume -c 'my proj/slothctl.toml'"
