"""`slothctl chat`: talk to a trained model, for quick checks by people and scripts.

The target is the run's final adapter on its base model (or a checkpoint, another adapter, a merged
or base model folder, or a GGUF file through llama.cpp). Each turn renders the whole conversation
with the chat template the model was trained with and generates from those tokens, so the model sees
exactly the layout it learned; generation stops at the template's end-of-turn token.

Nothing heavy is imported at module level: Unsloth must be imported before transformers in its
process, and that is the backend module's job (`backends.get`).
"""

from __future__ import annotations

import codecs
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from slothctl import backends, libraries, models
from slothctl.backends import LoadOptions
from slothctl.config import Config, ModelConfig
from slothctl.data.templates import choose_for_hf_tokenizer
from slothctl.data.chat_template import after_reply, fold_system, lacks_system_role, render
from slothctl.errors import UsageError
from slothctl.events import Emit, Event, ignore, status, warning
from slothctl.resources import chat_template_text
from slothctl.runs import adapter_info, resolve_adapter

OnText = Callable[[str], None]
COMMANDS = {  # the REPL's commands, for its /help
    "/reset": "forget the conversation (the system prompt stays)",
    "/system": "/system TEXT sets the system prompt; /system alone restores the default",
    "/help": "show these commands",
    "/exit": "leave (Ctrl-D too); Ctrl-C stops the current answer",
}


@dataclass
class Settings:
    """Generation settings ([chat] in the TOML, overridden by flags)."""

    max_new_tokens: int
    temperature: float
    top_p: float
    min_p: float
    repetition_penalty: float
    seed: int
    context_length: int

    @classmethod
    def from_config(cls, cfg: Config) -> Settings:
        c = cfg.chat
        return cls(c.max_new_tokens, c.temperature, c.top_p, c.min_p, c.repetition_penalty, c.seed, c.context_length)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class Reply:
    text: str
    tokens: int  # generated, the end-of-turn token included
    prompt_tokens: int
    seconds: float
    finish_reason: str  # "stop" (end of turn), "length" (max_new_tokens) or "interrupted" (Ctrl-C)

    def to_json(self) -> dict[str, Any]:
        return {"answer": self.text, "tokens": self.tokens, "prompt_tokens": self.prompt_tokens,
                "seconds": round(self.seconds, 3), "tokens_per_s": round(self.tokens / max(self.seconds, 1e-9), 1),
                "finish_reason": self.finish_reason}


# ---- what to talk to ------------------------------------------------------------------------------------------

@dataclass
class Target:
    """`kind` is adapter (LoRA on `base`), model (a folder or hub id) or gguf (a file for llama.cpp)."""

    kind: str
    path: str
    base: str | None = None
    run_config: Path | None = None  # config.toml of the run an adapter came from, when known

    @property
    def label(self) -> str:
        return f"{self.path} on {self.base}" if self.kind == "adapter" else self.path


def resolve_target(cfg: Config, *, adapter: Path | None = None, model: str | None = None,
                   gguf: Path | None = None, checkpoint: int | None = None) -> Target:
    """Decide what to load, checking every path first (exit 2 before any model is loaded)."""
    given = [name for name, value in (("--adapter", adapter), ("--model", model), ("--gguf", gguf),
                                      ("--checkpoint", checkpoint)) if value is not None]
    if len(given) > 1:
        raise UsageError(f"{' and '.join(given)} cannot be used together", "choose one thing to chat with")
    if gguf is not None:
        path = Path(gguf).expanduser()
        if not path.is_file():
            raise UsageError(f"--gguf {path}: no such file", "pass a .gguf file, e.g. runs/<name>/gguf/*.gguf")
        with open(path, "rb") as handle:
            if handle.read(4) != b"GGUF":
                raise UsageError(f"--gguf {path} is not a GGUF file")
        return Target("gguf", str(path))
    if model is not None:
        if not models.is_embedded(model):  # (an embedded model is checked, and converted, when it loads)
            models.resolve(model, cfg.project_dir)  # a missing folder or a malformed id: exit 2 now
        return Target("model", model)
    path = resolve_adapter(cfg.run_dir, adapter, checkpoint)
    run_config = path.parent / "config.toml"
    base = adapter_info(path).get("base_model")
    if base is None and run_config.is_file():
        from slothctl import config as config_mod

        base = config_mod.load(run_config).model.name
    return Target("adapter", str(path), base or cfg.model.name, run_config if run_config.is_file() else None)


def _for_model(cfg: Config, name: str) -> ModelConfig:
    """[model] with its name swapped; the hub revision only applies to the configured model."""
    if name == cfg.model.name:
        return cfg.model
    return dataclasses.replace(cfg.model, name=name, revision="")


# ---- conversations ----------------------------------------------------------------------------------------------

@dataclass
class Conversation:
    template: str
    system: str = ""
    turns: list[dict] = field(default_factory=list)  # user/assistant messages, oldest first

    def messages(self, user: str | None = None) -> list[dict]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        tail = [{"role": "user", "content": user}] if user is not None else []
        return head + self.turns + tail


def render_prompt(template: str, messages: list[dict], bos: str | None, eos: str | None) -> str:
    """The prompt text; a system prompt goes into the first user turn where the template has no system
    role (Gemma), exactly as the training data was rendered."""
    if messages and messages[0]["role"] == "system" and lacks_system_role(template, bos, eos):
        messages = fold_system(messages)
    try:
        return render(template, messages, add_generation_prompt=True, bos_token=bos, eos_token=eos)
    except Exception as exc:  # noqa: BLE001 - jinja raises many kinds; all mean "cannot render"
        raise UsageError(f"the chat template cannot render this conversation: {exc}") from None


def end_of_turn_text(template: str, bos: str | None, eos: str | None) -> str:
    """What the template writes right after an assistant reply (`<|im_end|>`, `<|eot_id|>`, eos…)."""
    return after_reply(template, bos, eos).strip()


class Engine(Protocol):
    """A loaded model that turns prompt text into a streamed reply."""

    template: str
    bos: str | None
    eos: str | None
    context_length: int

    def tokenize(self, text: str) -> list[int]: ...

    def generate(self, ids: list[int], settings: Settings, max_new_tokens: int, seed: int,
                 on_text: OnText | None) -> tuple[str, int, str]: ...


@dataclass
class Chat:
    """One conversation with one engine: history, system prompt, and trimming to fit the context."""

    name: str  # "tuned", "base" or "model"
    label: str
    engine: Engine
    settings: Settings
    conversation: Conversation
    emit: Emit = ignore
    turn: int = 0

    def reset(self) -> None:
        self.conversation.turns.clear()

    def set_system(self, text: str) -> None:
        self.conversation.system = text

    @property
    def context(self) -> int:
        return min(self.settings.context_length, self.engine.context_length)

    def _prompt_ids(self, user: str) -> list[int]:
        """The prompt's tokens, dropping the oldest turns until it leaves room to answer."""
        limit = self.context
        dropped = 0
        while True:
            text = render_prompt(self.conversation.template, self.conversation.messages(user),
                                 self.engine.bos, self.engine.eos)
            ids = self.engine.tokenize(text)
            room = limit - len(ids)
            if room >= min(self.settings.max_new_tokens, limit // 4) or not self.conversation.turns:
                break
            del self.conversation.turns[:2]
            dropped += 1
        if dropped:
            warning(self.emit, f"dropped the {dropped} oldest turn(s) to fit {limit} tokens of context")
        if room < 1:
            raise UsageError(f"the prompt is {len(ids)} tokens, more than the context of {limit}",
                             "shorten it or raise [chat] context_length")
        return ids

    def ask(self, text: str, on_text: OnText | None = None) -> Reply:
        """Answer `text` in this conversation, streaming the answer through `on_text`."""
        ids = self._prompt_ids(text)
        max_new_tokens = min(self.settings.max_new_tokens, self.context - len(ids))
        started = time.perf_counter()
        answer, tokens, finish = self.engine.generate(ids, self.settings, max_new_tokens,
                                                      self.settings.seed + self.turn, on_text)
        seconds = time.perf_counter() - started
        self.turn += 1
        self.conversation.turns += [{"role": "user", "content": text}, {"role": "assistant", "content": answer}]
        return Reply(answer, tokens, len(ids), seconds, finish)


def parse_command(line: str) -> tuple[str, str] | None:
    """`/name argument` → (name, argument) for the REPL; None for a line to send to the model.

    A line starting with `//` is sent with one slash removed."""
    stripped = line.strip()
    if not stripped.startswith("/") or stripped.startswith("//"):
        return None
    name, _, argument = stripped.partition(" ")
    return name.lower(), argument.strip()


def user_text(line: str) -> str:
    stripped = line.strip()
    return stripped[1:] if stripped.startswith("//") else stripped


# ---- engines ----------------------------------------------------------------------------------------------------

def _stop_ids(tokenize: Callable[[str], list[int]], end_of_turn: str, eos_ids: list[int]) -> list[int]:
    """eos and the template's end-of-turn token (when that is a single token)."""
    ids = [i for i in eos_ids if i is not None]
    if end_of_turn:
        tokens = tokenize(end_of_turn)
        if len(tokens) == 1 and tokens[0] not in ids:
            ids.append(tokens[0])
    return ids


class HFEngine:
    """transformers (+ PEFT) generation; `use_adapter=False` runs the same PeftModel without its adapter."""

    def __init__(self, model, tokenizer, template: str, use_adapter: bool = True):
        self.model, self.tokenizer, self.template = model, tokenizer, template
        self.use_adapter = use_adapter
        self.bos, self.eos = tokenizer.bos_token, tokenizer.eos_token
        self.context_length = int(getattr(model.config, "max_position_embeddings", 0) or 2048)
        generation_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos_ids = [tokenizer.eos_token_id] + (generation_eos if isinstance(generation_eos, list) else [generation_eos])
        self.stop_ids = _stop_ids(self.tokenize, end_of_turn_text(template, self.bos, self.eos), eos_ids)
        if not self.stop_ids:
            raise UsageError("the tokenizer has no end-of-sequence token, so answers would never stop",
                             "use a chat model or a tokenizer with eos_token set")

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)  # the template writes special tokens

    def generate(self, ids, settings, max_new_tokens, seed, on_text):
        import contextlib

        import torch
        from transformers import GenerationConfig, TextStreamer

        class Stream(TextStreamer):
            """Keeps the generated ids (for the count, and the text if Ctrl-C cuts generation short)."""

            def __init__(self, tokenizer):
                super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
                self.generated: list[int] = []

            def put(self, value):
                if not self.next_tokens_are_prompt:
                    self.generated.extend(value.reshape(-1).tolist())
                super().put(value)

            def on_finalized_text(self, text, stream_end=False):
                if on_text and text:
                    on_text(text)

        stream = Stream(self.tokenizer)
        options = dict(max_new_tokens=max_new_tokens, do_sample=not settings.greedy,
                       repetition_penalty=settings.repetition_penalty, eos_token_id=self.stop_ids,
                       pad_token_id=self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None
                       else self.stop_ids[0])
        if not settings.greedy:
            options.update(temperature=settings.temperature, top_p=settings.top_p, min_p=settings.min_p or None)
        device = next(self.model.parameters()).device
        input_ids = torch.tensor([ids], device=device)
        adapter_off = self.model.disable_adapter() if not self.use_adapter else contextlib.nullcontext()
        torch.manual_seed(seed)
        finish = None
        try:
            with adapter_off, torch.inference_mode():
                self.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                    generation_config=GenerationConfig(**options), streamer=stream)
        except KeyboardInterrupt:
            finish = "interrupted"
        generated = stream.generated
        if finish is None:
            finish = "stop" if generated and generated[-1] in self.stop_ids else "length"
        content = [t for t in generated if t not in self.stop_ids]
        return self.tokenizer.decode(content, skip_special_tokens=True), len(generated), finish


class LlamaEngine:
    """llama.cpp generation of a GGUF file, with the chat template stored in the file."""

    def __init__(self, llm, template: str, context_length: int):
        self.llm, self.template, self.context_length = llm, template, context_length
        self.bos = self._text(llm.token_bos())
        self.eos = self._text(llm.token_eos())
        self.stop_ids = _stop_ids(self.tokenize, end_of_turn_text(template, self.bos, self.eos), [llm.token_eos()])

    def _text(self, token: int) -> str | None:
        return self.llm.detokenize([token], special=True).decode("utf-8", "replace") if token >= 0 else None

    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def generate(self, ids, settings, max_new_tokens, seed, on_text):
        self.llm.set_seed(seed)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pieces: list[str] = []
        generated: list[int] = []
        finish = "length"
        try:
            for token in self.llm.generate(ids, temp=settings.temperature, top_p=settings.top_p, top_k=0,
                                           min_p=settings.min_p, repeat_penalty=settings.repetition_penalty,
                                           reset=True):
                generated.append(token)
                if token in self.stop_ids:
                    finish = "stop"
                    break
                piece = decoder.decode(self.llm.detokenize([token]))
                if piece:
                    pieces.append(piece)
                    if on_text:
                        on_text(piece)
                if len(generated) >= max_new_tokens:
                    break
        except KeyboardInterrupt:
            finish = "interrupted"
        tail = decoder.decode(b"", final=True)
        if tail and on_text:
            on_text(tail)
        return "".join(pieces) + tail, len(generated), finish


# ---- loading ----------------------------------------------------------------------------------------------------

def _adapter_template(target: Target, tokenizer, cfg: Config) -> str:
    """The template saved with a final adapter, else the one its run's config chose (checkpoints)."""
    if adapter_info(Path(target.path)) and tokenizer.chat_template:
        return tokenizer.chat_template
    choice = cfg.data.chat_template
    if target.run_config is not None:
        from slothctl import config as config_mod

        choice = config_mod.load(target.run_config).data.chat_template
    return choose_for_hf_tokenizer(choice, tokenizer).source


def _load_hf(cfg: Config, target: Target, compare: bool, emit: Emit) -> list[tuple[str, str, Engine]]:
    backend = backends.get(backends.select(cfg.model.backend))  # imports unsloth first on that backend
    libraries.quiet()  # library notices (bitsandbytes' CPU kernels, generation hints) would mix with the answers
    options = LoadOptions.of(cfg)
    if target.kind == "adapter":
        base_cfg = _for_model(cfg, target.base)
        resolved = models.resolve(target.base, cfg.project_dir, emit)
        model, tokenizer = backend.load_adapter(base_cfg, resolved.path, target.path, options, emit)
        model = backend.for_inference(model)
        template = _adapter_template(target, tokenizer, cfg)
        tuned = ("tuned", target.label, HFEngine(model, tokenizer, template))
        if not compare:
            return [tuned]
        return [("base", target.base, HFEngine(model, tokenizer, template, use_adapter=False)), tuned]
    resolved = models.resolve(target.path, cfg.project_dir, emit)
    model, tokenizer = backend.load(_for_model(cfg, target.path), resolved.path, options, emit)
    model = backend.for_inference(model)
    template = choose_for_hf_tokenizer("auto", tokenizer).source
    engine = HFEngine(model, tokenizer, template)
    if not compare:
        return [("model", target.path, engine)]
    base_resolved = models.resolve(cfg.model.name, cfg.project_dir, emit)
    base_model, base_tokenizer = backend.load(cfg.model, base_resolved.path, options, emit)
    base = HFEngine(backend.for_inference(base_model), base_tokenizer, template)  # same prompt layout
    return [("base", cfg.model.name, base), ("tuned", target.path, engine)]


def _load_gguf(cfg: Config, target: Target, emit: Emit) -> Engine:
    try:
        import llama_cpp
    except ImportError:
        raise UsageError("chatting with a GGUF file needs llama-cpp-python",
                         "pip install 'slothctl[gguf]'") from None
    status(emit, f"Loading {target.path} with llama.cpp")
    try:
        llm = llama_cpp.Llama(model_path=target.path, n_ctx=cfg.chat.context_length, verbose=False)
    except (ValueError, RuntimeError) as exc:
        raise UsageError(f"llama.cpp cannot load {target.path}: {exc}") from None
    template = llm.metadata.get("tokenizer.chat_template") or chat_template_text("chatml")
    return LlamaEngine(llm, template, llm.n_ctx())


def open_chats(cfg: Config, target: Target, compare: bool = False, emit: Emit = ignore) -> list[Chat]:
    """Load the target and return one Chat, or [base, tuned] with `compare`."""
    if compare and target.kind == "gguf":
        raise UsageError("--compare needs the run's adapter, --adapter, --checkpoint or --model",
                         "a GGUF file has no base model to compare with in the same process")
    if compare and target.kind == "model" and target.path == cfg.model.name:
        raise UsageError("--compare with --model needs a model other than [model] name, which is the base")
    settings = Settings.from_config(cfg)
    if target.kind == "gguf":
        engines = [("model", target.path, _load_gguf(cfg, target, emit))]
    else:
        engines = _load_hf(cfg, target, compare, emit)
    chats = [Chat(name, label, engine, settings, Conversation(engine.template, cfg.chat.system_prompt), emit)
             for name, label, engine in engines]
    emit(Event("ready", {"models": {c.name: c.label for c in chats}}, f"Chatting with {chats[-1].label}"))
    return chats
