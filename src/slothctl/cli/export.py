"""`slothctl export merged|gguf|prepare`: ship the trained model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from slothctl.cli.common import DEFAULT_CONFIG, ConfigOption, JsonOption, SetOption, load_config, start
from slothctl.cli.merge import AdapterOption, CheckpointOption, ForceOption, NoCheckOption, merge
from slothctl.cli.remote import DetachOption, RemoteOption

export_app = typer.Typer(help="Export the trained model: a merged folder, or GGUF files with an Ollama Modelfile.",
                         no_args_is_help=True)
export_app.command("merged", help="Same as `slothctl merge`: adapter + base model → merged model folder.")(merge)


@export_app.command()
def gguf(
    config: ConfigOption = DEFAULT_CONFIG,
    sets: SetOption = None,
    quant: Annotated[Optional[list[str]], typer.Option(
        "--quant", "-q", help="f16, bf16, q8_0 or q4_k_m; repeat for several (default: \\[export] quant).")] = None,
    adapter: AdapterOption = None,
    checkpoint: CheckpointOption = None,
    merged: Annotated[Optional[Path], typer.Option("--merged", help="Merged model folder to convert "
                                                   "(default: runs/<name>/merged, merged first if missing).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output folder "
                                                "(default: runs/<name>/gguf).")] = None,
    force: ForceOption = False,
    no_check: NoCheckOption = False,
    remote: RemoteOption = None,
    detach: DetachOption = False,
    json_mode: JsonOption = False,
) -> None:
    """Convert the merged model to GGUF with llama.cpp, write an Ollama Modelfile, check both."""
    out_ = start(json_mode)
    cfg = load_config(config, sets)
    if remote or detach:
        from slothctl.cli.remote import remote_flags, run_remotely

        return run_remotely(out_, cfg, remote, "export-gguf", detach=detach, sets=sets, local_only={
                            "--adapter": adapter, "--merged": merged, "--out": out},
                            args=remote_flags(quant=quant, checkpoint=checkpoint, force=force, no_check=no_check))
    from slothctl.export.gguf import export_gguf, gguf_check_summary

    result = export_gguf(cfg, quants=quant, adapter=adapter, checkpoint=checkpoint, merged=merged, out=out,
                         force=force, check=not no_check, emit=out_.event)
    lines = [f"[green]GGUF[/]: {f.path} ({f.bytes / 1e6:,.0f} MB, {f.seconds:.1f}s)" for f in result.files]
    if result.check:
        lines.append(gguf_check_summary(result.check))
    if result.modelfile:
        lines.append(f"Ollama: cd {result.out} && ollama create {cfg.output.name} -f Modelfile")
    out_.result({"event": "done", **result.to_json()}, "\n".join(lines))


@export_app.command()
def prepare(
    sdist: Annotated[Optional[Path], typer.Option("--sdist", help="Use this llama-cpp-python sdist "
                                                  "(.tar.gz) instead of fetching it with pip.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Prepare again even if already prepared.")] = False,
    json_mode: JsonOption = False,
) -> None:
    """Fetch llama.cpp's GGUF converter (once) for the installed llama-cpp-python."""
    out_ = start(json_mode)
    from slothctl.export.tools import prepare as run_prepare

    state = run_prepare(sdist=sdist, force=force, emit=out_.event)
    out_.result({"event": "done", **state.to_json()},
                f"[green]GGUF tools ready[/]: llama.cpp {state.llama_cpp_commit or ''} for llama-cpp-python "
                f"{state.library} in {state.path}")
