"""From a standard row to the tokens the model trains on and the mask of the loss.

A conversation is rendered with the chat template and cut into segments: the text before each
assistant reply (not trained) and the reply itself up to and including its end-of-turn token
(trained). The cuts come from the template itself: the prompt for reply i is the rendering of the
messages before it with the generation prompt, the reply ends where the rendering of the messages
up to it ends. Each segment is tokenized on its own, exactly as `chat` tokenizes a prompt and the
model then generates the reply, so no per-model string matching is involved.
"""

from __future__ import annotations

from dataclasses import dataclass

from slothctl.data.chat_template import render
from slothctl.data.formats import RowError
from slothctl.data.tokenizer import TextTokenizer

IGNORE = -100


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    full_length: int  # before truncation

    @property
    def truncated(self) -> bool:
        return self.full_length > len(self.input_ids)

    @property
    def trained_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE)


Segments = list[tuple[str, bool]]  # (text, trained)


def _ends_with_eos(text: str, eos: str | None) -> bool:
    return not eos or text.rstrip().endswith(eos)


def conversation_segments(messages: list[dict], template: str, tok: TextTokenizer,
                          responses_only: bool) -> Segments:
    """Cut a rendered conversation into (text, trained) segments; the text ends with EOS."""
    def draw(msgs: list[dict], generation_prompt: bool = False) -> str:
        try:
            return render(template, msgs, add_generation_prompt=generation_prompt,
                          bos_token=tok.bos_token, eos_token=tok.eos_token)
        except Exception as exc:  # noqa: BLE001 - jinja raises many kinds; all mean "cannot render"
            raise RowError(f"the chat template cannot render it: {exc}") from None

    full = draw(messages)
    if not responses_only or not any(m["role"] == "assistant" for m in messages):
        segments: Segments = [(full, responses_only is False)]
    else:
        segments = _cut_at_replies(messages, full, draw, tok.eos_token)
    if not _ends_with_eos(full, tok.eos_token):
        text, trained = segments[-1]
        segments[-1] = (text + tok.eos_token, trained)
    return segments


def _cut_at_replies(messages: list[dict], full: str, draw, eos: str | None) -> Segments:
    segments: Segments = []
    done = 0  # characters of `full` already assigned
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = draw(messages[:i], generation_prompt=True) if i else ""
        through = draw(messages[: i + 1])
        if full.startswith(through) and through.startswith(prompt) and len(prompt) >= done:
            start, end = len(prompt), len(through)
        else:  # a template that renders earlier turns differently: find the reply in the full text
            start = full.find(message["content"], done)
            if start < 0:
                raise RowError("the chat template changes the assistant text, so its reply cannot be located")
            end = start + len(message["content"])
            rest = full[end:]
            if eos and rest.lstrip().startswith(eos):  # the reply's end-of-turn token is trained too
                end += len(rest) - len(rest.lstrip()) + len(eos)
        if start > done:
            segments.append((full[done:start], False))
        segments.append((full[start:end], True))
        done = end
    if done < len(full):
        segments.append((full[done:], False))
    return segments


def text_segments(text: str, tok: TextTokenizer) -> Segments:
    """Raw text for continued pre-training: all of it is trained, and it ends with EOS."""
    return [(text if _ends_with_eos(text, tok.eos_token) else text + (tok.eos_token or ""), True)]


def encode_segments(batch: list[Segments], tok: TextTokenizer, max_length: int) -> list[Encoded]:
    """Tokenize many rows' segments in one batch call and build (truncated) ids and labels."""
    flat = [text for segments in batch for text, _ in segments]
    ids_flat = tok.encode_batch(flat)
    out, k = [], 0
    for segments in batch:
        input_ids: list[int] = []
        labels: list[int] = []
        for _, trained in segments:
            ids = ids_flat[k]
            k += 1
            input_ids += ids
            labels += ids if trained else [IGNORE] * len(ids)
        out.append(Encoded(input_ids[:max_length], labels[:max_length], len(input_ids)))
    return out
