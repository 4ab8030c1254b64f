"""Data-parallel scaling: `slothctl train --gpus N` against one GPU, tokens/s side by side.

Qwen3-1.7B and Llama-3-8B shapes (random weights, built as bench/train_speed.py builds them),
fixed-length text rows of seq 2048, LoRA r16 on all linear layers, gradient checkpointing, the
per-GPU batch of train_speed.py, `backend` unsloth (or --backend hf). Every run is a fresh
`slothctl train --gpus N --json`; the GPU counts alternate (1, 2, 1, 2, ...) so drift hits both.
Tokens/s is the global rate (every rank's real tokens, from rank 0's step events) after --warmup
steps; the ratio N GPUs / 1 GPU is printed (target for 2 GPUs: at least 1.85).

    python bench/multi_gpu.py --gpus 1,2 --out bench/results/multi_gpu-DEVICE-DATE.json \\
        [--shapes qwen3-1.7b,llama-3-8b] [--repeats 2] [--steps 20] [--warmup 5] [--backend unsloth]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _shared import write_text_rows  # noqa: E402
from train_speed import BATCH, WORK, build_model, environment, fresh_run_env, slothctl_project  # noqa: E402

TARGET = 1.85  # tokens/s on 2 GPUs over 1


def run(project: Path, gpus: int, warmup: int) -> dict:
    """One `slothctl train --gpus N --json` in a fresh process: its global steady-state tokens/s."""
    proc = subprocess.run([sys.executable, "-m", "slothctl", "train", "--gpus", str(gpus), "--json"], cwd=project,
                          env=fresh_run_env(project), capture_output=True, text=True)
    if proc.returncode != 0:
        return {"gpus": gpus, "error": (proc.stderr + proc.stdout)[-3000:]}
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    steps = [e for e in events if e["event"] == "step"]
    start = next(e for e in events if e["event"] == "start")
    summary = json.loads((project / "runs" / "bench" / "summary.json").read_text())
    first, last = steps[warmup - 1], steps[-1]
    return {"gpus": gpus, "world_size": start["world_size"], "global_batch": start["global_batch"],
            "tokens_per_s": (last["tokens"] - first["tokens"]) / (last["elapsed"] - first["elapsed"]),
            "step_s": (last["elapsed"] - first["elapsed"]) / (last["step"] - first["step"]),
            "peak_vram_gb_rank0": summary["peak_vram_gb"], "backend": summary["backend"],
            "mean_loss": sum(e["loss"] for e in steps) / len(steps)}


def scaling(shape: str, counts: list[int], repeats: int, seq: int, steps: int, warmup: int, backend: str) -> dict:
    model = build_model(shape)
    bs = BATCH[shape]
    data = WORK / "data" / f"text-{seq}-x{max(counts)}.jsonl"
    if not data.exists():  # enough rows that no run sees a row twice
        write_text_rows(data, rows=bs * max(counts) * (steps + 4), words_per_row=seq + 64)
    project = slothctl_project(f"{shape}-gpus", model, data, "text", seq, bs, steps, backend, batching="auto")
    runs: dict[int, list[dict]] = {n: [] for n in counts}
    for _ in range(repeats):
        for n in counts:
            result = run(project, n, warmup)
            runs[n].append(result)
            print(shape, json.dumps(result), flush=True)
    rates = {n: [r["tokens_per_s"] for r in found if "tokens_per_s" in r] for n, found in runs.items()}
    mean = {n: sum(v) / len(v) for n, v in rates.items() if v}
    out = {"batch_size_per_gpu": bs, "seq": seq, "steps": steps, "warmup": warmup, "backend": backend,
           "runs": {str(n): found for n, found in runs.items()},
           "tokens_per_s": {str(n): value for n, value in mean.items()}}
    if 1 in mean:
        out["speedup_over_1_gpu"] = {str(n): value / mean[1] for n, value in mean.items() if n != 1}
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--gpus", default="1,2", help="GPU counts to compare, e.g. 1,2 or 1,2,4")
    parser.add_argument("--shapes", default="qwen3-1.7b,llama-3-8b")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--backend", default="unsloth", choices=("unsloth", "hf"))
    args = parser.parse_args()
    counts = [int(n) for n in args.gpus.split(",")]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(out.read_text()) if out.exists() else {}  # one shape per call adds to the file
    results.update(environment=environment(), target_2_gpus=TARGET)
    results.setdefault("shapes", {})
    for shape in filter(None, args.shapes.split(",")):
        results["shapes"][shape] = scaling(shape, counts, args.repeats, args.seq, args.steps, args.warmup,
                                           args.backend)
        out.write_text(json.dumps(results, indent=2))
    print(f"\n{results['environment']['device']}, {results['environment']['date']}, backend {args.backend}")
    for shape, data in results["shapes"].items():
        rates = "  ".join(f"{n} GPU: {v:,.0f} tok/s" for n, v in data["tokens_per_s"].items())
        speedups = "  ".join(f"x{v:.2f} on {n}" for n, v in data.get("speedup_over_1_gpu", {}).items())
        print(f"{shape:12} {rates}  {speedups}")


if __name__ == "__main__":
    main()
