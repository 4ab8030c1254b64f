"""Training speed and memory: slothctl against a hand-written Unsloth script and plain HF + PEFT.

For each model shape (SmolLM2-135M = the embedded model; Qwen3-1.7B and Llama-3-8B shapes built
from their published configs with random weights and the embedded tokenizer), at seq 2048, LoRA
r16 on all linear layers, gradient checkpointing, measured in one run on one machine:

    (a) slothctl train, unsloth backend     (b) raw Unsloth + TRL script (bench/raw_unsloth.py)
    (c) raw transformers + PEFT + TRL, sdpa  (d) slothctl train, hf backend
    (e) as (c), with transformers' own loss instead of TRL's fused LM head (bench/raw_hf.py --plain-loss)
    (f) a hand-written Unsloth training loop, no TRL, no Trainer (bench/raw_loop.py)
    (g) as (a) with batching = "length_grouped" and optim = "adamw_8bit": padded batches, which on rows
        of one length carry no attention mask (trainer.MasklessWhenFull), with the 8-bit optimizer
    (j) as (g) with optim = "adamw_torch_fused": one fused AdamW over all LoRA weights instead of
        bitsandbytes' 8-bit AdamW, which launches its kernels weight by weight (since 2026-12-03 both
        are what (a) gets on rows of one length: `auto` chooses them)
    (k) as (j) with batching = "padding_free": what `auto` chose for rows of one length until then
    (l) as (a) with optim = "adamw_8bit": `auto`'s optimizer until then
    (m) slothctl's defaults, but for batch_size and the steps: micro_batch = "auto" plans the layout
        from the memory estimate (with room on the GPU: the whole batch at once, gradient checkpointing
        off), where (a) keeps the notebook's layout (micro-batch = batch_size, checkpointing on) to
        compare the trainers at the same memory

A letter given twice (--variants abab) runs that variant again, interleaved; its tokens/s is then
the mean of the runs (and every run's value is kept), to show how much runs vary.

Tokens/s is steady state (after --warmup steps), peak VRAM is torch's max allocated memory.
Then, on variable-length chat data (log-normal lengths, 50-2,000 tokens), one epoch per batching
strategy, real (non-pad) tokens/s and mean loss per token: slothctl's choices against Unsloth's
own default (auto padding-free).

    python bench/train_speed.py --out bench/results/train_speed-DEVICE-DATE.json [--shapes ...] [--varlen]
    python bench/train_speed.py --out ... --shapes qwen3-1.7b --variants ab --profile  # + kernel profiles of a, b
    python bench/train_speed.py --out ... --shapes qwen3-1.7b,llama-3-8b --variants abf   # a/f, a/b
    python bench/train_speed.py --out ... --shapes "" --scale-rows 1000,10000 --scale-batches 2x4,4x4

--scale-rows: at scale, slothctl's defaults against the notebook-style script on generated ShareGPT
rows (bench/data_scale.py's generator: 1-3 exchanges, median ~430 tokens), Qwen3-1.7B shape, for
each effective batch BSxGA (batch_size x gradient_accumulation_steps; 2x4 is both defaults):
--scale-steps optimizer steps, real tokens/s after --scale-warmup of them (the rows only need to
exist: the run does not go through all of them). The two alternate which runs first.

--cpu is a dry run of every code path here on a machine without a GPU: the embedded model, the hf
backend and the reference scripts' --backend hf, tiny sequences and step counts. Its numbers mean
nothing; it shows that a device run will go through.

Every variant runs in its own process (Unsloth patches transformers process-wide). Prints the
ratios a/b and a/c, and MFU with the FLOP formula of bench/_shared.py:flops_per_token.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from _shared import SHAPES, flops_per_token, peak_tflops, step_profile, write_chat_rows, write_text_rows  # noqa: E402,E501
from data_inspect import generate as generate_sharegpt  # noqa: E402

WORK = Path(os.environ.get("BENCH_WORK", "/tmp/slothctl-bench"))
BATCH = {"smollm2-135m": 8, "qwen3-1.7b": 4, "llama-3-8b": 2}
SCALE_SHAPE = "qwen3-1.7b"
SHAREGPT = {"human_sentences": (1, 8), "gpt_sentences": (2, 21)}  # bench/data_scale.py's rows
CPU = False  # --cpu: the dry run (module docstring)


def embedded_folder() -> Path:
    sys.path.insert(0, str(REPO / "src"))
    from slothctl.models import ensure_embedded

    return ensure_embedded("smollm2-135m")


def shape_config(shape: str) -> dict:
    if shape == "smollm2-135m":
        return json.loads((embedded_folder() / "config.json").read_text())
    return SHAPES[shape]


def build_model(shape: str) -> Path:
    """A random-initialised model of the shape, saved once (bf16) with the embedded tokenizer (the
    embedded model itself in a --cpu dry run)."""
    if shape == "smollm2-135m" or CPU:
        return embedded_folder()
    target = WORK / "models" / shape
    if (target / "config.json").is_file():
        return target
    code = f"""
import json, shutil, torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
spec = {SHAPES[shape]!r}
config = AutoConfig.for_model(**spec)
config.bos_token_id, config.eos_token_id, config.pad_token_id = 1, 2, 0
torch.manual_seed(0)
with torch.device("cuda"):
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
model.save_pretrained({str(target)!r})
AutoTokenizer.from_pretrained({str(embedded_folder())!r}).save_pretrained({str(target)!r})
"""
    subprocess.run([sys.executable, "-c", code], check=True)
    return target


def slothctl_project(name: str, model: Path, data: Path, fmt: str, seq: int, bs: int, steps: int | None,
                     backend: str, batching: str = "padded", packing: bool = False, optim: str = "auto") -> Path:
    folder = WORK / "projects" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "slothctl.toml").write_text(f"""
[model]
name = "{model}"
max_seq_length = {seq}
backend = "{backend}"
[data]
source = "{data}"
format = "{fmt}"
[train]
batch_size = {bs}
gradient_accumulation_steps = 1
micro_batch = {bs}
max_steps = {steps or 0}
epochs = 1.0
save_steps = 0
logging_steps = 1
gradient_checkpointing = true
batching = "{batching}"
packing = {"true" if packing else "false"}
optim = "{optim}"
[output]
name = "bench"
""")
    return folder


CHILD_TIMEOUT_S = int(os.environ.get("BENCH_CHILD_TIMEOUT_S", "420"))  # a hung child costs this, not the lease
# BENCH_CPUS=0-7: every child on the same cores (taskset). The steps are bound by kernel launches from one
# CPU thread, and two runs of one variant differed by up to 15% on 2026-12-03 (README "Speed").
PIN = ["taskset", "-c", os.environ["BENCH_CPUS"]] if os.environ.get("BENCH_CPUS") else []
DIAGNOSE = {"TORCH_LOGS": "recompiles"}  # count torch.compile recompilations (one stderr line each)


def recompiles(stderr: str) -> int:
    return sum(1 for line in stderr.splitlines() if "Recompiling function" in line)


def fresh_run_env(fresh_project: Path, **extra: str) -> dict:
    """Remove `fresh_project`'s earlier runs; return the environment its `python -m slothctl` child needs."""
    shutil.rmtree(fresh_project / "runs", ignore_errors=True)
    return {**os.environ, "PYTHONPATH": f"{REPO / 'src'}:{os.environ.get('PYTHONPATH', '')}", **extra}


def run_slothctl(project: Path, warmup: int, diagnose: bool = False) -> dict:
    """Run `slothctl train --json` in a fresh process; steady-state tokens/s from its step events."""
    env = fresh_run_env(project, **(DIAGNOSE if diagnose else {}))
    try:
        proc = subprocess.run([*PIN, sys.executable, "-m", "slothctl", "train", "--json"], cwd=project, env=env,
                              capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        return {"error": f"timed out after {CHILD_TIMEOUT_S} s: {(exc.stderr or b'')[-2000:]!r}"}
    if proc.returncode != 0:
        return {"error": proc.stderr[-2000:]}
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    steps = [e for e in events if e["event"] == "step"]
    summary = json.loads((project / "runs" / "bench" / "summary.json").read_text())
    first, last = steps[warmup - 1], steps[-1]
    result = {"tokens_per_s": (last["tokens"] - first["tokens"]) / (last["elapsed"] - first["elapsed"]),
              "epoch_tokens_per_s": summary["train_tokens"] / summary["train_seconds"],
              "peak_vram_gb": summary["peak_vram_gb"], "mean_loss": sum(e["loss"] for e in steps) / len(steps),
              "steps": len(steps), "backend": summary["backend"],
              "batching": next((e.get("batching") for e in events if e["event"] == "start"), None),
              "layout": next(({k: e.get(k) for k in ("micro_batch", "grad_accum", "gradient_checkpointing", "source")}
                              for e in events if e["event"] == "layout"), None)}
    if diagnose:
        elapsed = [e["elapsed"] for e in steps]
        result.update(step_profile([b - a for a, b in zip(elapsed, elapsed[1:])]),
                      recompiles=recompiles(proc.stderr))
    return result


def run_script(script: str, *args: str, diagnose: bool = False) -> dict:
    out = WORK / f"{script}-{time.time_ns()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **(DIAGNOSE if diagnose else {})}
    backend = ["--backend", "hf"] if CPU and script in ("raw_unsloth.py", "raw_loop.py") else []
    try:
        proc = subprocess.run([*PIN, sys.executable, str(HERE / script), *args, str(out), *backend],
                              capture_output=True, text=True, cwd=HERE, env=env, timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        return {"error": f"timed out after {CHILD_TIMEOUT_S} s: {(exc.stderr or b'')[-2000:]!r}"}
    if proc.returncode != 0:
        return {"error": proc.stderr[-2000:]}
    result = json.loads(out.read_text())
    if diagnose:
        result["recompiles"] = recompiles(proc.stderr)
    return result


NAMES = {"a": "a_slothctl_unsloth", "b": "b_raw_unsloth", "c": "c_raw_hf", "d": "d_slothctl_hf",
         "e": "e_raw_hf_plain_loss", "f": "f_raw_loop",
         "g": "g_slothctl_padded", "j": "j_slothctl_padded_fused", "k": "k_slothctl_padding_free_fused",
         "l": "l_slothctl_8bit", "m": "m_slothctl_defaults"}


# the slothctl variants: (batching, optim) in their projects
SLOTHCTL = {"a": ("auto", "auto"), "d": ("auto", "auto"), "g": ("length_grouped", "adamw_8bit"),
            "j": ("length_grouped", "adamw_torch_fused"), "k": ("padding_free", "adamw_torch_fused"),
            "l": ("auto", "adamw_8bit")}


def fixed_length(shape: str, seq: int, steps: int, warmup: int, variants: str) -> dict:
    model = build_model(shape)
    bs = BATCH[shape]
    data = fixed_data(seq, steps)
    common = ("--seq", str(seq), "--bs", str(bs), "--steps", str(steps), "--warmup", str(warmup))
    runs: dict[str, list[dict]] = {}
    for variant in variants:
        if variant in SLOTHCTL:
            batching, optim = SLOTHCTL[variant]
            backend = "unsloth" if variant != "d" and not CPU else "hf"
            result = run_slothctl(slothctl_project(f"{shape}-{variant}", model, data, "text", seq, bs, steps,
                                                   backend, batching=batching, optim="auto" if CPU else optim),
                                  warmup)
        elif variant == "m":
            result = run_slothctl(defaults_project(f"{shape}-m", model, data, bs, 1, steps, seq), warmup)
        elif variant == "b":
            result = run_script("raw_unsloth.py", str(model), str(data), *common)
        elif variant == "f":
            result = run_script("raw_loop.py", str(model), str(data), *common)
        else:
            result = run_script("raw_hf.py", str(model), str(data), *common,
                                *(["--plain-loss"] if variant == "e" else []))
        runs.setdefault(NAMES[variant], []).append(result)
        print(shape, variant, json.dumps(result), flush=True)
    results = {name: merge_runs(found) for name, found in runs.items()}
    summary = {"batch_size": bs, "seq": seq, "flops_per_token": flops_per_token(shape_config(shape), seq),
               "results": results}
    a = results.get(NAMES["a"], {})
    for other in "bcfgjklm":
        o = results.get(NAMES[other], {})
        if "tokens_per_s" in a and "tokens_per_s" in o:
            summary[f"a_over_{other}_tokens"] = a["tokens_per_s"] / o["tokens_per_s"]
            if a.get("peak_vram_gb") and o.get("peak_vram_gb"):
                summary[f"a_over_{other}_vram"] = a["peak_vram_gb"] / o["peak_vram_gb"]
    rate = {letter: results.get(name, {}).get("tokens_per_s") for letter, name in NAMES.items()}
    summary["ratios"] = {f"{mine}/{theirs}": rate[mine] / rate[theirs]  # (a)'s are the a_over_* above
                         for mine in (*SLOTHCTL, "m") if mine != "a" for theirs in "bcef" if rate[mine] and rate[theirs]}
    return summary


def fixed_data(seq: int, steps: int) -> Path:
    """Text rows longer than `seq` tokens (so every row is truncated to it), enough for `steps`."""
    rows = max(BATCH.values()) * (steps + 4)
    data = WORK / "data" / f"text-{seq}-{rows}.jsonl"
    if not data.exists():
        write_text_rows(data, rows=rows, words_per_row=seq + 64)
    return data


def merge_runs(found: list[dict]) -> dict:
    """One variant's result; repeated runs give the mean tokens/s and keep each run's value."""
    ok = [r for r in found if "tokens_per_s" in r]
    if len(found) == 1 or not ok:
        return found[0]
    return {**ok[-1], "tokens_per_s": sum(r["tokens_per_s"] for r in ok) / len(ok),
            "runs_tokens_per_s": [r["tokens_per_s"] for r in ok],
            "peak_vram_gb": max((r["peak_vram_gb"] or 0 for r in ok), default=None)}


def profile_pair(shape: str, seq: int, out_dir: Path, steps: int = 16) -> None:
    """Kernel-level profiles of (a), (b) and (f), the last four of `steps` steps, and their comparison."""
    model, bs = build_model(shape), BATCH[shape]
    data = fixed_data(seq, steps + 2)
    profiler = [sys.executable, str(HERE / "profile_steps.py")]
    project = slothctl_project(f"{shape}-a", model, data, "text", seq, bs, steps, "unsloth", batching="auto")
    env = fresh_run_env(project)
    out_dir.mkdir(parents=True, exist_ok=True)
    script = ("--seq", str(seq), "--bs", str(bs), "--steps", str(steps), "--warmup", "3")
    names = []
    for name, command, cwd in (
            ("a_slothctl", ["-m", "slothctl", "train", "--json"], project),
            ("b_raw", [str(HERE / "raw_unsloth.py"), str(model), str(data), str(WORK / "profile-raw.json"), *script],
             HERE),
            ("f_loop", [str(HERE / "raw_loop.py"), str(model), str(data), str(WORK / "profile-loop.json"), *script],
             HERE)):
        proc = subprocess.run([*profiler, str(out_dir / f"{shape}-{name}.json"), "--steps",
                               f"{steps - 4}:{steps}", "--", *command],
                              cwd=cwd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            print("profile", name, "failed:", proc.stderr[-2000:], flush=True)
            continue
        names.append(name)
    subprocess.run([*profiler, "--compare", *(str(out_dir / f"{shape}-{name}.json") for name in names)])


def variable_length(rows: int, strategies: list[str]) -> dict:
    """Qwen3-1.7B shape, bs 8, one epoch of chat rows: real tokens/s per batching strategy."""
    shape, bs, seq = "qwen3-1.7b", 8, 2048
    model = build_model(shape)
    data = WORK / "data" / f"chat-{rows}.jsonl"
    if not data.exists():
        write_chat_rows(data, rows)
    results = {}
    for strategy in strategies:
        if strategy == "unsloth_default":
            results[strategy] = run_script("raw_unsloth.py", str(model), str(data), "--chat", "--bs", str(bs),
                                           diagnose=True)
        else:
            packing = strategy == "packed"
            batching = "auto" if packing else strategy
            project = slothctl_project(f"varlen-{strategy}", model, data, "messages", seq, bs, None, "unsloth",
                                       batching=batching, packing=packing)
            results[strategy] = run_slothctl(project, warmup=3, diagnose=True)
        print("varlen", strategy, json.dumps(results[strategy]), flush=True)
    out = {"shape": shape, "rows": rows, "batch_size": bs, "results": results}
    base = results.get("unsloth_default", {}).get("tokens_per_s")
    if base:
        out["speedup_over_unsloth_default"] = {
            k: v.get("epoch_tokens_per_s", v.get("tokens_per_s", 0)) / base for k, v in results.items()}
    return out


def sharegpt_rows(rows: int) -> Path:
    """bench/data_scale.py's generated ShareGPT rows (seeded), written once."""
    data = WORK / "data" / f"sharegpt-{rows}.jsonl"
    if not data.exists():
        data.parent.mkdir(parents=True, exist_ok=True)
        generate_sharegpt(data, rows, seed=0, **SHAREGPT)
    return data


def defaults_project(name: str, model: Path, data: Path, bs: int, ga: int, steps: int, seq: int) -> Path:
    """A slothctl project with its defaults, but for the batch, the steps and no checkpoint."""
    folder = WORK / "projects" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "slothctl.toml").write_text(
        f'[model]\nname = "{model}"\n' + (f"max_seq_length = {seq}\n" if seq != 2048 else "")
        + f'[data]\nsource = "{data}"\n'
        + f"[train]\nbatch_size = {bs}\ngradient_accumulation_steps = {ga}\nmax_steps = {steps}\nsave_steps = 0\n"
        + '[output]\nname = "bench"\n')
    return folder


def at_scale(rows_list: list[int], batches: list[tuple[int, int]], steps: int, warmup: int, seq: int,
             save=lambda entries: None) -> list[dict]:
    """slothctl's defaults against the notebook-style script on ShareGPT rows, per (rows, BSxGA);
    `save` gets the entries so far after each one."""
    model = build_model(SCALE_SHAPE)
    out: list[dict] = []
    for index, (rows, (bs, ga)) in enumerate((r, b) for r in rows_list for b in batches):
        data = sharegpt_rows(rows)
        order = ("unsloth_default", "slothctl") if index % 2 == 0 else ("slothctl", "unsloth_default")
        results = {}
        for name in order:
            if name == "unsloth_default":
                results[name] = run_script("raw_unsloth.py", str(model), str(data), "--chat", "--seq", str(seq),
                                           "--bs", str(bs), "--ga", str(ga), "--steps", str(steps),
                                           "--warmup", str(warmup), diagnose=True)
            else:
                project = defaults_project(f"scale-{rows}-{bs}x{ga}", model, data, bs, ga, steps, seq)
                results[name] = run_slothctl(project, warmup=warmup, diagnose=True)
            print("scale", rows, f"{bs}x{ga}", name, json.dumps(results[name]), flush=True)
        entry = {"shape": SCALE_SHAPE, "rows": rows, "batch_size": bs, "gradient_accumulation_steps": ga,
                 "effective_batch": bs * ga, "steps": steps, "warmup": warmup, "order": list(order),
                 "results": results}
        mine, theirs = results["slothctl"].get("tokens_per_s"), results["unsloth_default"].get("tokens_per_s")
        if mine and theirs:
            entry["speedup"] = mine / theirs
        out.append(entry)
        save(out)
    return out


def environment() -> dict:
    import torch

    versions = {}
    for name in ("torch", "transformers", "trl", "peft", "unsloth", "unsloth_zoo", "bitsandbytes", "datasets",
                 "flash_attn", "xformers"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {"device": device, "date": datetime.date.today().isoformat(), "versions": versions,
            "peak_tflops_bf16": peak_tflops(device)}


def report(results: dict) -> None:
    peak = results["environment"]["peak_tflops_bf16"]
    print(f"\n{results['environment']['device']}, {results['environment']['date']}")
    print(f"{'shape':14} {'variant':22} {'tok/s':>9} {'VRAM GiB':>9} {'MFU':>6}")
    for shape, data in results.get("fixed", {}).items():
        for variant, r in data["results"].items():
            if "tokens_per_s" not in r:
                print(f"{shape:14} {variant:22} FAILED: {r.get('error', '')[-200:]}")
                continue
            mfu = r["tokens_per_s"] * data["flops_per_token"] / (peak * 1e12) if peak else None
            vram = f"{r['peak_vram_gb']:.2f}" if r.get("peak_vram_gb") else "-"
            print(f"{shape:14} {variant:22} {r['tokens_per_s']:9.0f} {vram:>9} "
                  f"{f'{mfu:.1%}' if mfu else '-':>6}")
        for ratio in (key for key in data if key.startswith("a_over_")):  # as fixed_length wrote them
            print(f"{'':14} {ratio:22} {data[ratio]:9.3f}")
        for pair, ratio in data.get("ratios", {}).items():
            print(f"{'':14} {'tok/s ' + pair:22} {ratio:9.3f}")
    if "varlen" in results:
        print("\nvariable-length chat (one epoch, real tokens/s, speed-up over Unsloth's default):")
        for k, r in results["varlen"]["results"].items():
            speed = results["varlen"].get("speedup_over_unsloth_default", {}).get(k)
            rate = r.get("epoch_tokens_per_s", r.get("tokens_per_s"))
            loss = r.get("mean_loss", r.get("train_loss"))
            print(f"  {k:18} {rate or 0:9.0f} tok/s  loss {loss or 0:.4f}  x{speed or 0:.2f}")
    if results.get("scale"):
        print("\nat scale: slothctl defaults vs the notebook-style script (real tokens/s after warm-up):")
        for e in results["scale"]:
            mine, theirs = (e["results"][k].get("tokens_per_s") for k in ("slothctl", "unsloth_default"))
            batching = e["results"]["slothctl"].get("batching", {}).get("strategy", "?")
            print(f"  {e['rows']:>7,} rows  batch {e['batch_size']}x{e['gradient_accumulation_steps']}  "
                  f"slothctl {mine or 0:8.0f} ({batching})  notebook {theirs or 0:8.0f}  "
                  f"x{e.get('speedup', 0):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--shapes", default="smollm2-135m,qwen3-1.7b,llama-3-8b")
    parser.add_argument("--variants", default="abcd")
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=14)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--varlen", default="", help="comma list: unsloth_default,auto,padded,length_grouped,"
                                                     "padding_free,packed")
    parser.add_argument("--varlen-rows", type=int, default=512)
    parser.add_argument("--profile", action="store_true", help="also profile (a), (b) and (f) kernel by kernel "
                                                              "on each shape (JSON beside --out)")
    parser.add_argument("--scale-rows", default="", help="comma list of row counts, e.g. 1000,10000")
    parser.add_argument("--scale-batches", default="2x4,4x4", help="BSxGA list (batch size x accumulation)")
    parser.add_argument("--scale-steps", type=int, default=12)
    parser.add_argument("--scale-warmup", type=int, default=3)
    parser.add_argument("--cpu", action="store_true", help="dry run without a GPU (module docstring)")
    args = parser.parse_args()
    global CPU, WORK
    CPU = args.cpu
    if CPU:
        WORK = WORK / "cpu"
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    results["environment"] = environment()
    for shape in filter(None, args.shapes.split(",")):
        results.setdefault("fixed", {})[shape] = fixed_length(shape, args.seq, args.steps, args.warmup,
                                                              args.variants)
        out.write_text(json.dumps(results, indent=2))
        if args.profile:
            profile_pair(shape, args.seq, out.parent / f"{out.stem}-profiles")
    if args.varlen:
        results["varlen"] = variable_length(args.varlen_rows, args.varlen.split(","))
    if args.scale_rows:
        batches = [tuple(int(n) for n in b.split("x")) for b in args.scale_batches.split(",")]
        out.parent.mkdir(parents=True, exist_ok=True)

        def save(entries: list[dict]) -> None:
            out.write_text(json.dumps({**results, "scale": entries}, indent=2))

        results["scale"] = at_scale([int(r) for r in args.scale_rows.split(",")], batches, args.scale_steps,
                                    args.scale_warmup, args.seq, save)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    report(results)


if __name__ == "__main__":
    main()
