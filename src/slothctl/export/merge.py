"""`slothctl merge`: adapter + base model → one model folder that loads without PEFT.

    merged/
      model*.safetensors, config.json   written by the backend's `merge` (PEFT)
      tokenizer files, chat_template.jinja   copied from the adapter: the template used in training
      generation_config.json   eos = the tokens that end a reply in that template, pad = the tokenizer's
      slothctl_merged.json     base, adapter (and its hash), precision, dtype, each file's sha256
      slothctl_check.json      the fidelity check, run in a fresh process before the folder appears

The folder is written under a temporary name and only appears once complete and checked.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slothctl import __version__, backends, interrupts, libraries, models
from slothctl.backends import LoadOptions
from slothctl.backends.device import on_cuda
from slothctl.config import Config
from slothctl.errors import RuntimeFailure, UsageError
from slothctl.events import Emit, Event, ignore, status, warning
from slothctl.runs import ADAPTER_INFO, RunPaths, adapter_info, atomic_dir, file_sha256, free_bytes, \
    resolve_adapter, write_json_atomic

PRECISIONS = ("16bit", "32bit", "4bit", "lora")
MERGED_INFO = "slothctl_merged.json"
CHECK_FILE = "slothctl_check.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "chat_template.json", "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json")
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json", ADAPTER_INFO) + TOKENIZER_FILES
# 4bit: the NF4 model plus the 16-bit merge it is quantized from, staged in the same folder
BYTES_PER_PARAM = {"16bit": 2, "32bit": 4, "4bit": 2.6}


@dataclass
class MergeResult:
    out: Path
    precision: str
    dtype: str | None
    adapter: Path
    base_model: str
    seconds: float
    check: dict | None

    def to_json(self) -> dict[str, Any]:
        return {"merged": str(self.out), "precision": self.precision, "dtype": self.dtype,
                "adapter": str(self.adapter), "base_model": self.base_model, "seconds": round(self.seconds, 2),
                "check": self.check}


def adapter_fingerprint(adapter: Path) -> str:
    """Identifies the adapter weights a merged model was made from."""
    return file_sha256(adapter / "adapter_model.safetensors")


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision `{precision}`", f"choose one of: {', '.join(PRECISIONS)}")


def base_model_of(cfg: Config, adapter: Path) -> str:
    """The base model an adapter was trained on: what training recorded, else the project's model."""
    return adapter_info(adapter).get("base_model") or cfg.model.name


# ---- disk space ------------------------------------------------------------------------------------

def require_disk(target: Path, needed: int | None, what: str) -> None:
    """Refuse before writing anything when the estimate does not fit (with 5% to spare)."""
    if needed is None:
        return
    free = free_bytes(target.parent)
    if needed * 1.05 > free:
        raise UsageError(f"not enough disk space for the {what} in {target.parent}: needs about "
                         f"{needed / 1e9:.2f} GB, {free / 1e9:.2f} GB free",
                         "free some space or write elsewhere with --out")


# ---- the merged folder ------------------------------------------------------------------------------

def copy_tokenizer(adapter: Path, out: Path, base: str | None = None) -> None:
    """The tokenizer exactly as training saved it next to the adapter (chat template included), plus
    the base model's SentencePiece `tokenizer.model` when the adapter has none: transformers 5 does
    not save it again, and llama.cpp's converter needs it for SentencePiece families (Gemma, Phi 3,
    Llama 2, Mistral)."""
    for name in TOKENIZER_FILES:
        if (adapter / name).is_file():
            shutil.copy2(adapter / name, out / name)
    if base and not (out / "tokenizer.model").is_file():
        found = base_file(base, "tokenizer.model")
        if found is not None:
            shutil.copy2(found, out / "tokenizer.model")


def base_file(base: str, name: str) -> Path | None:
    """A file of the base model: from its folder, or from the hub (cached); None when it has none."""
    folder = Path(base)
    if folder.is_dir():
        return folder / name if (folder / name).is_file() else None
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(base, name))
    except Exception:  # noqa: BLE001 - absent, offline, gated: the merged folder simply goes without it
        return None


def write_generation_config(out: Path, adapter: Path) -> list[int]:
    """eos = the tokens that end a reply in the training template, then the tokenizer's eos, then the
    base model's own eos ids (Gemma's <eos>: harmless to stop at too); pad = the tokenizer's pad."""
    from slothctl.data.tokenizer import load_text_tokenizer
    from slothctl.export.chat_formats import end_of_turn_ids

    tok = load_text_tokenizer(str(adapter))
    eos_ids = end_of_turn_ids(tok, tok.chat_template)
    path = out / "generation_config.json"
    config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    base_eos = config.get("eos_token_id")
    for token_id in base_eos if isinstance(base_eos, list) else [base_eos]:
        if token_id is not None and token_id not in eos_ids:
            eos_ids.append(token_id)
    if eos_ids:
        config["eos_token_id"] = eos_ids[0] if len(eos_ids) == 1 else eos_ids
    pad_id = tok.token_to_id(tok.pad_token) if tok.pad_token else None
    config["pad_token_id"] = pad_id if pad_id is not None else (eos_ids[0] if eos_ids else None)
    bos_id = tok.token_to_id(tok.bos_token) if tok.bos_token else None
    if bos_id is not None:
        config["bos_token_id"] = bos_id
    write_json_atomic(path, config)
    return eos_ids


def folder_hashes(folder: Path) -> dict[str, str]:
    """sha256 of each file of a merged folder, as merge wrote it: `export gguf` converts it only while
    it is unchanged (a weight edited or a file swapped since would be exported unchecked)."""
    return {p.name: file_sha256(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != MERGED_INFO}


def changed_files(folder: Path, recorded: dict[str, str]) -> list[str]:
    """The recorded files of `folder` that are gone or differ from their recorded sha256."""
    return [name for name, digest in recorded.items()
            if not (folder / name).is_file() or file_sha256(folder / name) != digest]


def copy_adapter(adapter: Path, out: Path) -> None:
    for name in ADAPTER_FILES:
        if (adapter / name).is_file():
            shutil.copy2(adapter / name, out / name)


def make_readable(folder: Path) -> None:
    """Temporary folders and files are created private (0700/0600); a published model is shared like
    any file the user writes (0755/0644 less the umask)."""
    mask = os.umask(0)
    os.umask(mask)
    folder.chmod(0o777 & ~mask)
    for item in folder.rglob("*"):
        if not item.is_symlink():
            item.chmod((0o777 if item.is_dir() else 0o666) & ~mask)


def run_check(kind: str, args: list[str], emit: Emit) -> dict:
    """A fidelity check in a fresh Python process (no state of this one, e.g. Unsloth's patches)."""
    status(emit, f"Checking the {kind} output in a fresh process")
    cmd = [sys.executable, "-m", "slothctl.export.check", kind, *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = interrupts.run(cmd, f"while checking the {kind} output", env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = " | ".join(line for line in proc.stderr.strip().splitlines()[-3:])
        raise RuntimeFailure(f"the {kind} fidelity check crashed (exit {proc.returncode}): {tail}")
    return json.loads(lines[-1])


@interrupts.deferring
def merge(cfg: Config, *, adapter: Path | None = None, checkpoint: int | None = None, out: Path | None = None,
          precision: str | None = None, force: bool = False, check: bool = True,
          emit: Emit = ignore) -> MergeResult:
    """Merge the run's adapter (or `adapter`, or checkpoint N) into its base model, check it, publish it."""
    started = time.time()
    precision = precision or cfg.export.precision
    check_precision(precision)
    adapter_path = resolve_adapter(cfg.run_dir, adapter, checkpoint)
    target = Path(out).expanduser() if out else RunPaths(cfg.run_dir).merged
    if target.exists() and not force:
        raise UsageError(f"{target} already exists", "pass --force to replace it")
    base_name = base_model_of(cfg, adapter_path)
    backend_name = None
    if precision != "lora":
        backend_name = backends.select(cfg.model.backend)
        if precision == "4bit" and not on_cuda():
            raise UsageError("--precision 4bit quantizes with bitsandbytes and needs a CUDA GPU",
                             "use --precision 16bit on this machine")
    fingerprint = adapter_fingerprint(adapter_path)
    dtype = None
    with atomic_dir(target, replace=force) as tmp:
        if precision == "lora":
            require_disk(target, sum(p.stat().st_size for p in adapter_path.iterdir() if p.is_file()), "adapter")
            status(emit, f"Copying the adapter {adapter_path} (no merge)")
            copy_adapter(adapter_path, tmp)
            interrupts.check("while copying the adapter")
            eos_ids: list[int] = []
        else:
            backend = backends.get(backend_name)
            libraries.quiet()
            resolved = models.resolve(base_name, cfg.project_dir, emit)
            params = models.parameter_count(resolved.path, cfg.model.revision, cfg.model.trust_remote_code)
            require_disk(target, int(params * BYTES_PER_PARAM[precision]) if params else None, "merged model")
            interrupts.hold("merging")
            dtype = backend.merge(cfg.model, resolved.path, str(adapter_path), tmp, precision=precision,
                                  dtype=cfg.export.dtype, options=LoadOptions.of(cfg), emit=emit)
            interrupts.check("while merging (nothing was written)")
            copy_tokenizer(adapter_path, tmp, resolved.path)
            eos_ids = write_generation_config(tmp, adapter_path)
        write_json_atomic(tmp / MERGED_INFO, {
            "base_model": base_name, "adapter": str(adapter_path.resolve()), "adapter_sha256": fingerprint,
            "precision": precision, "dtype": dtype, "eos_token_ids": eos_ids, "backend": backend_name,
            "chat_template": adapter_info(adapter_path).get("chat_template"), "slothctl": __version__,
            "files": folder_hashes(tmp)})
        result = None
        if check:
            args = ["--out", str(tmp), "--adapter", str(adapter_path), "--precision", precision]
            if precision != "lora":
                args += ["--base", resolved.path]
            result = run_check("merged", args, emit)
            write_json_atomic(tmp / CHECK_FILE, result)
            emit(Event("check", result))  # people read it in the final summary
            for line in result.get("warnings", []):
                warning(emit, line)
            if not result.get("passed"):
                raise RuntimeFailure(f"the merged model failed its fidelity check: {result.get('reason')} "
                                     f"(nothing was written; run with --no-check to keep it anyway)")
        make_readable(tmp)
        interrupts.check("while merging (nothing was written)")
    return MergeResult(target, precision, dtype, adapter_path, base_name, time.time() - started, result)


def check_summary(result: dict) -> str:
    """One line for people: what was compared and the numbers."""
    if result.get("kind") == "lora":
        return f"check {'passed' if result['passed'] else 'FAILED'}: adapter files identical to {result['adapter']}"
    parts = [f"max |logit diff| vs adapter {result['max_abs_logit_diff']:.2e}",
             f"top-1 agreement {result['top1_agreement']:.1%}"]
    if result.get("delta_retained") is not None:
        parts.append(f"weight update kept {result['delta_retained']:.1%}")
    if result.get("quantized"):
        parts.append(f"4-bit base alone {result['quantized']['floor_top1_agreement']:.1%}")
    verdict = "passed" if result.get("passed") else "FAILED"
    return f"check {verdict} on {result['prompts']} prompts: " + ", ".join(parts)
