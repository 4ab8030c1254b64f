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


def _no_constant(name: str):
    raise ValueError(f"not JSON: {name}")


def strict_json(text: str):
    """json.loads that refuses NaN / Infinity (which Python writes and accepts, and JSON has not)."""
    return json.loads(text, parse_constant=_no_constant)


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    def json_lines(self) -> list[dict]:
        """stdout as strict JSON lines (whatever the exit status: error events are JSON too)."""
        return [strict_json(line) for line in self.stdout.splitlines() if line.strip()]

    def json(self):
        """stdout as one strict JSON document."""
        return strict_json(self.stdout)


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


def error_text(stderr: str) -> str:
    """The last `Error:` line of stderr and the `Hint:` line after it, if any, joined by a newline."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    starts = [i for i, line in enumerate(lines) if line.startswith("Error: ")]
    assert starts, stderr
    block = lines[starts[-1]:starts[-1] + 2]
    return "\n".join(block if len(block) == 2 and block[1].startswith("Hint: ") else block[:1])


def assert_usage_error(result: Result, *fragments: str) -> str:
    """Exit 2, one `Error:` line on stderr (and at most one `Hint:` line after it), nothing else, no
    traceback; returns the text. The fragments may be in either line."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert 1 <= len(lines) <= 2 and lines[0].startswith("Error: "), result.stderr
    assert len(lines) == 1 or lines[1].startswith("Hint: "), result.stderr
    assert "Traceback" not in result.stderr
    text = "\n".join(lines)
    for fragment in fragments:
        assert fragment in text, (fragment, text)
    return text


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
