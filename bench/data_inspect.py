"""Benchmark of `slothctl data inspect` on a generated ShareGPT file (issue target: 100,000 rows < 30 s).

    python bench/data_inspect.py                 # 100,000 rows, the embedded model's tokenizer
    python bench/data_inspect.py --rows 20000 --keep /tmp/sharegpt.jsonl --set data.num_proc=2

Rows are 1-3 human/gpt exchanges (30% with a system prompt) of a few sentences each: about 175
tokens a row with the embedded model's chat template (870 bytes of JSON), like common chat SFT
data. The command runs in a fresh process as a user would run it (start-up, reading, rendering,
tokenizing, masking, report); the time is wall time, so measure on a quiet machine (tokenizing is
most of it, and it uses every core).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_ROWS, TARGET_SECONDS = 100_000, 30.0
WORDS = ("the a sloth slow tree leaf branch eats sleeps climbs forest rain green moves hangs day night minutes hours "
         "why how what is are does do can will should would because therefore model data train token answer "
         "question please explain describe example python code list number").split()


def _sentence(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high))).capitalize() + "."


def generate(path: Path, rows: int, seed: int = 0, human_sentences: tuple[int, int] = (1, 3),
             gpt_sentences: tuple[int, int] = (1, 5)) -> None:
    """ShareGPT rows of 1-3 exchanges; each message is a few sentences (their count drawn from the
    given ranges)."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as handle:
        for _ in range(rows):
            turns = [{"from": "system", "value": _sentence(rng, 5, 15)}] if rng.random() < 0.3 else []
            for _ in range(rng.choice((1, 1, 2, 3))):
                turns.append({"from": "human", "value": " ".join(_sentence(rng, 4, 20)
                                                                  for _ in range(rng.randint(*human_sentences)))})
                turns.append({"from": "gpt", "value": " ".join(_sentence(rng, 5, 25)
                                                                for _ in range(rng.randint(*gpt_sentences)))})
            handle.write(json.dumps({"conversations": turns}) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=TARGET_ROWS)
    parser.add_argument("--model", default="embedded:smollm2-135m")
    parser.add_argument("--keep", type=Path, help="write the generated file here (reused if it exists)")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="passed on to data inspect")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.keep or Path(tmp) / "sharegpt.jsonl"
        if not path.is_file():
            generate(path, args.rows)
        command = [sys.executable, "-m", "slothctl", "data", "inspect", str(path), "--model", args.model, "--json",
                   "--set", "data.max_rows=0"] + [a for s in args.sets for a in ("--set", s)]
        started, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
        proc = subprocess.run(command, capture_output=True, text=True, env={**os.environ}, cwd=tmp)
        seconds = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu_seconds = after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime
    if proc.returncode != 0:
        sys.exit(f"data inspect failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    rows, tokens = report["rows"], report["tokens"]["total"]
    budget = TARGET_SECONDS * rows / TARGET_ROWS
    print(json.dumps({"rows": rows, "tokens": tokens, "seconds": round(seconds, 2),
                      "rows_per_s": round(rows / seconds), "tokens_per_s": round(tokens / seconds),
                      "target": f"{TARGET_ROWS} rows in {TARGET_SECONDS:.0f} s",
                      "time_vs_target": round(seconds / budget, 2), "meets_target": seconds <= budget,
                      "cpu_seconds": round(cpu_seconds, 1), "cpus": os.cpu_count(),
                      "load_average": [round(x, 2) for x in os.getloadavg()]}))


if __name__ == "__main__":
    main()
