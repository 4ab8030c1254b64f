"""Start-up of `slothctl --help` against `python -c "import typer, rich"` (issue target: at most 2x).

    python bench/cli_startup.py              # 21 interleaved rounds
    python bench/cli_startup.py --rounds 51 --also "train --help" --also "data inspect --help"

Every run is a fresh process; the commands take turns within each round so that load from other
work on the machine falls on all of them alike; the medians are compared. The console script next
to this Python (what a user types) is timed when it exists, else `python -m slothctl`.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

TARGET = 2.0


def slothctl() -> list[str]:
    script = Path(sys.executable).parent / "slothctl"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "slothctl"]


def seconds(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--also", action="append", default=[], metavar="ARGS",
                        help="another slothctl command line to time, e.g. 'train --help'")
    args = parser.parse_args()
    commands = {"import typer, rich": [sys.executable, "-c", "import typer, rich"],
                "python -c pass": [sys.executable, "-c", "pass"],
                "slothctl --help": slothctl() + ["--help"]}
    commands.update({f"slothctl {extra}": slothctl() + shlex.split(extra) for extra in args.also})
    for command in commands.values():  # warm the file cache and the .pyc files
        seconds(command)
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.rounds):
        for name, command in commands.items():
            times[name].append(seconds(command))
    baseline = statistics.median(times["import typer, rich"])
    print(f"{'command':<36} {'median':>9} {'vs import typer, rich':>22}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<36} {median * 1000:7.1f}ms {median / baseline:21.2f}x")
    ratio = statistics.median(times["slothctl --help"]) / baseline
    print(f"slothctl --help / import typer, rich = {ratio:.2f}x (target <= {TARGET:.1f}x: "
          f"{'met' if ratio <= TARGET else 'NOT met'})")


if __name__ == "__main__":
    main()
