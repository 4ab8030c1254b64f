"""`train` refuses, before the model loads, what cannot work: an output folder that cannot be written,
a disk too small for a checkpoint, a tracker that is not installed. Each is exit 2 with one line."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import pytest

from conftest import assert_usage_error, make_project, run_cli


@pytest.fixture
def mount_tmpfs():
    """Mount a small tmpfs (a real small or read-only disk); skipped where mounting is not allowed."""
    mounted: list[Path] = []

    def mount(where: Path, options: str) -> Path:
        where.mkdir(parents=True)
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", str(where)], check=False)


def test_output_dir_below_a_regular_file_is_refused(tmp_path, embedded_model):
    (tmp_path / "blocker").write_text("not a folder\n")
    project = make_project(tmp_path / "p", f"output.dir={tmp_path / 'blocker' / 'runs'}")
    assert_usage_error(run_cli("train", cwd=project), "cannot create the run folder", "blocker", "is a file")
    assert (tmp_path / "blocker").read_text() == "not a folder\n"


def test_read_only_output_dir_is_refused(tmp_path, embedded_model, mount_tmpfs):
    readonly = mount_tmpfs(tmp_path / "ro", "ro,size=1m")
    project = make_project(tmp_path / "p", f"output.dir={readonly / 'runs'}")
    assert_usage_error(run_cli("train", cwd=project), "cannot write to", "Read-only file system")


def test_disk_too_small_for_a_checkpoint_is_refused_before_the_model_loads(tmp_path, embedded_model, mount_tmpfs):
    """The embedded model's checkpoint is ~62 MB (19.6 MB adapter, 39 MB AdamW state): 30 MB is too little."""
    small = mount_tmpfs(tmp_path / "small", "size=30m")
    project = make_project(tmp_path / "p", f"output.dir={small / 'runs'}", "train.max_steps=2")
    line = assert_usage_error(run_cli("train", cwd=project), "not enough disk space", "free", "optimizer state")
    assert "MB" in line
    assert not list(small.iterdir())  # nothing written: not even the run folder


def test_missing_tracker_is_refused(tmp_path, embedded_model):
    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    project = make_project(tmp_path / "p", "train.report_to=wandb")
    assert_usage_error(run_cli("train", cwd=project), 'report_to = "wandb"', "not installed", "slothctl[wandb]")
    assert not (project / "runs").exists()


def test_missing_bitsandbytes_is_refused_where_it_is_needed(monkeypatch):
    """8-bit AdamW (optim = "auto" on CUDA) and 4-bit loading need bitsandbytes, an extra since it left
    the core dependencies; without it: exit 2 naming the extra, before the model loads."""
    from slothctl.config import ModelConfig
    from slothctl.errors import UsageError
    from slothctl.training.checks import check_bitsandbytes

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    check_bitsandbytes(ModelConfig(name="m"), "adamw_torch")  # nothing needs it
    with pytest.raises(UsageError) as refused:
        check_bitsandbytes(ModelConfig(name="m"), "adamw_8bit")
    assert "adamw_8bit needs bitsandbytes" in refused.value.message
    assert "slothctl[cuda]" in refused.value.hint and "adamw_torch" in refused.value.hint
    with pytest.raises(UsageError, match="load_in_4bit needs bitsandbytes"):
        check_bitsandbytes(ModelConfig(name="m", load_in_4bit=True), "adamw_torch")
