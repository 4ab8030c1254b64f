"""Export times on the embedded model: merge, GGUF f16 conversion, q4_k_m quantization, and the checks.

    python bench/export.py [--project DIR] [--json]

Without --project it trains a throw-away adapter (3 steps) on the bundled example data first.
Each phase is timed on its own through the same library calls `slothctl merge` / `export gguf` make.
Needs the GGUF tools (`slothctl export prepare`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

FAST = ["model.max_seq_length=128", "train.batch_size=4", "train.gradient_accumulation_steps=1",
        "train.gradient_checkpointing=false", "train.save_steps=0", "train.max_steps=3"]


def quiet(_event) -> None:
    """Progress events are not wanted here: only the timings."""


def timed(label: str, results: dict, fn, *args, **kwargs):
    started = time.perf_counter()
    value = fn(*args, **kwargs)
    results[label] = round(time.perf_counter() - started, 2)
    print(f"{label:<22} {results[label]:>8.2f} s", file=sys.stderr)
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, help="a trained slothctl project (default: train a tiny one)")
    parser.add_argument("--json", action="store_true", help="print the timings as one JSON object")
    args = parser.parse_args()

    from slothctl import config, models
    from slothctl.export import tools
    from slothctl.export.gguf import conversion_view, convert, quantize
    from slothctl.export.merge import merge, run_check

    tools_state = tools.require()
    work = Path(tempfile.mkdtemp(prefix="slothctl-bench-export-"))
    results: dict = {}
    if args.project is None:
        from slothctl.project import init_project
        from slothctl.training.run import train

        project = work / "proj"
        init_project(project, preset="chat", model=None, dataset=None, example=True, force=False, target=None,
                     overrides=FAST)
        timed("train (3 steps)", results, train, config.load(project / "slothctl.toml"))
    else:
        project = args.project
    cfg = config.load(project / "slothctl.toml")
    merged = work / "merged"
    timed("merge 16bit", results, merge, cfg, out=merged, check=False)
    base = models.resolve(json.loads((merged / "slothctl_merged.json").read_text())["base_model"],
                          cfg.project_dir).path
    timed("check merged", results, run_check, "merged", ["--out", str(merged), "--adapter", str(cfg.run_dir / "adapter"),
                                                         "--precision", "16bit", "--base", base], quiet)
    out = work / "gguf"
    out.mkdir()
    view = conversion_view(merged, work / "view", quiet)
    f16 = out / "bench-F16.gguf"
    timed("convert f16", results, convert, tools_state, view, f16, "f16", "bench")
    timed("quantize q4_k_m", results, quantize, f16, out / "bench-Q4_K_M.gguf", "q4_k_m")
    timed("check gguf", results, run_check, "gguf", ["--folder", str(out), "--merged", str(merged)], quiet)
    report = {"model": cfg.model.name, "seconds": results, "cpus": os.cpu_count(),
              "machine": platform.machine(), "python": platform.python_version(),
              "sizes_mb": {p.name: round(p.stat().st_size / 1e6, 1) for p in sorted(out.glob("*.gguf"))}}
    print(json.dumps(report) if args.json else json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
