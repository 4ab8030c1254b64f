"""Benchmark of the data path at scale (issue 13): `data inspect` and `train --max-steps 1` on
100,000 generated ShareGPT rows and on 1,000, each in a fresh process, as a user runs them.

    python bench/data_scale.py                                # 1,000 and 100,000 rows
    python bench/data_scale.py --sizes 1000,20000 --keep /tmp/scale --out bench/results/data_scale.json
    python bench/data_scale.py --until-training-starts --omp-threads 1   # on a busy machine

Rows: 1-3 human/gpt exchanges (30% with a system prompt) of 1-8 and 2-21 sentences (the generator
of bench/data_inspect.py, seeded): about 490 tokens a row, median ~430, 49 M tokens at 100k rows
with the embedded model's chat template. The model is the embedded SmolLM2-135M (CPU, defaults).

Measured, interleaved by size, each in a fresh process:
  inspect     `slothctl data inspect FILE --json`: wall time and peak RSS (it fills a data cache of its
              own: `data inspect` stores the tokenized rows where `train` finds them)
  train miss  `slothctl train --max-steps 1 --json` with an empty data cache
  train hit   the same again in a new run folder: the data cache has the entry
  tokenizer   the `tokenizers` library alone (all cores, chunks of 2,048 rows, as slothctl called it
              before data/fast_bpe.py) on the same conversations written out as ChatML text, timed
              inside a fresh process after the rows are read: the floor under inspect until tiktoken
              took over byte-level BPE tokenizers
For train, seconds from launch to: the formatted data (the cache event), the start of training (the
"start" event: the first step begins; this is "time to the first step"), the end of the first step;
the model load (from "Loading" to "Training"); the peak RSS. Peak RSS is the child's ru_maxrss
(os.wait4): its largest resident size, file pages it maps included. CPU seconds (user + system) are
reported too; wall times mean little on a busy machine, so the load average is printed as well.
On CPU, one step of two ~1,000-token rows of the 135M model takes about a minute of CPU: it is the
model's cost, not the data's, and `--until-training-starts` leaves it out.

Children run without TOKENIZERS_PARALLELISM (a user's shell does not set it) and with this
checkout's src/ first on PYTHONPATH; the model caches ($SLOTHCTL_CACHE, $HF_HOME) are shared.
Measure on a quiet machine: with other processes busy, torch's spinning CPU threads made one
training step take minutes here (--omp-threads 1 avoids that, at the price of one core).

Targets (2-core machine): inspect <= 30 s at 100k rows; training starts <= 90 s after launch on a miss
and <= 20 s plus the model load on a hit; train's peak RSS at 100k rows <= 1.5 GB above its peak at
1k rows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from data_inspect import generate  # noqa: E402

MODEL = "embedded:smollm2-135m"
SHAPE = {"human_sentences": (1, 8), "gpt_sentences": (2, 21)}
TARGETS = {"inspect_s": 30.0, "miss_first_step_s": 90.0, "hit_first_step_minus_load_s": 20.0,
           "train_rss_growth_gb": 1.5}


OMP_THREADS: str | None = None  # --omp-threads: OMP_NUM_THREADS of the children (unset: torch's default)


def child_env(data_cache: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TOKENIZERS_PARALLELISM"}
    if OMP_THREADS:
        env["OMP_NUM_THREADS"] = OMP_THREADS
    env["PYTHONPATH"] = f"{REPO / 'src'}:{env.get('PYTHONPATH', '')}".rstrip(":")
    env["SLOTHCTL_DATA_CACHE"] = str(data_cache)
    return env


def peak_rss_so_far(pid: int) -> float | None:
    """A running process's peak resident size until now (VmHWM), in GB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 2**20, 3)
    except OSError:
        pass
    return None


def run_timed(command: list[str], cwd: Path, env: dict, stop_at_start: bool = False) -> dict:
    """Run a command; the arrival time of each stdout line (seconds since start), peak RSS (also as it
    was when training started), CPU seconds. With `stop_at_start` the child is killed once training
    starts."""
    load = round(os.getloadavg()[0], 2)  # other processes on the machine: wall times mean little when high
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines, rss_at_start = [], None
    for line in proc.stdout:
        lines.append((time.perf_counter() - started, line))
        if line.startswith('{"event": "start"'):
            rss_at_start = peak_rss_so_far(proc.pid)
            if stop_at_start:
                proc.kill()
                break
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    if proc.returncode != 0 and not (stop_at_start and rss_at_start is not None):
        raise SystemExit(f"{' '.join(command)} failed ({proc.returncode}):\n{stderr[-3000:]}")
    events = []
    for at, line in lines:
        if line.startswith("{"):
            events.append((at, json.loads(line)))
    return {"seconds": round(seconds, 2), "peak_rss_gb": round(usage.ru_maxrss / 2**20, 3),
            "peak_rss_before_training_gb": rss_at_start, "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
            "load_average_before": load,
            "events": events}


def inspect(path: Path, work: Path) -> dict:
    command = [sys.executable, "-m", "slothctl", "data", "inspect", str(path), "--model", MODEL, "--json"]
    # inspect stores what it tokenized in the data cache (a train after it is a hit): its own cache
    # here, so that the train runs below still start with a miss
    result = run_timed(command, work, child_env(work / f"inspect-cache-{path.stem}"))
    result.pop("peak_rss_before_training_gb")
    report = result.pop("events")[-1][1]
    return {**result, "rows": report["rows"], "tokens": report["tokens"]["total"],
            "median_tokens": report["tokens"]["p50"]}


TOKENIZER_ONLY = """
import json, os, resource, sys, time
os.environ["TOKENIZERS_PARALLELISM"] = "true"
from tokenizers import Tokenizer
from slothctl.models import ensure_embedded
tokenizer = Tokenizer.from_file(str(ensure_embedded("smollm2-135m") / "tokenizer.json"))
texts = ["".join(f"<|im_start|>{turn['from']}\\n{turn['value']}<|im_end|>\\n" for turn in json.loads(line)["conversations"])
         for line in open(sys.argv[1], encoding="utf-8")]
usage = resource.getrusage(resource.RUSAGE_SELF)
cpu, started, tokens = usage.ru_utime + usage.ru_stime, time.perf_counter(), 0
for start in range(0, len(texts), 2048):
    tokens += sum(len(e.ids) for e in tokenizer.encode_batch_fast(texts[start:start + 2048], add_special_tokens=False))
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"seconds": round(time.perf_counter() - started, 2),
                  "cpu_s": round(usage.ru_utime + usage.ru_stime - cpu, 1), "tokens": tokens}))
"""


def tokenizer_only(path: Path, work: Path) -> dict:
    """`tokenizers`' own time on these conversations: what a data path built on it cannot beat."""
    proc = subprocess.run([sys.executable, "-c", TOKENIZER_ONLY, str(path)], cwd=work, env=child_env(work / "unused"),
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def project(path: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "slothctl.toml").write_text(f'[model]\nname = "{MODEL}"\n[data]\nsource = "{path}"\n'
                                          '[output]\nname = "bench"\n')
    return folder


def train(folder: Path, data_cache: Path, stop_at_start: bool) -> dict:
    shutil.rmtree(folder / "runs", ignore_errors=True)
    result = run_timed([sys.executable, "-m", "slothctl", "train", "--max-steps", "1", "--json"], folder,
                       child_env(data_cache), stop_at_start)
    events = result.pop("events")

    def first(test) -> float | None:
        return next((round(at, 2) for at, event in events if test(event)), None)

    cache = next(event["cache"] for _, event in events if event.get("cache"))
    loading = first(lambda e: e.get("message", "").startswith("Loading "))
    training = first(lambda e: e.get("message", "").startswith("Training "))
    return {**result, "cache": cache, "data_ready_s": first(lambda e: bool(e.get("cache"))),
            "model_load_s": round(training - loading, 2) if loading and training else None,
            "training_start_s": first(lambda e: e.get("event") == "start"),
            "first_step_s": first(lambda e: e.get("event") == "step")}


def table(results: dict, sizes: list[int]) -> str:
    def step(run: dict) -> str:
        return f" · {run['first_step_s']:.1f} s" if run["first_step_s"] else ""

    def tokenizer_part(r: dict) -> str:
        return f" (`tokenizers` alone {r['tokenizer']['seconds']:.1f} s)" if "tokenizer" in r else ""

    rows = ["| rows (tokens) | `data inspect` | `train`, cache miss: data ready · training starts (· step done) "
            "| `train`, cache hit: data ready · training starts (· step done) · model load "
            "| `train` peak RSS, miss / hit |", "|---|---|---|---|---|"]
    for size in sizes:
        r = results[str(size)]
        i, miss, hit = r["inspect"], r["train_miss"], r["train_hit"]
        rows.append(
            f"| {size:,} ({i['tokens'] / 1e6:.2f} M) | {i['seconds']:.1f} s, {i['peak_rss_gb']:.2f} GB"
            f"{tokenizer_part(r)} | "
            f"{miss['data_ready_s']:.1f} s · {miss['training_start_s']:.1f} s{step(miss)} | "
            f"{hit['data_ready_s']:.1f} s · {hit['training_start_s']:.1f} s{step(hit)} · "
            f"{hit['model_load_s']:.1f} s | "
            f"{miss['peak_rss_gb']:.2f} / {hit['peak_rss_gb']:.2f} GB |")
    return "\n".join(rows)


def verdict(results: dict, small: int, large: int) -> dict:
    big, base = results[str(large)], results[str(small)]
    hit = big["train_hit"]

    def growth(key: str) -> float:
        return round(max(big["train_miss"][key], hit[key]) - max(base["train_miss"][key], base["train_hit"][key]), 3)

    measured = {"inspect_s": big["inspect"]["seconds"], "miss_first_step_s": big["train_miss"]["training_start_s"],
                "hit_first_step_minus_load_s": round(hit["training_start_s"] - (hit["model_load_s"] or 0), 2),
                "train_rss_growth_gb": growth("peak_rss_gb")}
    return {name: {"measured": value, "target": TARGETS[name], "met": value <= TARGETS[name]}
            for name, value in measured.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,100000", help="row counts, comma-separated (smallest first)")
    parser.add_argument("--keep", type=Path, help="keep the generated files here (reused when present)")
    parser.add_argument("--out", type=Path, help="also write the results JSON here")
    parser.add_argument("--omp-threads", help="OMP_NUM_THREADS for the children: on a busy machine torch's "
                        "spinning threads make a CPU step 10x slower; 1 avoids that (and is reported)")
    parser.add_argument("--until-training-starts", action="store_true",
                        help="stop each train once training starts (the step's own time and memory are left out)")
    args = parser.parse_args()
    global OMP_THREADS
    OMP_THREADS = args.omp_threads
    sizes = sorted(int(s) for s in args.sizes.split(","))
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="data-scale-") as tmp:
        work = Path(tmp)
        data_dir = args.keep or work / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        files = {}
        for size in sizes:
            files[size] = data_dir / f"sharegpt-{size}.jsonl"
            if not files[size].is_file():
                generate(files[size], size, seed=0, **SHAPE)
        results: dict = {str(size): {} for size in sizes}
        stop = args.until_training_starts
        phases = [("tokenizer", lambda size: tokenizer_only(files[size], work)),
                  ("inspect", lambda size: inspect(files[size], work)),
                  ("train_miss", lambda size: train(project(files[size], work / f"p{size}"), work / f"cache{size}",
                                                    stop)),
                  ("train_hit", lambda size: train(work / f"p{size}", work / f"cache{size}", stop))]
        for name, measure in phases:  # sizes side by side within each phase
            for size in sizes:
                results[str(size)][name] = measure(size)
                print(json.dumps({"rows": size, "phase": name, **results[str(size)][name]}), flush=True)
    summary = {"results": results, "targets": verdict(results, sizes[0], sizes[-1]) if len(sizes) > 1 else None,
               "until_training_starts": args.until_training_starts,
               "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "omp_threads": OMP_THREADS,
                           "load_average_before": [round(x, 2) for x in load_before],
                           "load_average_after": [round(x, 2) for x in os.getloadavg()]},
               "date": time.strftime("%Y-%m-%d"), "table": table(results, sizes)}
    print(json.dumps({k: v for k, v in summary.items() if k != "table"}, indent=1))
    print(summary["table"])
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
