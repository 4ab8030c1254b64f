"""Files shipped with slothctl: the `templates/` folder (project TOMLs, chat templates, example data).

In a wheel it is packaged as `slothctl/templates`; in a source checkout it sits at the repo's top level.
"""

from __future__ import annotations

from pathlib import Path


def templates_dir() -> Path:
    packaged = Path(__file__).with_name("templates")
    if packaged.is_dir():
        return packaged
    checkout = Path(__file__).resolve().parents[2] / "templates"
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError("slothctl's templates folder is missing; reinstall slothctl")


def chat_template_names() -> list[str]:
    return sorted(p.stem for p in (templates_dir() / "chat").glob("*.jinja"))


def chat_template_text(name: str) -> str:
    return (templates_dir() / "chat" / f"{name}.jinja").read_text(encoding="utf-8")
