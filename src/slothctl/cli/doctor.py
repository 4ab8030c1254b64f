"""`slothctl doctor`: report what this machine can run, and how to fix what is missing."""

from __future__ import annotations

from slothctl.cli.common import DEFAULT_CONFIG, ConfigOption, JsonOption, SetOption, start


def _mark(ok: bool) -> str:
    return "[green]ok[/]     " if ok else "[yellow]missing[/]"


def doctor(config: ConfigOption = DEFAULT_CONFIG, sets: SetOption = None, json_mode: JsonOption = False) -> None:
    """Check the installation: libraries, CUDA, Unsloth, the bundled model and the GGUF tools."""
    out = start(json_mode)
    from slothctl.doctor import report

    info = report(config, sets)
    libs = info["libraries"]
    lines = [f"slothctl {info['slothctl']} · Python {info['python']} · {info['platform']}"]
    for name in ("torch", "transformers", "trl", "peft", "datasets", "accelerate"):
        lines.append(f"{_mark(bool(libs[name]))} {name} {libs[name] or ''}")
    cuda = info["cuda"]
    lines.append(f"{_mark(cuda['available'])} CUDA " + (f"{cuda.get('cuda')} ({', '.join(cuda['devices'])})"
                                                       if cuda["available"] else "(training runs on CPU)"))
    unsloth = info["unsloth"]
    hint = "(pip install 'slothctl\\[unsloth]')"
    lines.append(f"{_mark(unsloth['installed'])} unsloth {libs['unsloth'] or hint}"
                 + ("" if unsloth["usable"] or not unsloth["installed"] else " (needs CUDA)"))
    lines.append(f"         backend = \"auto\" uses: {info['auto_backend']}")
    for model in info["embedded_models"]:
        state = "converted" if model["converted"] else ("not converted yet (done on first use)"
                                                        if model["installed"] else model.get("problem", ""))
        lines.append(f"{_mark(model['installed'])} {model['name']}: {state} [dim]{model['cache']}[/]")
    tools = info["gguf_tools"]
    detail = (f"llama.cpp {tools['llama_cpp_commit'] or ''} for llama-cpp-python {tools['llama_cpp_python']} "
              f"[dim]{tools['path']}[/]" if tools["ready"] else tools["problem"])
    lines.append(f"{_mark(tools['ready'])} GGUF tools: {detail}")
    project = info["project"]
    if project:
        if project["valid"]:
            have = [name for name in ("adapter", "merged", "gguf") if project[name]]
            lines.append(f"[green]ok[/]      project {project['config']}: run {project['run_dir']} "
                         f"({', '.join(have) or 'not trained yet'})")
        else:
            lines.append(f"[yellow]invalid[/] project: {project['problem']}")
    out.result(info, "\n".join(lines))
