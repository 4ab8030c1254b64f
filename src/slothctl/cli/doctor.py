"""`slothctl doctor`: report what this machine can run, and how to fix what is missing."""

from __future__ import annotations

from slothctl.cli.commands import examples
from slothctl.cli.common import DEFAULT_CONFIG, ConfigOption, JsonOption, QuietOption, SetOption, start

OK, MISSING = ("ok     ", "green"), ("missing", "yellow")
INSTALL_UNSLOTH = "(pip install 'slothctl[unsloth]')"


def _mark(ok: bool) -> tuple[str, str]:
    return OK if ok else MISSING


@examples(("slothctl doctor", "this machine, and the project in this folder if there is one"),
          ("slothctl doctor --json", "the same as JSON, e.g. for a bug report"))
def doctor(config: ConfigOption = DEFAULT_CONFIG, sets: SetOption = None, json_mode: JsonOption = False,
           quiet: QuietOption = False) -> None:
    """Check the installation: libraries, CUDA, Unsloth, the bundled model and the GGUF tools."""
    out = start(json_mode, quiet)
    from slothctl.doctor import report

    info = report(config, sets)
    libs = info["libraries"]
    parts: list = [f"slothctl {info['slothctl']} · Python {info['python']} · {info['platform']}\n"]

    def line(ok: bool, text: str, dim: str = "") -> None:
        parts.extend([_mark(ok), f" {text}"] + ([" ", (dim, "dim")] if dim else []) + ["\n"])

    for name in ("torch", "transformers", "trl", "peft", "datasets", "accelerate"):
        line(bool(libs[name]), f"{name} {libs[name] or ''}")
    cuda = info["cuda"]
    line(cuda["available"], "CUDA " + (f"{cuda.get('cuda')} ({', '.join(cuda['devices'])})"
                                      if cuda["available"] else "(training runs on CPU)"))
    unsloth = info["unsloth"]
    line(unsloth["installed"], f"unsloth {libs['unsloth'] or INSTALL_UNSLOTH}"
         + ("" if unsloth["usable"] or not unsloth["installed"] else " (needs CUDA)"))
    parts.append(f"        backend = \"auto\" uses: {info['auto_backend']}\n")
    for model in info["embedded_models"]:
        state = "converted" if model["converted"] else ("not converted yet (done on first use)"
                                                        if model["installed"] else model.get("problem", ""))
        line(model["installed"], f"{model['name']}: {state}", str(model["cache"]))
    tools = info["gguf_tools"]
    if tools["ready"]:
        line(True, f"GGUF tools: llama.cpp {tools['llama_cpp_commit'] or ''} for llama-cpp-python "
                   f"{tools['llama_cpp_python']}", str(tools["path"]))
    else:
        line(False, f"GGUF tools: {tools['problem']}")
    project = info["project"]
    if project:
        if project["valid"]:
            have = [name for name in ("adapter", "merged", "gguf") if project[name]]
            parts += [("ok     ", "green"), f" project {project['config']}: run {project['run_dir']} "
                                           f"({', '.join(have) or 'not trained yet'})\n"]
        else:
            parts += [("invalid", "yellow"), f" project: {project['problem']}\n"]
    parts[-1] = parts[-1].rstrip("\n") if isinstance(parts[-1], str) else parts[-1]
    out.result(info, parts)
