"""The third-party libraries slothctl drives: their versions (summary.json, `slothctl doctor`) and
keeping their progress bars and notices out of our output (the live view, JSON lines, chat answers)."""

from __future__ import annotations

import logging
import os
import platform
import sys
from importlib import metadata

TRAINING = ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "bitsandbytes", "unsloth",
            "unsloth_zoo")
EXPORT = ("llama-cpp-python", "gguf", "huggingface_hub")


def version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def training_versions() -> dict[str, str]:
    """Python, slothctl and the installed training libraries, as a run's summary.json records them."""
    from slothctl import __version__

    versions = {"python": platform.python_version()}
    versions.update({name: found for name in TRAINING if (found := version(name)) is not None})
    versions["slothctl"] = __version__
    return versions


def quiet() -> None:
    """Progress bars and info logs of transformers, datasets, huggingface_hub and bitsandbytes off.

    datasets is only imported by the commands that need it: the environment covers a later import,
    the calls one that already happened."""
    for name, value in (("HF_HUB_DISABLE_PROGRESS_BARS", "1"), ("HF_DATASETS_DISABLE_PROGRESS_BARS", "1"),
                        ("DATASETS_VERBOSITY", "error"), ("TOKENIZERS_PARALLELISM", "false")):
        os.environ.setdefault(name, value)
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # CPU kernel notices on import
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    if "datasets" in sys.modules:
        datasets = sys.modules["datasets"]
        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
