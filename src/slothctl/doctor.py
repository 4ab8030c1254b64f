"""`slothctl doctor`: what this machine can do — libraries, CUDA, Unsloth, the embedded model's
cache and the GGUF tools — each with the command that fixes what is missing."""

from __future__ import annotations

import importlib.util
import platform
from pathlib import Path
from typing import Any

from slothctl import __version__, libraries


def _cuda() -> dict[str, Any]:
    from slothctl.backends import cuda_available

    if not cuda_available():
        return {"available": False, "devices": [], "gpus": []}
    import torch

    gpus = []
    for index in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(index)
        gpus.append({"index": index, "name": torch.cuda.get_device_name(index), "total_bytes": total,
                     "free_bytes": free})
    return {"available": True, "cuda": torch.version.cuda, "devices": [gpu["name"] for gpu in gpus], "gpus": gpus}


def project_fits(cfg, gpus: list) -> list[dict[str, Any]]:
    """What fits each GPU (slothctl.memory Gpu entries) for the project's config, by the estimate: the layout
    `micro_batch` gives there, its peak, and when it does not fit, the changes that would. Every row is taken
    as max_seq_length long (the data is not read here; `train --dry-run` reads it)."""
    from slothctl import models
    from slothctl.errors import SlothctlError
    from slothctl.training.arguments import optimizer_name
    from slothctl.training.layout import plan_memory
    from slothctl.training.preview import planned_backend

    try:
        path = models.resolve(cfg.model.name, cfg.project_dir).path
    except SlothctlError as exc:
        return [{"gpu": gpu.name, "unavailable": exc.one_line()} for gpu in gpus]
    found = []
    for gpu in gpus:
        backend = planned_backend(cfg.model.backend, gpu, named=False)
        optim = optimizer_name(cfg.train, cuda=True)
        memory = plan_memory(cfg.model, cfg.lora, cfg.train, model_path=path, backend=backend, optim=optim,
                             lengths=None, gpu=gpu)
        planned = memory.to_dict()
        found.append({"gpu": gpu.name, "backend": backend, "summary": memory.fit_text(),
                      "layout_text": memory.layout.describe(), "layout": planned["layout"],
                      "estimate": planned["estimate"], "fixes": planned["fixes"], "unavailable": planned["unavailable"]})
    return found


def _embedded() -> list[dict[str, Any]]:
    from slothctl.errors import UsageError
    from slothctl.models import EMBEDDED, EMBEDDED_PREFIX, embedded_dir, embedded_gguf_path

    found = []
    for model_id, spec in EMBEDDED.items():
        entry: dict[str, Any] = {"name": EMBEDDED_PREFIX + model_id, "package": spec.package}
        try:
            entry["gguf"] = str(embedded_gguf_path(model_id))
            entry["installed"] = True
        except UsageError as exc:
            entry.update(installed=False, problem=exc.one_line())
        folder = embedded_dir(model_id)
        entry["converted"] = (folder / "slothctl_embedded.json").is_file()
        entry["cache"] = str(folder)
        found.append(entry)
    return found


def _project(config: Path | None, sets: list[str]) -> dict[str, Any] | None:
    if config is None or not config.is_file():
        return None
    from slothctl import config as config_mod
    from slothctl.errors import SlothctlError
    from slothctl.runs import RunPaths

    try:
        cfg = config_mod.load(config, sets)
    except SlothctlError as exc:
        return {"config": str(config), "valid": False, "problem": exc.one_line()}
    paths = RunPaths(cfg.run_dir)
    from slothctl.memory import for_device

    gpus = [for_device(gpu["name"], gpu["total_bytes"]) for gpu in _cuda()["gpus"]]
    return {"config": str(config), "valid": True, "model": cfg.model.name, "backend": cfg.model.backend,
            "run_dir": str(paths.root), "adapter": (paths.adapter / "adapter_config.json").is_file(),
            "merged": paths.merged.is_dir(), "gguf": paths.gguf.is_dir(), "fits": project_fits(cfg, gpus)}


def report(config: Path | None = None, sets: list[str] | None = None) -> dict[str, Any]:
    from slothctl.backends import select, unsloth_installed
    from slothctl.export import tools
    from slothctl.models import cache_root

    cuda = _cuda()
    return {
        "slothctl": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "libraries": {name: libraries.version(name) for name in libraries.TRAINING + libraries.EXPORT},
        "cuda": cuda,
        "unsloth": {"installed": unsloth_installed(), "usable": unsloth_installed() and cuda["available"]},
        "auto_backend": select("auto"),
        "cache": str(cache_root()),
        "embedded_models": _embedded(),
        "gguf_tools": tools.state().to_json(),
        "sentencepiece": importlib.util.find_spec("sentencepiece") is not None,
        "project": _project(config, sets or []),
    }
