"""How `data inspect` and `data format` look to people: a summary table and highlighted examples."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text

TRAINED = "on dark_green"
SPECIAL = "bold magenta"


def _count(n: int, noun: str = "row") -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _rows(numbers: list[int], limit: int = 12) -> str:
    shown = ", ".join(map(str, numbers[:limit]))
    return shown + (f", … ({len(numbers)} in all)" if len(numbers) > limit else "")


class _Grid:
    """Two columns of plain text (a str is wrapped in Text, so that file names are never markup)."""

    def __init__(self):
        self.table = Table.grid(padding=(0, 2))
        self.table.add_column(style="bold")
        self.table.add_column()

    def add_row(self, label: str, value: str | Text) -> None:
        self.table.add_row(Text(label), Text(value) if isinstance(value, str) else value)


def _summary(r: dict) -> Table:
    grid = _Grid()
    template = r["chat_template"]
    grid.add_row("source", f"{r['source']} ({_count(r['rows'])})")
    grid.add_row("format", r["detection"])
    if template:
        name = "the tokenizer's own" if template == "tokenizer" else template
        grid.add_row("template", f"{name} (model {r['model']}; replies end with {r['end_of_turn']}, "
                                 f"pad {r['pad_token']})")
    if r["roles"]:
        grid.add_row("roles", " · ".join(f"{role} {n}" for role, n in r["roles"].items()))
    if r["turns"]:
        t = r["turns"]
        grid.add_row("turns", f"{t['min']}–{t['max']} per row (mean {t['mean']})")
    k = r["tokens"]
    grid.add_row("tokens", f"min {k['min']} · mean {k['mean']} · p50 {k['p50']} · p95 {k['p95']} · max {k['max']}")
    if "tokenizer" in r:  # reports cached before slothctl named the engine have no such key
        e = r["tokenizer"]
        grid.add_row("tokenizer", Text(f"{e['engine']} ({e['note']})", style="yellow" if "then" in e["engine"] else ""))
    style = "yellow" if r["truncated"] else ""
    grid.add_row("truncated", Text(f"{_count(r['truncated'])} ({r['truncated_pct']}%) longer than "
                                   f"max_seq_length {r['max_seq_length']}", style=style))
    what = "assistant replies only" if r["train_on_responses_only"] and template else "all tokens"
    grid.add_row("trained", f"{100 * r['trained_token_fraction']:.1f}% of tokens ({what})")
    problems = {p["row"]: p for p in r["problems"]}
    invalid = [n for n in r["invalid"] if n not in r["empty"]]
    for label, numbers in (("empty", r["empty"]), ("invalid", invalid), ("no reply", r["no_trained_tokens"])):
        if numbers:
            reason = problems[numbers[0]]["reason"]
            grid.add_row(label, Text(f"{_count(len(numbers))} dropped: {_rows(numbers)} "
                                     f"(row {numbers[0]}, {problems[numbers[0]]['origin']}: {reason})", style="yellow"))
    if not r["problems"]:
        grid.add_row("dropped", "none")
    dup = r["duplicates"]
    grid.add_row("duplicates", Text(f"{_count(dup['count'])} repeating an earlier row: {_rows(dup['rows'])}",
                                    style="yellow")
                 if dup["count"] else "none")
    split = f"{r['train_rows']} train · {r['eval_rows']} eval"
    if r["eval_fraction"]:
        split += f" (eval_fraction {r['eval_fraction']}, seed {r['seed']})"
    grid.add_row("split", split)
    if "cache" in r:
        grid.add_row("cache", ("cache hit: " if r["cache"].get("hit") else "stored: ") + "train will use it"
                     if r["cache"]["formatted"] else "could not be stored (train formats the data again)")
    return grid.table


def _example(e: dict) -> Text:
    head = f"row {e['row']} ({e['origin']}, {e['split']}): {e['tokens']} tokens, {e['trained_tokens']} trained"
    text = Text(head + (", truncated" if e["truncated"] else "") + "\n", style="bold")
    for span in e["spans"]:
        style = " ".join(s for s in (TRAINED if span["trained"] else "", SPECIAL if span["special"] else "") if s)
        text.append(span["text"], style=style or None)
    return text


def render_report(r: dict) -> Group:
    parts = [_summary(r)]
    if r.get("examples"):
        parts.append(Text.assemble("\n", ("trained", TRAINED), "  ", ("<special>", SPECIAL), "  untrained\n"))
        for example in r["examples"]:
            parts += [_example(example), Text("")]
    return Group(*parts)


def render_format(r: dict) -> list:
    state = ("cache hit", "green") if r["hit"] else "cache miss: formatted"
    lines = [f": {r['rows']} rows → {r['train_rows']} train, {r['eval_rows']} eval "
             f"({r['invalid']} invalid, {r['no_trained_tokens']} without trained tokens, {r['truncated']} truncated "
             f"at {r['max_seq_length']} tokens)", f"Cache: {r['cache']}"]
    if r.get("out"):
        lines.append(f"Rendered texts: {r['out']}")
    lines.append("Next: slothctl train")
    return [state, "\n".join(lines)]
