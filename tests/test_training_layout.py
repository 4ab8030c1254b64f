"""The layout promises of slothctl/training: every [train] key is read in arguments.py (the one file
that says where each goes), and the backend seam is typed."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

from slothctl import backends
from slothctl.config import LoraConfig, TrainConfig

TRAINING = Path(__file__).resolve().parents[1] / "src" / "slothctl" / "training"


def test_every_train_key_is_read_in_arguments_py():
    tree = ast.parse((TRAINING / "arguments.py").read_text(encoding="utf-8"))
    read = {node.attr for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in ("train", "t")}
    keys = {f.name for f in dataclasses.fields(TrainConfig)}
    assert keys <= read, f"[train] keys not mapped in training/arguments.py: {sorted(keys - read)}"


def test_backends_are_classes_of_the_protocol():
    from slothctl.backends.hf import HFBackend

    backend = backends.get("hf")
    assert isinstance(backend, HFBackend) and backend.name == "hf"
    protocol = {name for name in vars(backends.Backend) if not name.startswith("_")} - {"name"}
    assert protocol <= set(dir(HFBackend))
    assert backends.lora_arguments(LoraConfig(r=8)) == {
        "r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "bias": "none",
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "use_rslora": False}
