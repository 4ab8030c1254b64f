"""`slothctl merge` (also `slothctl export merged`): adapter + base model → one checked model folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from slothctl.cli.commands import examples
from slothctl.cli.common import DEFAULT_CONFIG, ConfigOption, JsonOption, QuietOption, SetOption, load_config, start
from slothctl.cli.remote import DetachOption, RemoteOption

Precision = Literal["16bit", "32bit", "4bit", "lora"]  # slothctl.export.merge.PRECISIONS

AdapterOption = Annotated[Optional[Path], typer.Option(
    "--adapter", help="Adapter folder to use instead of the run's final adapter.")]
CheckpointOption = Annotated[Optional[int], typer.Option(
    "--checkpoint", min=1, help="Use the run's checkpoint-N instead of its final adapter.")]
ForceOption = Annotated[bool, typer.Option("--force", help="Replace the output folder if it exists.")]
NoCheckOption = Annotated[bool, typer.Option("--no-check", help="Skip the fidelity check (fresh process).")]


@examples(("slothctl merge", "runs/<name>/merged: 16-bit safetensors, checked against the adapter"),
          ("slothctl merge --checkpoint 40 -o merged-40", "merge checkpoint-40 into another folder"),
          ("slothctl merge --precision 32bit --force", "exact float32 weights, replacing the folder"))
def merge(
    config: ConfigOption = DEFAULT_CONFIG,
    sets: SetOption = None,
    adapter: AdapterOption = None,
    checkpoint: CheckpointOption = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output folder "
                                                "(default: runs/<name>/merged).")] = None,
    precision: Annotated[Optional[Precision], typer.Option(
        "--precision", help="16bit (default, stored as [export] dtype), 32bit (exact), 4bit (CUDA) or lora "
                            "(same as --set export.precision=...).")] = None,
    force: ForceOption = False,
    no_check: NoCheckOption = False,
    remote: RemoteOption = None,
    detach: DetachOption = False,
    json_mode: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Merge the LoRA adapter into its base model: safetensors, tokenizer, generation config, checked."""
    out_ = start(json_mode, quiet)
    cfg = load_config(config, sets, {"--precision": ("export.precision", precision)})
    if remote or detach:
        from slothctl.cli.remote import remote_flags, run_remotely

        return run_remotely(out_, cfg, remote, "merge", detach=detach, sets=sets, local_only={"--adapter": adapter,
                            "--out": out}, args=remote_flags(precision=precision, checkpoint=checkpoint, force=force,
                                                             no_check=no_check))
    from slothctl.export.merge import check_summary, merge as run_merge

    result = run_merge(cfg, adapter=adapter, checkpoint=checkpoint, out=out, force=force, check=not no_check,
                       emit=out_.event)
    text = f": {result.out} ({result.precision}"
    text += f", {result.dtype}" if result.dtype else ""
    text += f", {result.seconds:.0f}s)"
    if result.check:
        text += "\n" + check_summary(result.check)
    text += "\nNext: slothctl export gguf"
    out_.result({"event": "done", **result.to_json()}, [("Merged", "green"), text])
