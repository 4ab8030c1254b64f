"""`slothctl data inspect` and `slothctl data format`: see and prepare exactly what `train` will use."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from slothctl.cli.commands import epilog, examples, new_app, register
from slothctl.cli.common import DEFAULT_CONFIG, ConfigOption, JsonOption, QuietOption, SetOption, load_config, start

data_app = new_app(name="data", help="Look at the training data and format it once for train.", no_args_is_help=True,
                   epilog=epilog(("slothctl data inspect --show 2", "the project's data as train sees it, two rows shown"),
                                 ("slothctl data format", "tokenize once into the cache that train uses")))

SourceArgument = Annotated[Optional[Path], typer.Argument(
    help="Data file or folder to use instead of the project's data.source (relative to here).", show_default=False)]
ModelOption = Annotated[Optional[str], typer.Option(
    "--model", help="Model whose tokenizer and chat template to use (needed without a project file).")]
StrictOption = Annotated[bool, typer.Option(
    "--strict", help="Fail on rows that would be dropped (invalid, empty, nothing to train on).")]


def data_config(config: Path, sets: list[str] | None, source: Path | None, model: str | None):
    """The project config, with SOURCE and --model on top; without a project file, SOURCE + --model."""
    from slothctl import config as config_mod
    from slothctl.errors import UsageError

    if config.exists() or source is None:
        cfg = load_config(config, sets)
    elif model is None:
        raise UsageError(f"no project file {config} to take the model from",
                         "pass --model NAME (e.g. --model embedded:smollm2-135m), or --config PATH")
    else:
        raw = config_mod.apply_overrides({"model": {"name": model}, "data": {"source": str(source)}}, sets or [])
        cfg = config_mod.build(raw, "command line")
    if source is not None:
        from slothctl.data.sources import is_hub_id

        local = source.expanduser().exists() or not is_hub_id(str(source))
        cfg.data.source = os.path.abspath(source.expanduser()) if local else str(source)  # links stay links
    if model is not None:
        cfg.model.name = model
    return cfg


@examples(("slothctl data inspect", "the project's data, as train will see it"),
          ("slothctl data inspect chat.jsonl --model embedded:smollm2-135m --show 2",
           "any file, without a project; two rows with the trained tokens highlighted"),
          ("slothctl data inspect --strict --json", "fail on rows that would be dropped; the report as JSON"))
def inspect(
    source: SourceArgument = None,
    config: ConfigOption = DEFAULT_CONFIG,
    sets: SetOption = None,
    model: ModelOption = None,
    show: Annotated[int, typer.Option("--show", min=0, metavar="N",
                                      help="Render N examples with the trained tokens highlighted.")] = 0,
    strict: StrictOption = False,
    json_mode: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Report what the model will be trained on: format, roles, token lengths, truncation, mask, problems.

    The tokenized rows are stored in the data cache that train reads (as data format does), so a
    train after inspect starts on a cache hit."""
    out = start(json_mode, quiet, aside_events=True)
    cfg = data_config(config, sets, source, model)
    from slothctl.data.commands import inspect as inspect_data

    report = inspect_data(cfg, show=show, strict=strict or None, emit=out.event)
    from slothctl.cli.data_view import render_report

    out.result(report, render_report(report))


@examples(("slothctl data format", "format and tokenize the project's data into the cache"),
          ("slothctl data format --out review.jsonl", "also write the rendered texts, to read them"))
def format(  # noqa: A001 - the command's name
    source: SourceArgument = None,
    config: ConfigOption = DEFAULT_CONFIG,
    sets: SetOption = None,
    model: ModelOption = None,
    out_file: Annotated[Optional[Path], typer.Option("--out", metavar="FILE.jsonl",
                                                     help="Also write the rendered texts there, for review.")] = None,
    strict: StrictOption = False,
    json_mode: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Format and tokenize the data into the cache that train uses (a hit when nothing changed)."""
    out = start(json_mode, quiet, aside_events=True)
    cfg = data_config(config, sets, source, model)
    from slothctl.data.commands import format_data

    result = format_data(cfg, out=out_file, strict=strict or None, emit=out.event)
    from slothctl.cli.data_view import render_format

    out.result(result, render_format(result))


register(data_app, inspect, "inspect")
register(data_app, format, "format")
