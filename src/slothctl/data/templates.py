"""Which chat template a run uses, which token ends a reply, and which token pads.

The same decisions are made twice: by the data pipeline on the light tokenizer (to render the
data) and by the backend on the transformers tokenizer (to train, save and chat). Both call the
functions here with what they know about the vocabulary, so they cannot disagree.

Bundled templates (templates/chat/*.jinja) name the special tokens they write. A template is only
used when the tokenizer already has those tokens: adding tokens would leave untrained embeddings in
every later step (chat, merge, GGUF), so a forced template whose tokens are missing is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Collection

from slothctl.data.chat_template import SYSTEM_RULE, after_reply, lacks_system_role, render
from slothctl.errors import DataError
from slothctl.resources import chat_template_names, chat_template_text


@dataclass(frozen=True)
class BundledTemplate:
    special_tokens: tuple[str, ...]  # written by the template itself: must exist in the vocabulary
    end_of_turn: str | None  # the token that ends every reply; None: the tokenizer's eos


BUNDLED = {
    "chatml": BundledTemplate(("<|im_start|>", "<|im_end|>"), "<|im_end|>"),
    "llama-3": BundledTemplate(("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"), "<|eot_id|>"),
    "alpaca": BundledTemplate((), None),
}
AUTO_ORDER = ("chatml", "llama-3", "alpaca")  # for tokenizers without a template of their own


@dataclass(frozen=True)
class ChatTemplate:
    name: str  # "tokenizer" for the model's own, else a bundled template name
    source: str
    end_of_turn: str  # the token that ends each assistant reply (the eos the model learns to stop at)

    @property
    def label(self) -> str:
        return "of the tokenizer" if self.name == "tokenizer" else f"`{self.name}`"


def reply_end(template: str, eos_token: str | None, specials: Collection[str]) -> str | None:
    """The special token a template writes right after an assistant reply (`<|im_end|>`, `<|eot_id|>`,
    Gemma's `<end_of_turn>`, Phi's `<|end|>`, `</s>`…), or None when it writes none there. The
    tokenizer's eos is often another token (Gemma: `<eos>`, Phi 3.5: `<|endoftext|>`), and a model
    trained to end replies with eos would not stop where its template ends a turn."""
    after = after_reply(template, eos_token=eos_token).lstrip()
    found = [token for token in specials if token and after.startswith(token)]
    return max(found, key=len) if found else None


def choose_chat_template(choice: str, own_template: str | None, eos_token: str | None,
                         has_token: Callable[[str], bool], specials: Collection[str] = ()) -> ChatTemplate:
    """`auto`: the tokenizer's own template, ending replies with the special token it writes after
    one (else eos); for a tokenizer without one (a base model), the first bundled template whose
    special tokens it has (chatml, llama-3), else alpaca. A name forces a bundled template, which
    must not need tokens the tokenizer lacks. `specials`: the tokenizer's special tokens."""
    if choice == "auto" and own_template:
        end = reply_end(own_template, eos_token, [t for t in specials if has_token(t)]) or eos_token
        if not end:
            raise DataError("the tokenizer has a chat template but no eos token",
                            "set eos_token in the model's tokenizer_config.json")
        return ChatTemplate("tokenizer", own_template, end)
    if choice == "auto":
        choice = next(name for name in AUTO_ORDER if all(has_token(t) for t in BUNDLED[name].special_tokens))
    if choice not in BUNDLED or choice not in chat_template_names():
        raise DataError(f"unknown chat template `{choice}`", f"bundled: {', '.join(BUNDLED)}")
    spec = BUNDLED[choice]
    missing = [t for t in spec.special_tokens if not has_token(t)]
    if missing:
        usable = [n for n in BUNDLED if all(has_token(t) for t in BUNDLED[n].special_tokens)]
        raise DataError(f"chat_template = \"{choice}\" writes special tokens the tokenizer does not have "
                        f"({', '.join(missing)}); new tokens would start untrained",
                        f"use a template this tokenizer supports: {', '.join(['auto'] + usable)}")
    end = spec.end_of_turn or eos_token
    if not end:
        raise DataError(f"chat_template = \"{choice}\" ends replies with the eos token, and the tokenizer has none",
                        "set eos_token in the model's tokenizer_config.json")
    return ChatTemplate(choice, chat_template_text(choice), end)


SYSTEM_LEFT_OUT = ("left out of conversations that end with a reply (the chat template writes it before the "
                   "last user turn of a prompt only, as Mistral's do): not trained on")


def system_turns(template: ChatTemplate | None, bos: str | None, eos: str | None, count: int) -> dict | None:
    """What becomes of the data's `count` system turns under this template: kept, merged into the
    first user turn (Gemma: no system role) or left out by the template itself (Mistral: only before
    the last user turn). None when the data has none."""
    if not count or template is None:
        return None
    handling = "kept"
    if lacks_system_role(template.source, bos, eos):
        handling = SYSTEM_RULE
    else:
        probe = [{"role": "system", "content": "SLOTHCTL-SYSTEM-7f3a"}, {"role": "user", "content": "Hi"},
                 {"role": "assistant", "content": "Hello"}]
        try:
            if "SLOTHCTL-SYSTEM-7f3a" not in render(template.source, probe, bos_token=bos, eos_token=eos):
                handling = SYSTEM_LEFT_OUT
        except Exception:  # noqa: BLE001 - a template that rejects the probe says so on the data itself
            pass
    return {"turns": count, "handling": handling}


_PAD_NAME = re.compile(r"pad", re.IGNORECASE)
_RESERVED_NAME = re.compile(r"reserved|unused", re.IGNORECASE)
NEW_PAD_TOKEN = "<|pad|>"


def choose_pad_token(current: str | None, taken: set, unk: str | None, special_tokens: list[str],
                     template: str = "") -> str:
    """A pad token that is none of `taken` (eos, end of turn, bos), so padding never hides the end of a reply.

    Keep a distinct existing pad; else an unused special token (one named *pad*, then unk, then a
    reserved/unused one, then any special token the template does not write); else NEW_PAD_TOKEN,
    which the caller must add to the vocabulary."""
    taken = {t for t in taken if t}
    if current and current not in taken:
        return current
    free = [t for t in special_tokens if t not in taken and t not in template]
    for candidates in ([t for t in free if _PAD_NAME.search(t)], [unk] if unk and unk not in taken else [],
                       [t for t in free if _RESERVED_NAME.search(t)], free):
        if candidates:
            return candidates[0]
    return NEW_PAD_TOKEN


def template_or_none(choice: str, own_template: str | None, eos_token: str | None,
                     has_token: Callable[[str], bool], specials: Collection[str] = ()) -> ChatTemplate | None:
    """The template a conversation dataset would use, or None where that choice is an error (the data
    pipeline reports it for conversation data; text data never uses a template)."""
    try:
        return choose_chat_template(choice, own_template, eos_token, has_token, specials)
    except DataError:
        return None


def choose_for_text_tokenizer(choice: str, tok) -> ChatTemplate:
    """`choose_chat_template` for the data pipeline's light tokenizer (data.tokenizer.TextTokenizer)."""
    return choose_chat_template(choice, tok.chat_template, tok.eos_token, tok.has_token, tok.special_tokens)


def template_or_none_for_text(choice: str, tok) -> ChatTemplate | None:
    return template_or_none(choice, tok.chat_template, tok.eos_token, tok.has_token, tok.special_tokens)


def pad_for(template: ChatTemplate | None, current: str | None, eos: str | None, bos: str | None,
            unk: str | None, special_tokens: list[str]) -> str:
    taken = {eos, bos, template.end_of_turn if template else None}
    return choose_pad_token(current, taken, unk, special_tokens, template.source if template else "")


# ---- the transformers tokenizer used in training (backends call these) ------------------------------------------

def _hf_has_token(tokenizer) -> Callable[[str], bool]:
    vocab = tokenizer.get_vocab()

    def has_token(token: str) -> bool:
        return token in vocab and tokenizer.encode(token, add_special_tokens=False) == [vocab[token]]

    return has_token


def _hf_specials(tokenizer) -> list[str]:
    """The added special tokens in id order: what the light tokenizer calls special_tokens."""
    return [t.content for _, t in sorted(tokenizer.added_tokens_decoder.items()) if t.special]


def choose_for_hf_tokenizer(choice: str, tokenizer) -> ChatTemplate:
    """`choose_chat_template` for a transformers tokenizer (chat and export, which load one)."""
    return choose_chat_template(choice, tokenizer.chat_template, tokenizer.eos_token, _hf_has_token(tokenizer),
                                _hf_specials(tokenizer))


def configure_hf_tokenizer(chat_template: str, tokenizer, model=None) -> str:
    """Give the training tokenizer a pad token distinct from eos (and from the end-of-turn token of
    [data] `chat_template`), exactly the one `data inspect` reports; add it (and grow the embeddings
    if needed) only when the vocabulary has no unused token. Returns the pad token."""
    specials = _hf_specials(tokenizer)
    template = template_or_none(chat_template, tokenizer.chat_template, tokenizer.eos_token,
                                _hf_has_token(tokenizer), specials)
    pad = pad_for(template, tokenizer.pad_token, tokenizer.eos_token, tokenizer.bos_token, tokenizer.unk_token,
                  specials)
    if pad != tokenizer.pad_token:
        if pad == NEW_PAD_TOKEN:
            tokenizer.add_special_tokens({"pad_token": pad})
        else:
            tokenizer.pad_token = pad
    if model is not None:
        embeddings = model.get_input_embeddings()
        if embeddings is not None and len(tokenizer) > embeddings.num_embeddings:
            model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64, mean_resizing=False)
        for config in (model.config, getattr(model, "generation_config", None)):
            if config is not None:
                config.pad_token_id = tokenizer.pad_token_id
    return pad


def apply_template(tokenizer, template: ChatTemplate | None) -> None:
    """Before saving the adapter: the chat template used in training, and its end-of-turn token as
    eos (what the template ends replies with: Gemma's `<end_of_turn>`, not `<eos>`), so chat, merge,
    generation_config and the GGUF all stop where training did."""
    if template is None:
        return
    tokenizer.chat_template = template.source
    if template.end_of_turn != tokenizer.eos_token and _hf_has_token(tokenizer)(template.end_of_turn):
        tokenizer.eos_token = template.end_of_turn
