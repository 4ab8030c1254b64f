"""`micro_batch = "auto"` against the notebook setting (2 rows x 4 accumulation steps), same effective batch.

Both variants are `slothctl train` with batch_size 2, gradient_accumulation_steps 4 (8 rows per
optimizer update) and gradient checkpointing on as configured; "notebook" fixes micro_batch = 2,
"auto" lets the memory estimate choose the micro-batch (and turn checkpointing off when that fits).
Per model shape (random weights, built as bench/train_speed.py builds them) and weights (16-bit,
4-bit), on fixed-length rows (seq 2048) and on variable-length chat rows (log-normal, 50-2,000
tokens, one epoch), each run in a fresh process, the two variants interleaved (notebook, auto,
notebook, auto with --rounds 2). Measured: real (non-pad) tokens/s after --warmup steps, the
epoch's tokens/s, torch's peak VRAM, and the layout auto chose with its estimated peak.

    python bench/micro_batch.py --out bench/results/micro_batch-DEVICE-DATE.json
    python bench/micro_batch.py --shapes llama-3-8b --out ...      # one shape per device call
    python bench/micro_batch.py --dry-run --out /tmp/micro_batch.json   # CPU: embedded model, seq 64
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from _shared import write_chat_rows, write_text_rows  # noqa: E402
from memory_accuracy import environment  # noqa: E402  (device, date, library versions)

WORK = Path(os.environ.get("BENCH_WORK", "/tmp/slothctl-bench"))
VARIANTS = {"notebook": 2, "auto": "auto"}  # micro_batch


def project(name: str, model: Path, data: Path, fmt: str, seq: int, micro, weights: str, steps: int) -> Path:
    folder = WORK / "micro_batch" / name
    folder.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(folder / "runs", ignore_errors=True)
    micro_value = f'"{micro}"' if isinstance(micro, str) else micro
    (folder / "slothctl.toml").write_text(f"""
[model]
name = "{model}"
max_seq_length = {seq}
load_in_4bit = {"true" if weights == "4bit" else "false"}
[data]
source = "{data}"
format = "{fmt}"
[train]
batch_size = 2
gradient_accumulation_steps = 4
micro_batch = {micro_value}
max_steps = {steps}
epochs = 1.0
save_steps = 0
logging_steps = 1
gradient_checkpointing = true
[output]
name = "bench"
""")
    return folder


def run(folder: Path, warmup: int, timeout: float) -> dict:
    """`slothctl train --json` in a fresh process: steady real tokens/s from its step events."""
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}:{os.environ.get('PYTHONPATH', '')}",
           "UNSLOTH_DISABLE_STATISTICS": "1"}
    started = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-m", "slothctl", "train", "--json"], cwd=folder, env=env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    wall = time.monotonic() - started
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}: {proc.stderr[-1500:]}", "wall_seconds": wall}
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    steps = [e for e in events if e["event"] == "step"]
    layout = next((e for e in events if e["event"] == "layout"), {})
    halvings = [e for e in events if e["event"] == "out_of_memory"]
    summary = json.loads((folder / "runs" / "bench" / "summary.json").read_text())
    first, last = steps[min(warmup, len(steps) - 1) - 1] if warmup else None, steps[-1]
    steady = ((last["tokens"] - first["tokens"]) / (last["elapsed"] - first["elapsed"])
              if first and last["elapsed"] > first["elapsed"] else None)
    estimate = layout.get("estimate") or {}
    return {"tokens_per_s": steady, "epoch_tokens_per_s": summary["train_tokens"] / summary["train_seconds"],
            "train_tokens": summary["train_tokens"], "steps": len(steps), "peak_vram_gb": summary["peak_vram_gb"],
            "mean_loss": sum(e["loss"] for e in steps) / len(steps), "wall_seconds": wall,
            "layout": {k: layout.get(k) for k in ("micro_batch", "grad_accum", "gradient_checkpointing", "batching",
                                                  "source")},
            "estimated_peak_gb": estimate.get("peak_vram_bytes", 0) / 2**30 or None,
            "estimated_torch_peak_gb": estimate.get("torch_peak_bytes", 0) / 2**30 or None,
            "halvings": [{k: e[k] for k in ("step", "micro_batch", "grad_accum")} for e in halvings]}


def model_for(shape: str, dry_run: bool) -> Path:
    if dry_run:
        sys.path.insert(0, str(REPO / "src"))
        from slothctl.models import ensure_embedded

        return ensure_embedded("smollm2-135m")
    from train_speed import build_model  # random weights of the shape + the embedded tokenizer

    return build_model(shape)


def data_for(kind: str, seq: int, rows: int) -> tuple[Path, str]:
    if kind == "chat":
        path = WORK / "data" / f"micro-chat-{rows}.jsonl"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            write_chat_rows(path, rows)
        return path, "messages"
    path = WORK / "data" / f"micro-text-{seq}-{rows}.jsonl"
    if not path.exists():
        write_text_rows(path, rows=rows, words_per_row=seq + 64)  # every row truncated to seq tokens
    return path, "text"


def mean(values: list) -> float | None:
    values = [v for v in values if v]
    return sum(values) / len(values) if values else None


def report(cases: list[dict]) -> None:
    print(f"\n{'shape':12} {'weights':7} {'data':5} {'variant':9} {'layout':16} {'tok/s':>8} {'epoch':>8} "
          f"{'peak GiB':>8} {'est. GiB':>8} {'loss':>7}")
    for case in cases:
        for name, runs in case["runs"].items():
            for r in runs:
                if "error" in r:
                    print(f"{case['shape']:12} {case['weights']:7} {case['data']:5} {name:9} FAILED {r['error'][-300:]}")
                    continue
                lay = r["layout"]
                text = f"{lay['micro_batch']}x{lay['grad_accum']} ckpt {'on' if lay['gradient_checkpointing'] else 'off'}"
                est = f"{r['estimated_peak_gb']:8.1f}" if r["estimated_peak_gb"] else f"{'-':>8}"
                peak = f"{r['peak_vram_gb']:8.1f}" if r["peak_vram_gb"] else f"{'-':>8}"
                print(f"{case['shape']:12} {case['weights']:7} {case['data']:5} {name:9} {text:16} "
                      f"{r['tokens_per_s'] or 0:8.0f} {r['epoch_tokens_per_s']:8.0f} {peak} {est} {r['mean_loss']:7.4f}")
        if case.get("speedup") is not None:
            print(f"{'':36} auto / notebook: x{case['speedup']:.2f} (steady), x{case['epoch_speedup']:.2f} (epoch)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--shapes", default="qwen3-1.7b,llama-3-8b")
    parser.add_argument("--weights", default="16bit", help="comma list of 16bit, 4bit")
    parser.add_argument("--data", default="fixed,chat")
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps on fixed-length rows")
    parser.add_argument("--warmup", type=int, default=3, help="steps left out of the steady tokens/s")
    parser.add_argument("--chat-rows", type=int, default=192, help="one epoch of this many chat rows")
    parser.add_argument("--rounds", type=int, default=1, help="notebook, auto repeated this many times")
    parser.add_argument("--timeout", type=float, default=420, help="per process")
    parser.add_argument("--dry-run", action="store_true", help="CPU: the embedded model, seq 64, 3 steps")
    args = parser.parse_args()
    if args.dry_run:
        args.shapes, args.weights, args.seq, args.steps, args.warmup, args.chat_rows = "smollm2-135m", "16bit", 64, 3, 1, 24
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results = {"environment": environment(args.dry_run), "command": " ".join(sys.argv), "cases": [],
               "method": "slothctl train --json in a fresh process per run, variants interleaved; real (non-pad) "
                         "tokens/s between the warmup step's and the last step's events; epoch = train_tokens / "
                         "train_seconds of summary.json; peak = torch.cuda.max_memory_allocated"}
    started = time.monotonic()
    for shape in args.shapes.split(","):
        model = model_for(shape, args.dry_run)
        for weights in args.weights.split(","):
            for kind in args.data.split(","):
                data, fmt = data_for(kind, args.seq, args.chat_rows if kind == "chat" else 8 * (args.steps + 2))
                steps = 0 if kind == "chat" else args.steps  # chat: one epoch
                case = {"shape": shape, "weights": weights, "data": kind, "seq": args.seq, "runs": {}}
                for _ in range(args.rounds):
                    for name, micro in VARIANTS.items():
                        folder = project(f"{shape}-{weights}-{kind}-{name}", model, data, fmt, args.seq, micro,
                                         weights, steps)
                        result = run(folder, args.warmup, args.timeout)
                        case["runs"].setdefault(name, []).append(result)
                        print(shape, weights, kind, name, json.dumps(result)[:600], flush=True)
                auto = [r for r in case["runs"]["auto"] if "error" not in r]
                notebook = [r for r in case["runs"]["notebook"] if "error" not in r]
                if auto and notebook:
                    a, n = mean([r["tokens_per_s"] for r in auto]), mean([r["tokens_per_s"] for r in notebook])
                    case["speedup"] = a / n if a and n else None
                    case["epoch_speedup"] = (mean([r["epoch_tokens_per_s"] for r in auto])
                                             / mean([r["epoch_tokens_per_s"] for r in notebook]))
                results["cases"].append(case)
                out.write_text(json.dumps(results, indent=2))
    results["seconds"] = time.monotonic() - started
    out.write_text(json.dumps(results, indent=2))
    report(results["cases"])


if __name__ == "__main__":
    main()
