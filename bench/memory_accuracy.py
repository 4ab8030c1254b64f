"""How close slothctl's memory estimate (slothctl.memory) comes to the peak torch measures.

For the Qwen3-1.7B and Llama-3-8B shapes (random weights, built as bench/train_speed.py builds them)
x 16-bit / 4-bit weights x gradient checkpointing on / off, a few training steps at micro-batch 1, 4
and 8 of fixed-length rows (seq 2048) and of variable-length chat rows (log-normal lengths,
50-2,000 tokens, length-grouped padded batches, the longest batch included), Unsloth, LoRA r16 on
the seven projections, 8-bit AdamW. Measured: torch.cuda.max_memory_allocated per point, next to
the estimate's torch_peak_bytes; prints a table with the error and writes JSON. The last step's
tokens/s is printed next to the estimate's too (3 steps are no steady state: a rough check, and the
only one of the 4-bit speed so far).

Each (shape, weights, checkpointing) group runs in its own fresh process, its points in ascending
size with the peak counter reset before each (one process per point would cost ~4x the device time:
importing Unsloth, loading the model and compiling the fused loss dominate). --fresh runs every point
in its own process instead. Points whose estimate exceeds 95% of the GPU are skipped and listed.

    python bench/memory_accuracy.py --out bench/results/memory_accuracy-DEVICE-DATE.json
    python bench/memory_accuracy.py --dry-run --out /tmp/memory_accuracy.json   # CPU, tiny shape, hf path
    python bench/memory_accuracy.py --merge first.json second.json --out merged.json  # results of two calls
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "src"))

from _shared import SHAPES  # noqa: E402

from slothctl.memory import GIB, ModelShape, TrainSetup, estimate  # noqa: E402

WORK = Path(os.environ.get("BENCH_WORK", "/tmp/slothctl-bench"))
TINY = dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, vocab_size=512, tie_word_embeddings=True)
CHAT_ROWS = 384


def chat_lengths(rows: int, seq: int, seed: int = 0) -> list[int]:
    """Token lengths like bench/_shared.py's chat rows: log-normal, median ~270, 50-2,000 (within seq)."""
    rng = random.Random(seed)
    return [min(seq, int(min(2000, max(50, rng.lognormvariate(math.log(270), 0.8))))) for _ in range(rows)]


def chat_batches(lengths: list[int], micro: int) -> list[list[int]]:
    """Three length-grouped batches: the longest rows (the peak), a middle one, the longest again."""
    ordered = sorted(lengths, reverse=True)
    batches = [ordered[i:i + micro] for i in range(0, len(ordered) - micro + 1, micro)]
    return [batches[0], batches[len(batches) // 2], batches[0]]


def setup_for(point: dict, lengths: list[int] | None, backend: str, on_cuda: bool) -> TrainSetup:
    chat = point["data"] == "chat"
    return TrainSetup(backend=backend, weights=point["weights"], micro_batch=point["micro_batch"], grad_accum=1,
                      seq_len=point["seq"], gradient_checkpointing=point["checkpointing"],
                      batching="length_grouped" if chat else "padded", lengths=tuple(lengths) if chat else None,
                      optimizer="adamw_8bit" if on_cuda else "adamw_torch", on_cuda=on_cuda, autocast=on_cuda)


# ---- the child: one process, one model, several points --------------------------------------------------------------

def child(spec_path: str, out_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    if spec["backend"] == "unsloth":
        import unsloth  # noqa: F401  (before torch, transformers, peft: Unsloth patches them)
    import torch

    cuda = torch.cuda.is_available()
    if not cuda:
        torch.set_num_threads(1)  # the dry run: a tiny model, on a shared machine
    total = torch.cuda.get_device_properties(0).total_memory if cuda else None
    model = load_model(spec, cuda)
    params = [p for p in model.parameters() if p.requires_grad]
    if cuda:
        import bitsandbytes as bnb

        optimizer = bnb.optim.AdamW8bit(params, lr=1e-5)  # what transformers' optim="adamw_8bit" builds
    else:
        optimizer = torch.optim.AdamW(params, lr=1e-5)
    model.train()
    results = []
    for point in spec["points"]:
        if total and point["estimate_bytes"] > 0.95 * total:
            results.append({**point, "skipped": f"estimate {point['estimate_bytes'] / GIB:.1f} GiB > 95% of "
                                                f"the GPU's {total / GIB:.1f} GiB"})
            continue
        try:
            results.append({**point, **run_point(model, optimizer, point, spec, cuda)})
        except torch.OutOfMemoryError as exc:
            results.append({**point, "error": f"out of memory: {str(exc)[:300]}"})
        finally:
            optimizer.zero_grad(set_to_none=True)
        Path(out_path).write_text(json.dumps(results))  # what is done survives a later crash


def load_model(spec: dict, cuda: bool):
    import torch

    r16 = dict(r=16, lora_alpha=16, lora_dropout=0.0, bias="none",
               target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    checkpointing = spec["checkpointing"]
    if spec["backend"] == "unsloth":
        from unsloth import FastLanguageModel

        model, _ = FastLanguageModel.from_pretrained(model_name=spec["model"], max_seq_length=spec["seq"], dtype=None,
                                                     load_in_4bit=spec["weights"] == "4bit",
                                                     use_gradient_checkpointing="unsloth" if checkpointing else False)
        return FastLanguageModel.get_peft_model(model, **r16, random_state=3407, max_seq_length=spec["seq"],
                                                use_gradient_checkpointing="unsloth" if checkpointing else False)
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=torch.bfloat16) if spec["weights"] == "4bit" else None
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.bfloat16 if cuda else torch.float32,
                                                 quantization_config=quantization,
                                                 device_map={"": 0} if cuda else None)
    if quantization is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing)
    if cuda:  # TRL's fused LM head, as SFTTrainer uses it on CUDA (before PEFT wraps the model)
        from trl.trainer.utils import add_fused_lm_head

        add_fused_lm_head(model)
    model = get_peft_model(model, LoraConfig(**r16, task_type="CAUSAL_LM"))
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    return model


def run_point(model, optimizer, point: dict, spec: dict, cuda: bool) -> dict:
    import gc

    import torch

    device = "cuda" if cuda else "cpu"
    generator = torch.Generator().manual_seed(0)
    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    seconds = []
    for rows in point["batches"]:
        width = max(rows)
        ids = torch.randint(3, spec["vocab"], (len(rows), width), generator=generator)
        mask = (torch.arange(width)[None, :] < torch.tensor(rows)[:, None]).long()
        labels = ids.masked_fill(mask == 0, -100)
        batch = {"input_ids": ids.to(device), "labels": labels.to(device)}
        if min(rows) < width:
            batch["attention_mask"] = mask.to(device)
        start = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=cuda):
            extra = {"fused_lm_head": True} if spec["backend"] == "hf" and cuda else {}
            loss = model(**batch, **extra).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return {"measured_bytes": torch.cuda.max_memory_allocated() if cuda else None, "step_seconds": seconds,
            "loss": float(loss)}


# ---- the parent -----------------------------------------------------------------------------------------------------

def build(shape: str, dry_run: bool) -> Path:
    if dry_run:
        folder = WORK / "models" / "tiny-memory"
        if not (folder / "config.json").is_file():
            code = (f"import torch; from transformers import AutoConfig, AutoModelForCausalLM; torch.manual_seed(0); "
                    f"AutoModelForCausalLM.from_config(AutoConfig.for_model(**{TINY!r}, bos_token_id=1, "
                    f"eos_token_id=2, pad_token_id=0)).save_pretrained({str(folder)!r})")
            subprocess.run([sys.executable, "-c", code], check=True)
        return folder
    from train_speed import build_model  # random weights + the embedded tokenizer (Unsloth loads one)

    return build_model(shape)


def groups(args) -> list[dict]:
    """One process per (shape, weights, checkpointing); its points smallest first."""
    out = []
    for weights in args.weights.split(","):
        for shape in args.shapes.split(","):
            for checkpointing in (True, False):
                config = TINY if args.dry_run else SHAPES[shape]
                lengths = chat_lengths(args.chat_rows, args.seq)
                points = []
                for micro in sorted(int(m) for m in args.micro.split(",")):
                    points.append({"shape": shape, "weights": weights, "checkpointing": checkpointing, "seq": args.seq,
                                   "micro_batch": micro, "data": "fixed", "batches": [[args.seq] * micro] * args.steps})
                if args.chat_micro:
                    points.append({"shape": shape, "weights": weights, "checkpointing": checkpointing, "seq": args.seq,
                                   "micro_batch": args.chat_micro, "data": "chat",
                                   "batches": chat_batches(lengths, args.chat_micro)})
                for point in points:
                    found = estimate(ModelShape.from_config(config),
                                     setup_for(point, lengths, args.backend, not args.dry_run))
                    point.update(estimate_bytes=found.torch_peak_bytes, estimate_breakdown=found.breakdown,
                                 estimate_peak_at=found.peak_at, estimate_tokens_per_second=found.tokens_per_second,
                                 tokens=sum(point["batches"][-1]) if point["data"] == "chat" else point["micro_batch"] * args.seq)
                out.append({"shape": shape, "weights": weights, "checkpointing": checkpointing, "seq": args.seq,
                            "backend": args.backend, "vocab": config["vocab_size"], "points": points})
    return out


def run_group(group: dict, dry_run: bool, timeout: float) -> list[dict]:
    spec = {**group, "model": str(build(group["shape"], dry_run))}
    tag = f"{group['shape']}-{group['weights']}-{'ckpt' if group['checkpointing'] else 'nockpt'}-{time.time_ns()}"
    spec_path, out_path = WORK / f"memory-{tag}.spec.json", WORK / f"memory-{tag}.out.json"
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}:{os.environ.get('PYTHONPATH', '')}",
           "UNSLOTH_DISABLE_STATISTICS": "1"}
    try:
        proc = subprocess.run([sys.executable, __file__, "--child", str(spec_path), str(out_path)], env=env,
                              capture_output=True, text=True, timeout=timeout)
        failure = None if proc.returncode == 0 else f"exit {proc.returncode}: {proc.stderr[-1500:]}"
    except subprocess.TimeoutExpired:
        failure = f"timed out after {timeout:.0f} s"
    done = json.loads(out_path.read_text()) if out_path.is_file() else []
    finished = {(p["micro_batch"], p["data"]) for p in done}
    return done + [{**p, "error": failure or "not run"} for p in group["points"]
                   if (p["micro_batch"], p["data"]) not in finished]


def latest(points: list[dict]) -> list[dict]:
    """One entry per point: the last measured one, else the last one."""
    kept: dict[tuple, dict] = {}
    for p in points:
        key = (p["shape"], p["weights"], p["checkpointing"], p["data"], p["micro_batch"])
        if p.get("measured_bytes") or not kept.get(key, {}).get("measured_bytes"):
            kept[key] = p
    return list(kept.values())


def error_pct(point: dict) -> float | None:
    if not point.get("measured_bytes"):
        return None
    return 100 * (point["estimate_bytes"] / point["measured_bytes"] - 1)


def report(points: list[dict]) -> dict:
    print(f"\n{'shape':12} {'weights':7} {'ckpt':5} {'data':5} {'mb':>3} {'tokens':>6} {'measured':>9} "
          f"{'estimate':>9} {'error':>7}  {'tok/s':>7} {'est.':>7}  peak at")
    for p in points:
        measured = f"{p['measured_bytes'] / GIB:8.2f}G" if p.get("measured_bytes") else f"{'-':>9}"
        err = error_pct(p)
        rate = f"{p['tokens'] / p['step_seconds'][-1]:7.0f}" if p.get("step_seconds") else f"{'-':>7}"
        status = p.get("skipped") or p.get("error", "")[:60]
        print(f"{p['shape']:12} {p['weights']:7} {'on' if p['checkpointing'] else 'off':5} {p['data']:5} "
              f"{p['micro_batch']:3} {p['tokens']:6} {measured} {p['estimate_bytes'] / GIB:8.2f}G "
              f"{f'{err:+6.1f}%' if err is not None else '      -'}  {rate} {p['estimate_tokens_per_second']:7.0f}  "
              f"{p['estimate_peak_at']} {status}")
    errors = [abs(e) for e in map(error_pct, points) if e is not None]
    summary = {"points": len(points), "measured": len(errors),
               "within_15pct": sum(e <= 15 for e in errors), "max_abs_error_pct": max(errors, default=None),
               "mean_abs_error_pct": sum(errors) / len(errors) if errors else None}
    print(f"\n{summary['within_15pct']} of {summary['measured']} measured points within 15%"
          + (f"; largest error {summary['max_abs_error_pct']:.1f}%" if errors else ""))
    return summary


def environment(dry_run: bool) -> dict:
    from importlib import metadata

    versions = {}
    for name in ("torch", "transformers", "trl", "peft", "unsloth", "unsloth_zoo", "bitsandbytes"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    device = "cpu (dry run)"
    if not dry_run:
        proc = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                              capture_output=True, text=True)
        device = proc.stdout.strip() or "unknown"
    return {"device": device, "date": datetime.date.today().isoformat(), "versions": versions}


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        return child(sys.argv[2], sys.argv[3])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--shapes", default="qwen3-1.7b,llama-3-8b")
    parser.add_argument("--weights", default="16bit,4bit")
    parser.add_argument("--micro", default="1,4,8")
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=3, help="steps per fixed-length point (the peak needs the "
                                                              "optimizer state, created at the first step)")
    parser.add_argument("--chat-micro", type=int, default=8, help="micro-batch of the chat point (0: none)")
    parser.add_argument("--chat-rows", type=int, default=CHAT_ROWS)
    parser.add_argument("--backend", default="unsloth", choices=("unsloth", "hf"))
    parser.add_argument("--fresh", action="store_true", help="every point in its own process (slower)")
    parser.add_argument("--budget-seconds", type=float, default=360, help="start no new group after this")
    parser.add_argument("--timeout", type=float, default=240, help="per process")
    parser.add_argument("--dry-run", action="store_true", help="CPU: tiny shape, hf backend, no peaks measured")
    parser.add_argument("--merge", nargs="+", metavar="JSON", help="no run: merge the points of earlier results "
                                                                   "(e.g. two device calls) into --out, print the table")
    args = parser.parse_args()
    if args.merge:
        runs = [json.loads(Path(path).read_text()) for path in args.merge]
        merged = {"environment": runs[-1]["environment"], "method": runs[-1]["method"],
                  "commands": [r.get("command") for r in runs], "seconds": sum(r.get("seconds", 0) for r in runs),
                  "points": latest([p for r in runs for p in r["points"]])}
        merged["summary"] = report(merged["points"])
        Path(args.out).write_text(json.dumps(merged, indent=2))
        return None
    if args.dry_run:
        args.shapes, args.weights, args.backend, args.seq = "tiny", "32bit", "hf", 64
        args.micro, args.chat_rows, args.chat_micro, args.steps = "1,2", 16, 2, 2
    start = time.monotonic()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    earlier = json.loads(out.read_text())["points"] if out.is_file() else []  # a second call adds its points
    results: dict = {"environment": environment(args.dry_run), "command": " ".join(sys.argv), "points": earlier,
                     "method": "torch.cuda.max_memory_allocated over the point's steps, peak counter reset before it; "
                               "estimate: slothctl.memory estimate(...).torch_peak_bytes"}
    for group in groups(args):
        if time.monotonic() - start > args.budget_seconds:
            results["points"] += [{**p, "skipped": "device-time budget of this run spent"} for p in group["points"]]
            continue
        parts = [{**group, "points": [p]} for p in group["points"]] if args.fresh else [group]
        for part in parts:
            for point in run_group(part, args.dry_run, args.timeout):
                point.pop("batches", None)
                point["error_pct"] = error_pct(point)
                results["points"].append(point)
                print(json.dumps({k: point.get(k) for k in ("shape", "weights", "checkpointing", "data", "micro_batch",
                                                            "measured_bytes", "estimate_bytes", "error_pct",
                                                            "skipped", "error")}), flush=True)
        out.write_text(json.dumps(results, indent=2))
    results["seconds"] = time.monotonic() - start
    results["points"] = latest(results["points"])
    results["summary"] = report(results["points"])
    out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
