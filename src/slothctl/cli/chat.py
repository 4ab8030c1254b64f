"""`slothctl chat`: talk to the trained model in a REPL, or answer prompts for scripts."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from slothctl.cli.commands import examples
from slothctl.cli.common import (DEFAULT_CONFIG, ConfigOption, JsonOption, QuietOption, SetOption,
                                 load_config_or_defaults, start)
from slothctl.cli.output import Output
from slothctl.errors import SlothctlError, UsageError
from slothctl.events import Event

GEN = "Generation (defaults from [chat])"


@examples(("slothctl chat", "talk to the tuned model (/help lists the commands)"),
          ("slothctl chat -p 'Why are sloths slow?' --temperature 0", "one reproducible answer, for scripts"),
          ("slothctl chat --compare -p 'Hello'", "the base and the tuned model, side by side"))
def chat(
    config: ConfigOption = DEFAULT_CONFIG,
    sets: SetOption = None,
    prompt: Annotated[Optional[list[str]], typer.Option(
        "--prompt", "-p", metavar="TEXT",
        help="Answer this prompt, print only the answer and exit (repeatable; `-` reads stdin).")] = None,
    adapter: Annotated[Optional[Path], typer.Option(
        "--adapter", help="A LoRA adapter folder (default: the run's final adapter).")] = None,
    checkpoint: Annotated[Optional[int], typer.Option("--checkpoint", min=1, help="Checkpoint N of the run.")] = None,
    model: Annotated[Optional[str], typer.Option(
        "--model", help="A merged or base model: a folder, a hub id or embedded:NAME.")] = None,
    gguf: Annotated[Optional[Path], typer.Option("--gguf", help="A GGUF file, run with llama.cpp.")] = None,
    compare: Annotated[bool, typer.Option(
        "--compare", help="Answer with the base model and the tuned model, side by side.")] = False,
    max_new_tokens: Annotated[Optional[int], typer.Option("--max-new-tokens", help="Longest answer in tokens.",
                                                          rich_help_panel=GEN)] = None,
    temperature: Annotated[Optional[float], typer.Option("--temperature", help="0 = greedy and reproducible.",
                                                         rich_help_panel=GEN)] = None,
    top_p: Annotated[Optional[float], typer.Option("--top-p", help="Nucleus sampling.", rich_help_panel=GEN)] = None,
    min_p: Annotated[Optional[float], typer.Option("--min-p", help="Min-p sampling.", rich_help_panel=GEN)] = None,
    repetition_penalty: Annotated[Optional[float], typer.Option(
        "--repetition-penalty", help="1 = none.", rich_help_panel=GEN)] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Sampling seed.", rich_help_panel=GEN)] = None,
    system: Annotated[Optional[str], typer.Option("--system", help="System prompt.", rich_help_panel=GEN)] = None,
    json_mode: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Chat with the tuned model (the run's adapter on its base model), a merged model or a GGUF file."""
    out = start(json_mode, quiet, aside_events=True)  # stdout: the answers only
    flags = {"--max-new-tokens": ("chat.max_new_tokens", max_new_tokens),
             "--temperature": ("chat.temperature", temperature), "--top-p": ("chat.top_p", top_p),
             "--min-p": ("chat.min_p", min_p), "--repetition-penalty": ("chat.repetition_penalty", repetition_penalty),
             "--seed": ("chat.seed", seed)}
    cfg = load_config_or_defaults(config, sets, flags, standalone=gguf is not None or model is not None)
    if system is not None:
        cfg.chat.system_prompt = system
    from slothctl import chat as chat_lib, interrupts

    prompts = _read_prompts(prompt)
    target = chat_lib.resolve_target(cfg, adapter=adapter, model=model, gguf=gguf, checkpoint=checkpoint)
    with interrupts.deferred():  # a signal while loading stops after it; answering keeps Ctrl-C as it is
        chats = chat_lib.open_chats(cfg, target, compare=compare, emit=out.event)
        interrupts.check("while loading the model")
    if prompts:
        for text in prompts:
            if not _turn(out, chats, text, stream=not json_mode and not compare):
                raise KeyboardInterrupt
    else:
        _repl(out, chats)


def _read_prompts(prompts: list[str] | None) -> list[str]:
    texts = []
    for given in prompts or []:
        text = sys.stdin.read() if given == "-" else given
        if not text.strip():
            raise UsageError("--prompt is empty" + (" (nothing on stdin)" if given == "-" else ""))
        texts.append(text.strip())
    return texts


def _turn(out: Output, chats, text: str, stream: bool) -> bool:
    """Answer one prompt with every chat (one, or base and tuned); False when Ctrl-C cut it short."""
    replies = []
    for chat in chats:
        reply = chat.ask(text, on_text=out.stream if stream else None)
        replies.append((chat, reply))
        if reply.finish_reason == "interrupted":
            break
    if stream:
        out.stream("\n")
    if out.json_mode:
        if len(chats) == 1:
            out.json({"prompt": text, **replies[0][1].to_json(), "model": chats[0].label})
        else:
            out.json({"prompt": text, **{c.name: {**r.to_json(), "model": c.label} for c, r in replies}})
    elif len(chats) > 1:
        _side_by_side(out, replies)
    interrupted = replies[-1][1].finish_reason == "interrupted"
    if interrupted:
        out.note("(interrupted)")
    return not interrupted


def _side_by_side(out: Output, replies) -> None:
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    grid = Table.grid(expand=True, padding=(0, 1))
    for _ in replies:
        grid.add_column(ratio=1)
    grid.add_row(*[Panel(Text(reply.text), title=Text(chat.name), title_align="left",
                         subtitle=Text(f"{reply.tokens} tokens, {reply.seconds:.1f}s")) for chat, reply in replies])
    out.result(None, grid)


def _repl(out: Output, chats) -> None:
    """Read prompts line by line (a terminal with line editing and history, or a pipe) and answer them."""
    from slothctl.chat import COMMANDS, parse_command, user_text

    help_text = "\n".join(f"  {name:<8} {about}" for name, about in COMMANDS.items())
    help_text += "\n  a line starting with // is sent with one / removed"

    interactive = sys.stdin.isatty()
    if interactive:
        try:
            import readline  # noqa: F401 - importing it gives input() arrow keys and history
        except ImportError:
            pass
        out.note("Type a message; /help lists the commands, Ctrl-D leaves.")
    prompt = ">>> " if interactive and sys.stdout.isatty() and not out.json_mode else ""

    def notice(kind: str, message: str, **data) -> None:
        """A reply of the REPL itself: part of the JSON stream, an aside on stderr for people."""
        if out.json_mode:
            out.json({"event": kind, **data, "message": message})
        else:
            out.event(Event(kind, data, message))

    while True:
        try:
            line = input(prompt) if interactive else sys.stdin.readline()
        except EOFError:
            if prompt:
                out.stream("\n")  # leave the terminal on a fresh line
            break
        except KeyboardInterrupt:
            out.note("\n(Ctrl-D or /exit to leave)")
            continue
        if not interactive and line == "":
            break  # end of the pipe
        if not line.strip():
            continue
        command = parse_command(line)
        if command is None:
            try:
                _turn(out, chats, user_text(line), stream=not out.json_mode and len(chats) == 1)
            except KeyboardInterrupt:
                out.note("(interrupted)")
            except SlothctlError as exc:  # one bad turn (too long a prompt) does not end the session
                notice("error", exc.one_line())
            continue
        name, argument = command
        if name in ("/exit", "/quit"):
            break
        if name == "/reset":
            for chat in chats:
                chat.reset()
            notice("reset", "conversation reset")
        elif name == "/system":
            for chat in chats:
                chat.set_system(argument)
            notice("system", f"system prompt: {argument}" if argument else "system prompt: the template's default",
                   system=argument)
        elif name == "/help":
            notice("help", help_text)
        else:
            notice("error", f"unknown command {name}; /help lists them (start a line with // to send a /)")
