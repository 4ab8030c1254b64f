"""The project TOML: one schema (sections, keys, types, defaults, docs), loading, overrides.

Every key is declared once, below, with its type, default, allowed values and the
sentence that documents it. The templates written by `slothctl init`, the README's
TOML reference and the validation all come from these declarations.

Nothing heavy is imported here: a config is validated before any model loads.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

from slothctl.errors import ConfigError

DEFAULT_CONFIG_NAME = "slothctl.toml"
EMBEDDED_MODEL = "embedded:smollm2-135m"
SEVEN_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
REQUIRED = object()  # marks a key without a default
INT64_MAX = 2**63 - 1  # TOML integers are 64-bit; Python would take any size and fail later, far away
SEED_MAX = 2**32 - 1  # numpy's and llama.cpp's seeds are 32-bit unsigned
NAME_MAX_BYTES = 255  # the longest file or folder name of common file systems


def key(default: Any, doc: str, *, choices: tuple | None = None, min: float | None = None,
        max: float | None = None, min_exclusive: bool = False, unsloth: str = "", max_why: str = "") -> Any:
    """Declare one TOML key. `unsloth` says how the default compares with the Unsloth recipes;
    `max_why` says which consumer sets the maximum (shown when a value exceeds it)."""
    meta = {"doc": doc, "choices": choices, "min": min, "max": max, "max_why": max_why,
            "min_exclusive": min_exclusive, "unsloth": unsloth, "required": default is REQUIRED}
    if default is REQUIRED:
        return field(default=None, metadata=meta)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ModelConfig:
    """[model]: which model to fine-tune and how to load it."""

    name: str = key(REQUIRED, "Model to fine-tune: `embedded:smollm2-135m` (bundled, offline), a local "
                    "folder with config.json, or a Hugging Face hub id such as `unsloth/Llama-3.2-1B-Instruct`.")
    max_seq_length: int = key(2048, "Longest sequence in tokens; longer rows are truncated (and counted).",
                              min=16, max=1_048_576, unsloth="same as the Unsloth notebooks (2048)")
    load_in_4bit: bool = key(False, "Load the base model in 4-bit (QLoRA). Needs CUDA.",
                             unsloth="the notebooks default to true; we default to false because 4-bit needs "
                                     "CUDA and costs accuracy on small models (the qlora-8b template turns it on)")
    load_in_8bit: bool = key(False, "Load the base model in 8-bit. Needs CUDA. Exclusive with load_in_4bit.")
    dtype: str = key("auto", "Compute dtype: `auto` is bfloat16 on GPUs that support it, else float16; on "
                     "CPU, bfloat16 mixed precision where the CPU has native bf16 (AVX512-BF16, AMX), else "
                     "float32.", choices=("auto", "bfloat16", "float16", "float32"))
    backend: str = key("auto", "Training engine: `unsloth` (CUDA), `hf` (transformers + PEFT, any device) "
                       "or `auto` (unsloth when CUDA is present and it imports, else hf).",
                       choices=("auto", "unsloth", "hf"))
    revision: str = key("", "Hub revision (branch, tag or commit) of a hub model; empty for the default branch.")
    trust_remote_code: bool = key(False, "Allow a hub model to run its own Python code. Leave off unless "
                                  "you trust the model's authors.")


@dataclass
class LoraConfig:
    """[lora]: the low-rank adapter that is trained instead of the full model."""

    r: int = key(16, "Rank of the LoRA matrices: higher learns more and uses more memory (8-64 is usual).",
                 min=1, max=4096, unsloth="same (16)")
    alpha: int = key(16, "LoRA scaling numerator; the update is scaled by alpha/r (or alpha/sqrt(r) with rsLoRA).",
                     min=1, max=65536, unsloth="same (16)")
    dropout: float = key(0.0, "Dropout on the LoRA input. 0 is fastest (Unsloth's kernels need it).",
                         min=0.0, max=0.9, unsloth="same (0)")
    bias: str = key("none", "Which biases to train.", choices=("none", "all", "lora_only"), unsloth="same")
    target_modules: list[str] = key(SEVEN_PROJECTIONS, "Linear layers that get adapters: the attention "
                                    "and MLP projections by default.", unsloth="same seven projections")
    use_rslora: bool = key(False, "Rank-stabilised LoRA: scale by alpha/sqrt(r); helps at high ranks.",
                           unsloth="same")


@dataclass
class DataConfig:
    """[data]: what the model is trained on."""

    source: str = key(REQUIRED, "Training data: a .jsonl/.json/.csv/.parquet/.txt file, a folder of them "
                      "(relative to this file), or a hub dataset id `org/name`.")
    format: str = key("auto", "Row format; `auto` detects it from the columns.",
                      choices=("auto", "sharegpt", "messages", "alpaca", "prompt_completion", "text"))
    split: str = key("train", "Split of a hub dataset to use (local files have no splits).")
    subset: str = key("", "Subset (configuration) of a hub dataset; empty for the default.")
    columns: dict[str, str] = key({}, "Rename columns before detection, e.g. `{ question = \"instruction\" }`.")
    chat_template: str = key("auto", "Chat template: `auto` uses the tokenizer's own; for a tokenizer without one "
                             "(a base model), the first bundled template whose special tokens it has (chatml, "
                             "llama-3), else alpaca. `chatml`, `llama-3` or `alpaca` force one (refused when the "
                             "tokenizer lacks its special tokens). Saved with the adapter.",
                             choices=("auto", "chatml", "llama-3", "alpaca"))
    train_on_responses_only: bool = key(True, "Compute the loss on assistant replies only, not on prompts.",
                                        unsloth="same as the notebooks' train_on_responses_only")
    eval_fraction: float = key(0.0, "Fraction of rows held out for evaluation (0 = no evaluation).",
                               min=0.0, max=0.5)
    seed: int = key(3407, "Seed of the train/eval split.", min=0)
    num_proc: int = key(1, "Processes that render and tokenize (1 = in process; tokenization itself already "
                        "uses every core). Worth it for datasets of 100k rows and more.", min=1, max=256)
    max_rows: int = key(0, "Use only the first N rows (0 = all). Handy for a quick trial.", min=0)
    strict: bool = key(False, "Stop with an error instead of dropping rows that are invalid, empty or have "
                       "nothing to train on (they are always counted and reported).")


@dataclass
class TrainConfig:
    """[train]: the optimisation loop."""

    batch_size: int = key(2, "Rows per device per step as configured; with gradient_accumulation_steps it sets "
                          "the effective batch (rows per optimizer update), which micro_batch never changes.",
                          min=1, max=65536, unsloth="same (2)")
    gradient_accumulation_steps: int = key(4, "Steps whose gradients are summed before an update; the "
                                           "effective batch is batch_size x this.", min=1, max=65536,
                                           unsloth="same (4)")
    micro_batch: int | str = key("auto", "Rows the GPU processes at once. `auto`: on CUDA the largest that fits "
                                 "max_vram_fraction by the memory estimate (accumulation lowered to keep the "
                                 "effective batch; gradient checkpointing off when the run fits and is faster "
                                 "without it), halved on an out-of-memory error; on CPU, batch_size. An integer "
                                 "fixes it; it must divide batch_size x gradient_accumulation_steps.",
                                 choices=("auto",), min=1, max=65536,
                                 unsloth="the notebooks fix 2 x 4 accumulation steps, which leaves a large GPU "
                                         "mostly idle")
    max_vram_fraction: float = key(0.85, "Share of the GPU's memory `micro_batch = \"auto\"` plans to use (the "
                                   "estimate's peak, CUDA context included).", min=0.1, max=1.0)
    learning_rate: float = key(2e-4, "Peak learning rate.", min=0.0, max=1.0, min_exclusive=True,
                               unsloth="same (2e-4)")
    lr_scheduler: str = key("cosine", "Learning-rate schedule after warmup.",
                            choices=("cosine", "linear", "constant", "constant_with_warmup"),
                            unsloth="the notebooks use linear; cosine ends lower and is the common choice "
                                    "for longer runs")
    warmup_ratio: float = key(0.06, "Fraction of the steps spent warming the learning rate up.",
                              min=0.0, max=1.0,
                              unsloth="the notebooks use warmup_steps=5, which only suits 60-step demos; a "
                                      "ratio scales with the run")
    weight_decay: float = key(0.01, "AdamW weight decay.", min=0.0, max=1.0, unsloth="same (0.01)")
    max_grad_norm: float = key(1.0, "Gradient clipping norm (0 disables clipping).", min=0.0)
    max_steps: int = key(0, "Stop after this many optimizer steps (0 = run `epochs` epochs).", min=0)
    epochs: float = key(1.0, "Passes over the training data when max_steps is 0.", min=0.0, max=10000.0,
                        min_exclusive=True)
    optim: str = key("auto", "Optimizer: `auto` is adamw_torch_fused on CUDA (faster than adamw_8bit over "
                     "LoRA weights; adamw_8bit saves 6 bytes of state per LoRA weight) and adamw_torch on CPU.",
                     choices=("auto", "adamw_8bit", "adamw_torch", "adamw_torch_fused", "paged_adamw_8bit",
                              "sgd", "adafactor"), unsloth="adamw_8bit, as the notebooks use")
    save_steps: int = key(50, "Write a checkpoint every N steps and at the last step, for `slothctl resume` "
                          "(0 = only the final adapter; Ctrl-C still saves one).", min=0)
    save_total_limit: int = key(3, "Keep the newest N checkpoints (the final adapter is kept apart).", min=1)
    eval_steps: int = key(0, "Evaluate every N steps (0 = at every save). Needs data.eval_fraction > 0.",
                          min=0)
    skip_eval: bool = key(False, "Never evaluate, even with an eval split (faster runs).")
    early_stopping_patience: int = key(0, "Stop when eval loss has not improved for N evaluations (0 = off). "
                                       "The final adapter is the one of the step where training stopped.", min=0)
    logging_steps: int = key(1, "Report loss and speed every N steps.", min=1)
    seed: int = key(3407, "Seed for LoRA initialisation, data order and dropout.", min=0, max=SEED_MAX,
                    max_why="transformers seeds numpy with it, and numpy's seed is 32-bit", unsloth="same (3407)")
    gradient_checkpointing: bool = key(True, "Recompute activations in the backward pass: much less memory, "
                                       "~20% slower. Unsloth's offloaded variant is used on that backend.",
                                       unsloth="same (\"unsloth\")")
    packing: bool = key(False, "Pack several short rows into each sequence of max_seq_length.",
                        unsloth="same (false)")
    batching: str = key("auto", "How rows of different lengths share a batch. `auto` picks what measured "
                        "fastest: on a GPU, padding-free with FlashAttention or when all rows have one length, "
                        "else padded batches of similar-length rows; on CPU, padded batches. `padded`, "
                        "`length_grouped` or `padding_free` force one.",
                        choices=("auto", "padded", "length_grouped", "padding_free"))
    gpus: int | str = key(1, "Data-parallel ranks on this machine, started through torchrun: each GPU trains on "
                          "its share of every batch, so the global batch is batch_size x gradient_accumulation_steps "
                          "x gpus. `auto` uses every visible CUDA GPU (1 on a machine without one). On a machine "
                          "without CUDA a number N starts N CPU processes (gloo), which is slower than one: it is "
                          "there to try the setup.", choices=("auto",), min=1, max=1024)
    report_to: str = key("none", "Experiment tracker: `tensorboard` writes to <run>/tensorboard/; `wandb` needs "
                         "the wandb extra and logs offline (WANDB_MODE=offline) unless you are logged in.",
                         choices=("none", "tensorboard", "wandb"))


@dataclass
class OutputConfig:
    """[output]: where runs are written."""

    dir: str = key("runs", "Folder that holds the run folders (relative to this file).")
    name: str = key("run", "Run name: everything of this run goes to <dir>/<name>/.")


@dataclass
class ChatConfig:
    """[chat]: generation settings for `slothctl chat`."""

    max_new_tokens: int = key(256, "Longest answer in tokens.", min=1, max=1_000_000)
    temperature: float = key(0.7, "Sampling temperature (0 = greedy and reproducible).", min=0.0, max=10.0)
    top_p: float = key(1.0, "Nucleus sampling: keep the smallest set of tokens with this total probability.",
                       min=0.0, max=1.0, min_exclusive=True)
    min_p: float = key(0.1, "Drop tokens less likely than min_p x the top token's probability.",
                       min=0.0, max=1.0, unsloth="same as the notebooks' inference cells (0.1)")
    repetition_penalty: float = key(1.0, "Penalty on repeated tokens (1 = none).", min=0.5, max=10.0)
    seed: int = key(3407, "Sampling seed.", min=0, max=SEED_MAX, max_why="llama.cpp's sampling seed (chat --gguf) "
                    "is 32-bit")
    system_prompt: str = key("", "System message put before every conversation (empty = the template's default).")
    context_length: int = key(4096, "Tokens of conversation kept (prompt + answer); the oldest turns are dropped "
                              "to fit. Also the llama.cpp context size for `--gguf`.", min=64, max=1_048_576)


@dataclass
class ExportConfig:
    """[export]: `slothctl merge` and `slothctl export`."""

    quant: list[str] = key(["q4_k_m"], "GGUF files that `export gguf` writes: f16, bf16 and q8_0 (llama.cpp's "
                           "converter) and q4_k_m (its quantizer, from f16).",
                           choices=("f16", "bf16", "q8_0", "q4_k_m"), unsloth="same default (q4_k_m)")
    precision: str = key("16bit", "What `slothctl merge` writes: `16bit` (the merge done in float32, stored in 16 bits: "
                         "see dtype), `32bit` (float32: identical to the adapter, twice the size), "
                         "`4bit` (CUDA: that float32 merge quantized to NF4) or `lora` (the adapter alone).",
                         choices=("16bit", "32bit", "4bit", "lora"), unsloth="same default (merged_16bit)")
    dtype: str = key("auto", "16-bit format of a `16bit` merge: `auto` is float16 when every merged weight fits "
                     "it, else bfloat16. float16 has 8x finer steps, so the small update a LoRA makes survives "
                     "the rounding (on the bundled model bfloat16 keeps a third of it and changes the answers); "
                     "choose bfloat16 for models that overflow in float16 (e.g. Gemma).",
                     choices=("auto", "float16", "bfloat16"),
                     unsloth="Unsloth's merged_16bit keeps the model's dtype (bfloat16 on recent GPUs)")


@dataclass
class HubConfig:
    """[hub]: `slothctl push`."""

    repo_id: str = key("", "Default repository for `slothctl push`, e.g. `me/my-model`.")
    private: bool = key(True, "Create new repositories private.")


@dataclass
class RemoteConfig:
    """[remote]: `--remote modal`: train, merge and export on a cloud GPU (needs `pip install 'slothctl[modal]'`)."""

    provider: str = key("modal", "Cloud service `--remote` runs on.", choices=("modal",))
    gpu: str = key("L40S", "GPU as Modal names it: `L40S`, `A100-80GB`, `H100`, `H200`, `B200`, ...; `TYPE:N` reserves "
                   "N of them (slothctl trains on one so far).")
    timeout_hours: float = key(6.0, "Longest one attempt may run before Modal stops it.", min=0.0, max=24.0,
                               min_exclusive=True)
    retries: int = key(3, "Attempts Modal makes again after a failed one; each continues from the newest checkpoint "
                       "(a preempted attempt is restarted as well).", min=0, max=10)
    volume: str = key("slothctl-runs", "Modal Volume that holds the run folders; it is mounted where [output] dir "
                      "points, so runs/<name>/ looks the same there as here (`slothctl pull` copies it back).")
    cache_volume: str = key("slothctl-cache", "Modal Volume for downloaded models and datasets and slothctl's cache, "
                            "kept between runs.")
    secrets: list[str] = key([], "Modal Secrets whose variables the remote run sees, e.g. one holding HF_TOKEN "
                             "or WANDB_API_KEY.")
    python: str = key("3.11", "Python version of the remote image.", choices=("3.11", "3.12", "3.13"))


@dataclass
class Config:
    """The whole project file. `source` is the file it came from (for messages and relative paths)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    chat: ChatConfig = field(default_factory=ChatConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    hub: HubConfig = field(default_factory=HubConfig)
    remote: RemoteConfig = field(default_factory=RemoteConfig)
    source: Path | None = field(default=None, compare=False, repr=False)

    @property
    def project_dir(self) -> Path:
        return self.source.parent if self.source else Path.cwd()

    def resolve_path(self, value: str) -> Path:
        """A path from the TOML, relative to the TOML's folder."""
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.project_dir / path

    @property
    def run_dir(self) -> Path:
        return self.resolve_path(self.output.dir) / self.output.name

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}


SECTIONS: dict[str, type] = {f.name: f.default_factory for f in dataclasses.fields(Config) if f.name != "source"}


@dataclass(frozen=True)
class KeySpec:
    """One key of the schema, flattened for docs, templates and validation."""

    section: str
    name: str
    type: Any
    default: Any
    doc: str
    choices: tuple | None
    min: float | None
    max: float | None
    min_exclusive: bool
    required: bool
    unsloth: str
    max_why: str = ""

    @property
    def dotted(self) -> str:
        return f"{self.section}.{self.name}"

    @property
    def type_name(self) -> str:
        return _TYPE_NAMES.get(self.type, str(self.type))


COUNT_OR_CHOICE = int | str  # an integer, or one of the key's (string) choices, e.g. [train] gpus = "auto"
_TYPE_NAMES = {int: "integer", float: "number", bool: "boolean", str: "string",
               list[str]: "list of strings", dict[str, str]: "table of strings", COUNT_OR_CHOICE: "integer or string"}


def schema() -> list[KeySpec]:
    """All keys, section by section, in declaration order."""
    specs = []
    for section, cls in SECTIONS.items():
        hints = get_type_hints(cls)
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            m = f.metadata
            specs.append(KeySpec(section, f.name, hints[f.name], default, m["doc"], m["choices"], m["min"],
                                 m["max"], m["min_exclusive"], m["required"], m["unsloth"], m["max_why"]))
    return specs


def _specs_by_section() -> dict[str, dict[str, KeySpec]]:
    out: dict[str, dict[str, KeySpec]] = {}
    for spec in schema():
        out.setdefault(spec.section, {})[spec.name] = spec
    return out


def _did_you_mean(word: str, options: list[str]) -> str | None:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f"did you mean `{close[0]}`?" if close else None


def _home_of(section: str, name: str, specs: dict[str, dict[str, KeySpec]]) -> tuple[str, str] | None:
    """(section, key) an unknown key most likely means: `lora_r` → lora.r, `train_batch_size` →
    train.batch_size (a section name used as a prefix, as in the Unsloth and PEFT argument names),
    `max_steps` under [lora] → train.max_steps."""
    for home in specs:
        bare = name[len(home) + 1:] if name.startswith(home + "_") else None
        if bare and bare in specs[home]:
            return home, bare
    for home, keys in specs.items():
        if name in keys and home != section:
            return home, name
    return None


def _unknown_key_hint(section: str, name: str, specs: dict[str, dict[str, KeySpec]]) -> str | None:
    home = _home_of(section, name, specs)
    if home is None:
        return _did_you_mean(name, list(specs[section]))
    if home[0] == section:
        return f"did you mean `{home[1]}`?"
    if home[1] == name:
        return f"`{name}` belongs under [{home[0]}]"
    return f"did you mean `{home[1]}` under [{home[0]}]?"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def check_value(spec: KeySpec, value: Any, where: str) -> Any:
    """Type- and range-check one value; returns it converted (an integer for a float key)."""
    label = f"[{spec.section}] {spec.name}"
    expected = spec.type

    def bad(problem: str, hint: str | None = None) -> ConfigError:
        return ConfigError(where, label, problem, hint)

    shown = json.dumps(value) if isinstance(value, (str, int, float, bool, list, dict)) else repr(value)
    if expected is bool:
        if not isinstance(value, bool):
            raise bad(f"expected true or false, got {shown}")
    elif expected is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad(f"expected an integer, got {shown}")
        if value > INT64_MAX and (spec.max is None or spec.max > INT64_MAX):
            raise bad(f"must be at most {INT64_MAX} (TOML integers are 64-bit), got {shown}")
    elif expected is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad(f"expected a number, got {shown}")
        value = float(value)
        if math.isnan(value) or math.isinf(value):
            raise bad(f"expected a finite number, got {shown}")
    elif expected == COUNT_OR_CHOICE:
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        if isinstance(value, bool) or not (isinstance(value, int) or value in (spec.choices or ())):
            raise bad(f"expected an integer or {' or '.join(json.dumps(c) for c in spec.choices or ())}, got {shown}")
    elif expected is str:
        if not isinstance(value, str):
            raise bad(f"expected a string, got {shown}", "put quotes around text values")
        if spec.required and not value.strip():
            raise bad("is empty", f"set it, e.g. {spec.name} = {_EXAMPLES[spec.dotted]}")
    elif expected == list[str]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad(f"expected a list of strings, got {shown}", 'write it as ["a", "b"]')
    elif expected == dict[str, str]:
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise bad(f"expected a table of strings, got {shown}", 'write it as { old = "new" }')
    texts = value if isinstance(value, list) else list(value.values()) if isinstance(value, dict) else [value]
    if any(isinstance(text, str) and "\x00" in text for text in texts):
        raise bad("contains a NUL character (\\u0000), which no path, name or text here may hold",
                  "remove it")
    if spec.choices is not None and not (expected == COUNT_OR_CHOICE and isinstance(value, int)):
        values = value if isinstance(value, list) else [value]
        for v in values:
            if v not in spec.choices:
                options = ", ".join(map(str, spec.choices))
                raise bad(f"{json.dumps(v)} is not one of: {options}", _did_you_mean(str(v), list(spec.choices)))
    if spec.min is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < spec.min or (spec.min_exclusive and value == spec.min):
            rel = "greater than" if spec.min_exclusive else "at least"
            raise bad(f"must be {rel} {_number(spec.min)}, got {shown}")
    if spec.max is not None and isinstance(value, (int, float)) and value > spec.max:
        why = f" ({spec.max_why})" if spec.max_why else ""
        raise bad(f"must be at most {_number(spec.max)}{why}, got {shown}")
    return value


_EXAMPLES = {"model.name": '"embedded:smollm2-135m"', "data.source": '"data/train.jsonl"'}


def _check_required(specs: dict[str, dict[str, KeySpec]], raw: dict, where: str) -> None:
    for section, keys in specs.items():
        for spec in keys.values():
            if spec.required and spec.name not in raw.get(section, {}):
                raise ConfigError(where, f"[{section}] {spec.name}", "missing required key",
                                  f"add `{spec.name} = {_EXAMPLES[spec.dotted]}` under [{section}]")


def _check_consistency(cfg: Config, where: str) -> None:
    """Rules that involve more than one key."""
    if cfg.model.load_in_4bit and cfg.model.load_in_8bit:
        raise ConfigError(where, "[model] load_in_8bit", "load_in_4bit and load_in_8bit are both true",
                          "choose one")
    if cfg.train.eval_steps and cfg.data.eval_fraction == 0 and not cfg.train.skip_eval:
        raise ConfigError(where, "[train] eval_steps", "is set but [data] eval_fraction is 0, so there is "
                          "nothing to evaluate", "set data.eval_fraction, e.g. 0.05")
    if cfg.train.early_stopping_patience and cfg.data.eval_fraction == 0:
        raise ConfigError(where, "[train] early_stopping_patience", "needs an eval split",
                          "set data.eval_fraction, e.g. 0.05")
    if cfg.train.early_stopping_patience and cfg.train.skip_eval:
        raise ConfigError(where, "[train] early_stopping_patience", "needs evaluations, but skip_eval is true",
                          "set skip_eval = false, or early_stopping_patience = 0")
    rows = cfg.train.batch_size * cfg.train.gradient_accumulation_steps
    if isinstance(cfg.train.micro_batch, int) and rows % cfg.train.micro_batch:
        raise ConfigError(where, "[train] micro_batch", f"{cfg.train.micro_batch} does not divide the effective batch "
                          f"of {rows} rows (batch_size {cfg.train.batch_size} x gradient_accumulation_steps "
                          f"{cfg.train.gradient_accumulation_steps})",
                          f"use a divisor of {rows}, or micro_batch = \"auto\"")
    name = cfg.output.name
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise ConfigError(where, "[output] name", f"{json.dumps(name)} is not a valid folder name",
                          "use letters, digits, '-' and '_'")
    if len(name.encode("utf-8")) > NAME_MAX_BYTES:
        raise ConfigError(where, "[output] name", f"is {len(name.encode('utf-8'))} bytes long, but a folder name "
                          f"may have at most {NAME_MAX_BYTES} bytes", "use a shorter name")


def build(raw: dict, where: str, source: Path | None = None) -> Config:
    """Validate a parsed TOML document and build the Config (defaults filled in)."""
    specs = _specs_by_section()
    for section, table in raw.items():
        if section not in specs:
            raise ConfigError(where, f"[{section}]", "unknown section",
                              _did_you_mean(section, list(specs)) or f"sections are: {', '.join(specs)}")
        if not isinstance(table, dict):
            raise ConfigError(where, section, "expected a [section] table, not a value",
                              f"write it as [{section}] followed by its keys")
        for name in table:
            if name not in specs[section]:
                raise ConfigError(where, f"[{section}] {name}", "unknown key", _unknown_key_hint(section, name, specs))
    _check_required(specs, raw, where)
    sections = {}
    for section, cls in SECTIONS.items():
        table = raw.get(section, {})
        values = {name: check_value(specs[section][name], value, where) for name, value in table.items()}
        sections[section] = cls(**values)
    cfg = Config(**sections, source=source)
    _check_consistency(cfg, where)
    return cfg


def read_toml(path: Path) -> dict:
    """Parse a TOML file; every failure becomes one ConfigError naming the file (and line)."""
    where = str(path)
    if not path.exists():
        raise ConfigError(where, None, "no such file",
                          "run `slothctl init .` to create one, or pass --config PATH")
    if path.is_dir():
        raise ConfigError(where, None, "is a folder, not a TOML file",
                          f"pass the file inside it, e.g. {path / DEFAULT_CONFIG_NAME}")
    try:
        text = path.read_bytes().decode("utf-8-sig")  # a byte order mark (Windows editors write one) is no error
    except PermissionError:
        raise ConfigError(where, None, "cannot be read (permission denied)") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(where, None, f"is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(where, None, f"cannot be read ({exc.strerror})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(where, None, f"TOML syntax error: {exc}") from None


def parse_override(text: str) -> tuple[str, str, Any]:
    """`section.key=value` → (section, key, value); the value is read as TOML, else taken as a string."""
    where = f"--set {text}"
    if "=" not in text:
        raise ConfigError(where, None, "expected section.key=value", "e.g. --set train.max_steps=10")
    dotted, raw_value = text.split("=", 1)
    parts = dotted.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(where, None, f"`{dotted}` is not of the form section.key", "e.g. train.max_steps")
    raw_value = raw_value.strip()
    try:
        value = tomllib.loads(f"v = {raw_value}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw_value
    return parts[0], parts[1], value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Merge --set overrides into a parsed TOML document; unknown keys are caught by `build`."""
    merged = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    specs = _specs_by_section()
    for text in overrides:
        section, name, value = parse_override(text)
        where = f"--set {text}"
        if section not in specs:
            raise ConfigError(where, section, "unknown section", _did_you_mean(section, list(specs)))
        if name not in specs[section]:
            home = _home_of(section, name, specs)
            close = difflib.get_close_matches(name, list(specs[section]), n=1, cutoff=0.6)
            dotted = ".".join(home) if home else f"{section}.{close[0]}" if close else None
            raise ConfigError(where, f"[{section}] {name}", "unknown key", f"did you mean `{dotted}`?" if dotted else None)
        spec = specs[section][name]
        if spec.type is str and not isinstance(value, str):
            value = text.split("=", 1)[1].strip()  # `--set output.name=2024` means the string
        merged.setdefault(section, {})
        merged[section][name] = check_value(spec, value, where)
    return merged


def load(path: Path | str = DEFAULT_CONFIG_NAME, overrides: list[str] | None = None) -> Config:
    """Read, override and validate a project file. Raises ConfigError; imports nothing heavy."""
    path = Path(path)
    raw = read_toml(path)
    raw = apply_overrides(raw, overrides or [])
    return build(raw, str(path), source=path.resolve())


# ---- writing ---------------------------------------------------------------------------------------------------

def toml_value(value: Any) -> str:
    """Render a schema value as TOML (strings, numbers, booleans, lists and tables of strings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + " }" \
            if value else "{}"
    raise TypeError(f"cannot write {value!r} as TOML")


def to_toml(cfg: Config) -> str:
    """The resolved config as a TOML document (what a run folder stores)."""
    lines = []
    for section, values in cfg.to_dict().items():
        lines.append(f"[{section}]")
        lines += [f"{name} = {toml_value(value)}" for name, value in values.items()]
        lines.append("")
    return "\n".join(lines)


def choices_text(spec: KeySpec, quote: str = "{}") -> str:
    """The sentence that lists a key's choices in the docs."""
    listed = ", ".join(quote.format(c) for c in spec.choices or ())
    return f" A number, or {listed}." if spec.type == COUNT_OR_CHOICE else f" One of: {listed}."


def reference_markdown() -> str:
    """The README's TOML reference, generated from the schema."""
    out = []
    for section, cls in SECTIONS.items():
        about = cls.__doc__.split(":", 1)[1].strip()
        out.append(f"### `[{section}]`\n\n{about[0].upper()}{about[1:]}\n")
        out.append("| key | type | default | meaning |\n|---|---|---|---|")
        for spec in (s for s in schema() if s.section == section):
            default = "required" if spec.required else f"`{toml_value(spec.default)}`"
            doc = spec.doc
            if spec.choices:
                doc += choices_text(spec, "`{}`")
            if spec.unsloth and not spec.unsloth.startswith("same"):
                doc += f" *Unsloth recipes:* {spec.unsloth}."
            out.append(f"| `{spec.name}` | {spec.type_name} | {default} | {doc.replace('|', '/')} |")
        out.append("")
    return "\n".join(out)
