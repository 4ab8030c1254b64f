"""The Ollama Modelfile written next to the GGUF files: `ollama create NAME -f Modelfile`."""

from __future__ import annotations

import json

from slothctl.config import Config
from slothctl.export.chat_formats import OllamaChat


def _quoted_block(text: str) -> str:
    if '"""' in text:
        raise ValueError('a Modelfile block cannot contain """')
    return f'"""{text}"""'


def modelfile_text(gguf_name: str, chat: OllamaChat, cfg: Config) -> str:
    """FROM the first GGUF, the TEMPLATE equivalent to the training chat template, its stop words,
    the [chat] sampling settings and the default system prompt ([chat] system_prompt, else the
    template's own)."""
    system = cfg.chat.system_prompt or chat.system
    lines = [f"# Written by `slothctl export gguf` ({chat.family} template). Create the model with:",
             "#   ollama create NAME -f Modelfile",
             f"FROM ./{gguf_name}",
             f"TEMPLATE {_quoted_block(chat.template)}"]
    if system:
        lines.append(f"SYSTEM {_quoted_block(system)}")
    lines += [f"PARAMETER stop {json.dumps(stop)}" for stop in chat.stops]
    lines += [f"PARAMETER temperature {cfg.chat.temperature:g}",
              f"PARAMETER top_p {cfg.chat.top_p:g}",
              f"PARAMETER min_p {cfg.chat.min_p:g}",
              f"PARAMETER repeat_penalty {cfg.chat.repetition_penalty:g}"]
    return "\n".join(lines) + "\n"
