"""Regenerate the generated parts of README.md (the TOML reference) from the schema."""

from __future__ import annotations

from pathlib import Path

from slothctl.config import reference_markdown

START, END = "<!-- toml-reference:start -->", "<!-- toml-reference:end -->"


def main() -> None:
    readme = Path(__file__).resolve().parents[1] / "README.md"
    text = readme.read_text(encoding="utf-8")
    head, rest = text.split(START)
    _, tail = rest.split(END)
    readme.write_text(f"{head}{START}\n{reference_markdown().strip()}\n{END}{tail}", encoding="utf-8")


if __name__ == "__main__":
    main()
