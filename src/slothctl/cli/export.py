"""`slothctl export merged|gguf|prepare`: ship the trained model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from slothctl.cli.commands import epilog, examples, new_app, register
from slothctl.cli.common import DEFAULT_CONFIG, ConfigOption, JsonOption, QuietOption, SetOption, load_config, start
from slothctl.cli.merge import AdapterOption, CheckpointOption, ForceOption, NoCheckOption, merge
from slothctl.cli.remote import DetachOption, RemoteOption

export_app = new_app(help="Export the trained model: a merged folder, or GGUF files with an Ollama Modelfile.",
                     no_args_is_help=True,
                     epilog=epilog(("slothctl export gguf", "GGUF files and an Ollama Modelfile in runs/<name>/gguf"),
                                   ("slothctl export merged", "the same as slothctl merge")))


@examples(("slothctl export gguf", "runs/<name>/gguf: the default quantization and an Ollama Modelfile"),
          ("slothctl export gguf -q q8_0 -q q4_k_m", "two quantizations from one conversion"),
          ("slothctl export gguf --checkpoint 40 -o gguf-40", "from checkpoint-40, into another folder"))
def gguf(
    config: ConfigOption = DEFAULT_CONFIG,
    sets: SetOption = None,
    quant: Annotated[Optional[list[str]], typer.Option(
        "--quant", "-q", help="f16, bf16, q8_0 or q4_k_m; repeat for several (default: [export] quant).")] = None,
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
    quiet: QuietOption = False,
) -> None:
    """Convert the merged model to GGUF with llama.cpp, write an Ollama Modelfile, check both."""
    out_ = start(json_mode, quiet)
    cfg = load_config(config, sets)
    if remote or detach:
        from slothctl.cli.remote import remote_flags, run_remotely

        return run_remotely(out_, cfg, remote, "export-gguf", detach=detach, sets=sets, local_only={
                            "--adapter": adapter, "--merged": merged, "--out": out},
                            args=remote_flags(quant=quant, checkpoint=checkpoint, force=force, no_check=no_check))
    from slothctl.export.gguf import export_gguf, gguf_check_summary

    result = export_gguf(cfg, quants=quant, adapter=adapter, checkpoint=checkpoint, merged=merged, out=out,
                         force=force, check=not no_check, emit=out_.event)
    parts: list = []
    for f in result.files:
        parts += [("GGUF", "green"), f": {f.path} ({f.bytes / 1e6:,.0f} MB, {f.seconds:.1f}s)\n"]
    if result.check:
        parts.append(gguf_check_summary(result.check) + "\n")
    if result.modelfile:
        parts.append(f"Ollama: cd {result.out} && ollama create {cfg.output.name} -f Modelfile\n")
    parts[-1] = parts[-1].rstrip("\n")
    out_.result({"event": "done", **result.to_json()}, parts)


@examples(("slothctl export prepare", "fetch the converter with pip (once)"),
          ("slothctl export prepare --sdist llama_cpp_python-0.3.36.tar.gz", "use a downloaded sdist (offline)"))
def prepare(
    sdist: Annotated[Optional[Path], typer.Option("--sdist", help="Use this llama-cpp-python sdist "
                                                  "(.tar.gz) instead of fetching it with pip.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Prepare again even if already prepared.")] = False,
    json_mode: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Fetch llama.cpp's GGUF converter (once) for the installed llama-cpp-python."""
    out_ = start(json_mode, quiet)
    from slothctl.export.tools import prepare as run_prepare

    state = run_prepare(sdist=sdist, force=force, emit=out_.event)
    out_.result({"event": "done", **state.to_json()},
                [("GGUF tools ready", "green"), f": llama.cpp {state.llama_cpp_commit or ''} for llama-cpp-python "
                                                f"{state.library} in {state.path}"])


register(export_app, merge, "merged", help="Same as `slothctl merge`: adapter + base model → merged model folder.")
register(export_app, gguf)
register(export_app, prepare)
