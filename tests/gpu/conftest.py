"""GPU tests run only where CUDA and the unsloth extra are present (the device machine)."""

import importlib.util

import pytest


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    reason = None
    if not _cuda():
        reason = "needs a CUDA GPU"
    elif importlib.util.find_spec("unsloth") is None:
        reason = "needs the unsloth extra"
    if reason:
        for item in items:
            if "tests/gpu" in str(item.fspath):
                item.add_marker(pytest.mark.skip(reason=reason))
