"""`slothctl init`: project files written from the templates in `templates/`.

The template files are generated from the schema (`python -m slothctl.project` rewrites them;
a test checks they are current), so every key is present and documented with its default.
`init` copies one and fills in the model, dataset and run name.
"""

from __future__ import annotations

import re
import shutil
import textwrap
from pathlib import Path

from slothctl import config
from slothctl.config import DEFAULT_CONFIG_NAME, EMBEDDED_MODEL, toml_value
from slothctl.errors import UsageError
from slothctl.resources import templates_dir

EXAMPLE_DATA = "sloth_chat.jsonl"

PRESETS: dict[str, dict] = {
    "chat": {
        "about": "LoRA on conversation data (messages or ShareGPT rows).",
        "values": {"model.name": EMBEDDED_MODEL, "data.source": "data/train.jsonl", "data.eval_fraction": 0.05,
                   "train.epochs": 3.0, "train.save_steps": 25, "train.gradient_checkpointing": False},
    },
    "alpaca": {
        "about": "LoRA on instruction data (instruction / input / output rows).",
        "values": {"model.name": EMBEDDED_MODEL, "data.source": "data/alpaca.jsonl", "data.format": "alpaca",
                   "data.eval_fraction": 0.05, "train.gradient_checkpointing": False},
    },
    "qlora-8b": {
        "about": "QLoRA on an 8B model: 4-bit base, Unsloth backend, for a 16-24 GB GPU.",
        "values": {"model.name": "unsloth/Meta-Llama-3.1-8B-Instruct", "model.load_in_4bit": True,
                   "model.backend": "unsloth", "data.source": "data/train.jsonl", "train.optim": "adamw_8bit",
                   "train.save_steps": 100},
    },
}
DEFAULT_PRESET = "chat"


def template_path(preset: str) -> Path:
    return templates_dir() / f"{preset}.toml"


def render_template(preset: str) -> str:
    """The text of templates/<preset>.toml, generated from the schema and the preset's values."""
    values = PRESETS[preset]["values"]
    lines = [f"# slothctl project file (template: {preset}). {PRESETS[preset]['about']}",
             "# Every key is shown with its value; delete the ones you do not need to change.",
             "# Precedence: built-in defaults < this file < --set section.key=value < command flags.",
             ""]
    current = None
    for spec in config.schema():
        if spec.section != current:
            if current is not None:
                lines.append("")
            doc = config.SECTIONS[spec.section].__doc__.split(":", 1)[1].strip()
            lines += [f"[{spec.section}]  # {doc}"]
            current = spec.section
        doc = spec.doc
        if spec.choices:
            doc += config.choices_text(spec)
        lines += textwrap.wrap(doc, 100, initial_indent="# ", subsequent_indent="# ")
        value = values.get(spec.dotted, spec.default)
        lines.append(f"{spec.name} = {toml_value(value)}")
    return "\n".join(lines) + "\n"


def _set_value(text: str, section: str, key: str, value) -> str:
    """Replace `key = …` inside `[section]` of a template, keeping the comments around it."""
    out, inside = [], False
    for line in text.splitlines(keepends=True):
        header = re.match(r"^\[([\w-]+)\]", line)
        if header:
            inside = header.group(1) == section
        elif inside and re.match(rf"^{re.escape(key)}\s*=", line):
            line = f"{key} = {toml_value(value)}\n"
        out.append(line)
    return "".join(out)


def slug(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.")
    return cleaned or "run"


def init_project(directory: Path, *, preset: str = DEFAULT_PRESET, model: str | None = None,
                 dataset: str | None = None, example: bool = False, force: bool = False,
                 target: Path | None = None, overrides: list[str] | None = None) -> dict:
    """Write DIR/slothctl.toml (and with `example`, DIR/data/sloth_chat.jsonl). Returns what was written.

    `target` writes the project file elsewhere (its folder becomes the project folder); `overrides`
    are --set values written into the file.
    """
    if target is not None:
        directory = target.parent
    if preset not in PRESETS:
        raise UsageError(f"unknown template `{preset}`", f"choose one of: {', '.join(PRESETS)}")
    if example and dataset:
        raise UsageError("--example and --dataset both name the data", "use one of them")
    if example and preset == "alpaca":
        raise UsageError("--example ships conversation data, which the alpaca template does not read",
                         "use --template chat with --example")
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"{directory} exists and is not a folder")
    target = target or directory / DEFAULT_CONFIG_NAME
    if target.exists() and not force:
        raise UsageError(f"{target} already exists", "pass --force to overwrite it")
    text = template_path(preset).read_text(encoding="utf-8")
    if model:
        text = _set_value(text, "model", "name", model)
    data_file = None
    if example:
        data_file = directory / "data" / EXAMPLE_DATA
        text = _set_value(text, "data", "source", f"data/{EXAMPLE_DATA}")
    elif dataset:
        text = _set_value(text, "data", "source", dataset)
    text = _set_value(text, "output", "name", slug(directory.resolve().name))
    for override in overrides or []:
        section, key, _ = config.parse_override(override)
        raw = config.apply_overrides(config.tomllib.loads(text), [override])
        text = _set_value(text, section, key, raw[section][key])
    config.build(config.tomllib.loads(text), str(target))
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if data_file is not None:
            data_file.parent.mkdir(exist_ok=True)
            shutil.copyfile(templates_dir() / "example" / EXAMPLE_DATA, data_file)
        from slothctl.runs import write_text_atomic

        write_text_atomic(target, text)
    except OSError as exc:
        raise UsageError(f"cannot write {target}: {exc.strerror}") from None
    return {"config": str(target), "template": preset, "data": str(data_file) if data_file else None}


def write_templates() -> None:
    for preset in PRESETS:
        template_path(preset).write_text(render_template(preset), encoding="utf-8")


if __name__ == "__main__":
    write_templates()
