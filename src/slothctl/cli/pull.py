"""`slothctl pull`: copy a run folder from the runs volume of `--remote modal` into the local runs folder."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from slothctl.cli.commands import examples
from slothctl.cli.common import DEFAULT_CONFIG, ConfigOption, JsonOption, QuietOption, SetOption, load_config, start


@examples(("slothctl pull", "copy this project's run from the runs volume (adapter, metrics, summary)"),
          ("slothctl pull my-run --checkpoints", "another run, with its checkpoints, to continue training here"))
def pull(
    run: Annotated[Optional[str], typer.Argument(metavar="RUN", help="Run name (default: [output] name).",
                                                 show_default=False)] = None,
    checkpoints: Annotated[bool, typer.Option(
        "--checkpoints", help="Also copy the complete checkpoints (to continue training here).")] = False,
    force: Annotated[bool, typer.Option(
        "--force", help="Replace a local run folder that holds a run of another config.")] = False,
    config: ConfigOption = DEFAULT_CONFIG,
    sets: SetOption = None,
    json_mode: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Download a run folder from the [remote] runs volume, so chat, merge, export and push work on it here.

    Copies runs/<name>/: adapter, metrics, summary, and merged/ and gguf/ when they exist."""
    out = start(json_mode, quiet)
    cfg = load_config(config, sets)
    from slothctl.remote.modal_app import pull_run

    name = run or cfg.output.name
    result = pull_run(cfg.remote.volume, name, cfg.run_dir.parent, checkpoints=checkpoints, force=force,
                      emit=out.event)
    left = f"; left on the volume: {', '.join(result.left)} (--checkpoints copies them)" if result.left else ""
    chat = "slothctl chat" + ("" if name == cfg.output.name else f" --set output.name={name}")
    out.result({"event": "done", **result.to_json()},
               [("Pulled", "green"), f" {len(result.files)} files ({result.bytes / 1e6:,.1f} MB) into "
                                     f"{result.run_dir}{left}\nNext: {chat}"])
