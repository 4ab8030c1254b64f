"""`slothctl train`: train the LoRA adapter the project file describes."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from slothctl.cli.common import DEFAULT_CONFIG, ConfigOption, JsonOption, SetOption, load_config, start
from slothctl.cli.progress import TrainView


def train(
    config: ConfigOption = DEFAULT_CONFIG,
    sets: SetOption = None,
    max_steps: Annotated[Optional[int], typer.Option("--max-steps", min=1, help="Stop after N steps "
                                                     "(same as --set train.max_steps=N).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the resolved config and stop.")] = False,
    json_mode: JsonOption = False,
) -> None:
    """Train a LoRA adapter: checkpoints, adapter/ and summary.json go to runs/<name>/."""
    out = start(json_mode)
    cfg = load_config(config, sets, [f"train.max_steps={max_steps}"] if max_steps else None)
    if dry_run:
        from slothctl.config import to_toml

        out.result({"config": cfg.to_dict(), "run_dir": str(cfg.run_dir)}, to_toml(cfg))
        return
    from slothctl.training import train as run_training

    with TrainView(out) as view:
        result = run_training(cfg, view)
    out.result({"event": "done", **result.to_json()},
               f"[green]Done[/]: {result.steps} steps, loss {result.first_loss:.4f} → {result.final_loss:.4f}, "
               f"{result.tokens_per_s:,.0f} tok/s, {result.seconds:.0f}s\nAdapter: {result.adapter}\n"
               f"Next: slothctl chat")
