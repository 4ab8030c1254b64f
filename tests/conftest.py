"""Shared fixtures: the embedded model (converted once), a CLI runner, tiny projects and one
trained run that the chat/merge/export/push tests reuse.

Everything runs for real on the embedded SmolLM2-135M; caches live inside the checkout
(.cache/), so a fresh clone needs nothing from outside it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("SLOTHCTL_CACHE", str(REPO / ".cache" / "slothctl"))
os.environ.setdefault("HF_HOME", str(REPO / ".cache" / "huggingface"))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

# Small and fast, but real: a few optimizer steps of real LoRA training on CPU.
FAST = ["model.max_seq_length=128", "train.batch_size=4", "train.gradient_accumulation_steps=1",
        "train.gradient_checkpointing=false", "data.eval_fraction=0.0", "train.save_steps=0"]


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    def json_lines(self) -> list[dict]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]


def run_cli(*args: str, cwd: Path | str | None = None, env: dict | None = None, timeout: float = 900,
            input: str | None = None) -> Result:
    """Run `python -m slothctl ARGS` in a fresh process, as a user would."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "slothctl", *args], cwd=cwd, env=full_env, text=True,
                          capture_output=True, timeout=timeout, input=input)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def run_python(code: str, cwd: Path | str | None = None, timeout: float = 600) -> Result:
    """Run Python code in a fresh process (e.g. to load an artifact without our process state)."""
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, text=True, capture_output=True,
                          timeout=timeout, env=dict(os.environ))
    return Result(proc.returncode, proc.stdout, proc.stderr)


def assert_usage_error(result: Result, *fragments: str) -> str:
    """Exit 2, exactly one line on stderr, no traceback; returns the line."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture(scope="session")
def embedded_model() -> Path:
    """The embedded model as an HF folder (converted once per cache, safe across processes)."""
    from slothctl.models import ensure_embedded

    return ensure_embedded("smollm2-135m")


def make_project(directory: Path, *extra_sets: str, fast: bool = True) -> Path:
    """`slothctl init DIR --example`, with the FAST settings (and `extra_sets`) written into the file."""
    sets = [arg for s in ((FAST if fast else []) + list(extra_sets)) for arg in ("--set", s)]
    result = run_cli("init", str(directory), "--example", *sets)
    assert result.returncode == 0, result.stderr
    return directory


@pytest.fixture
def project(tmp_path: Path, embedded_model: Path) -> Path:
    return make_project(tmp_path / "proj")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, embedded_model: Path) -> Path:
    """One short real training on the example data, shared by tests that need an adapter.

    Returns the project folder; its run is under runs/proj/ (adapter/, checkpoint-*, summary.json).
    """
    directory = make_project(tmp_path_factory.mktemp("trained") / "proj", "train.save_steps=10",
                             "train.learning_rate=0.0005")
    result = run_cli("train", "--max-steps", "20", "--json", cwd=directory)
    assert result.returncode == 0, result.stderr[-3000:]
    return directory
