"""The private hooks (and copied signatures) in training/private.py, checked against the installed
transformers, TRL and Unsloth: an upgrade that renames, reshapes or stops calling one fails here, by
name, instead of training differently. No model is loaded."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from pathlib import Path

import pytest

from slothctl.training import private

SRC = Path(__file__).resolve().parents[1] / "src" / "slothctl"


def resolve(target: str):
    module_name, _, qualified = target.partition(":")
    if importlib.util.find_spec(module_name.split(".")[0]) is None:
        pytest.skip(f"{module_name} is not installed here")
    found = importlib.import_module(module_name)
    for part in qualified.split("."):
        found = getattr(found, part, None)
        assert found is not None, f"{target}: gone from the installed {module_name} ({private.__file__})"
    return found


@pytest.mark.parametrize("hook", private.HOOKS, ids=lambda hook: hook.target)
def test_hook_exists_with_its_parameters_and_is_still_called(hook):
    found = resolve(hook.target)
    parameters = tuple(inspect.signature(found).parameters)
    assert parameters[:len(hook.parameters)] == hook.parameters, \
        f"{hook.target} now takes {parameters}; slothctl relies on {hook.parameters} ({hook.why})"
    if hook.caller:
        caller = resolve(hook.caller)
        name = hook.target.rsplit(".", 1)[-1]
        assert name in inspect.getsource(caller), f"{hook.caller} no longer calls {name}: {hook.why}"
    source = inspect.getsource(found) if hook.mentions else ""
    for name in hook.mentions:
        assert name in source, f"{hook.target} no longer uses {name}: {hook.why}"


def test_private_names_are_used_only_through_private_py():
    """Each private hook's name appears in no other source file: private.py is the one place."""
    names = [hook.target.rsplit(".", 1)[-1] for hook in private.HOOKS if hook.private]
    for path in SRC.rglob("*.py"):
        if path.name == "private.py":
            continue
        text = path.read_text(encoding="utf-8")
        for name in names:
            assert name not in text, f"{path.relative_to(SRC)} uses {name}: go through training/private.py"


def test_the_sampler_hook_reaches_our_sampler():
    """The mixin, on a real transformers Trainer subclass, asks our method first and falls back."""
    from transformers import Trainer

    class Probe(private.TrainSamplerHook, Trainer):
        def __init__(self):  # no model: only the sampler lookup is exercised
            self.train_dataset = ["a", "b"]

        def slothctl_train_sampler(self, dataset):
            return ("ours", tuple(dataset))

    assert Probe()._get_train_sampler() == ("ours", ("a", "b"))
