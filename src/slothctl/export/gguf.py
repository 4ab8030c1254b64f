"""`slothctl export gguf`: the merged model → GGUF files for llama.cpp, Ollama and LM Studio.

f16, bf16 and q8_0 come straight from llama.cpp's converter (`convert_hf_to_gguf.py`, prepared by
`slothctl export prepare`); K-quants such as q4_k_m from its quantizer (`llama_model_quantize` of the
installed llama-cpp-python), applied to an f16 file. Both run in child processes: llama.cpp aborts
the whole process on some errors. Every file is then read back (GGUFReader) to confirm its chat
template and eos are the tokenizer's, an Ollama Modelfile is written next to them, and a fidelity
check runs in a fresh process. The folder appears only when all of that succeeded.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slothctl import interrupts, models
from slothctl.config import Config
from slothctl.errors import RuntimeFailure, UsageError
from slothctl.events import Emit, Event, ignore, status, warning
from slothctl.export import tools
from slothctl.export.merge import CHECK_FILE, MERGED_INFO, adapter_fingerprint, changed_files, make_readable, merge, \
    require_disk, run_check
from slothctl.runs import RunPaths, atomic_dir, resolve_adapter, write_json_atomic, write_text_atomic

CONVERTER_TYPES = ("f16", "bf16", "q8_0")  # written by convert_hf_to_gguf.py --outtype
QUANTIZER_TYPES = {"q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}  # written by llama_model_quantize from f16
QUANTS = CONVERTER_TYPES + tuple(QUANTIZER_TYPES)
BYTES_PER_PARAM = {"f16": 2.0, "bf16": 2.0, "q8_0": 1.07, "q4_k_m": 0.61}
EXPORT_INFO = "slothctl_gguf.json"
MODELFILE = "Modelfile"


@dataclass
class GgufFile:
    quant: str
    path: Path
    bytes: int
    seconds: float
    metadata: dict

    def to_json(self) -> dict[str, Any]:
        return {"quant": self.quant, "path": str(self.path), "bytes": self.bytes, "seconds": round(self.seconds, 2),
                "metadata": self.metadata}


@dataclass
class GgufResult:
    out: Path
    merged: Path
    files: list[GgufFile]
    modelfile: Path | None
    ollama_family: str | None
    merge_seconds: float | None
    seconds: float
    check: dict | None
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"gguf_dir": str(self.out), "merged": str(self.merged), "files": [f.to_json() for f in self.files],
                "modelfile": str(self.modelfile) if self.modelfile else None, "ollama_template": self.ollama_family,
                "merge_seconds": None if self.merge_seconds is None else round(self.merge_seconds, 2),
                "seconds": round(self.seconds, 2), "check": self.check, "warnings": self.warnings}


def parse_quants(values: list[str]) -> list[str]:
    """Lower-cased, de-duplicated, each one known (exit 2 listing the valid names otherwise)."""
    chosen: list[str] = []
    for value in values:
        for name in str(value).replace(",", " ").split():
            name = name.lower()
            if name not in QUANTS:
                raise UsageError(f"unknown GGUF quantization `{name}`", f"valid: {', '.join(QUANTS)}")
            if name not in chosen:
                chosen.append(name)
    if not chosen:
        raise UsageError("no GGUF quantization chosen", f"valid: {', '.join(QUANTS)}")
    return chosen


# ---- the tokenizer as llama.cpp's converter sees it ------------------------------------------------

def _byte_level(part: dict | None) -> bool:
    if not part:
        return False
    if part.get("type") == "ByteLevel":
        return True
    return any(_byte_level(p) for p in part.get("pretokenizers", part.get("decoders", [])) or [])


def canonical_byte_level(data: dict) -> dict | None:
    """A byte-level BPE tokenizer.json as the HF hub writes it, when `data` is the same tokenizer in
    the form transformers gives one rebuilt from a GGUF (`byte_fallback` on, a SentencePiece-style
    decoder chain around ByteLevel). Both are inert on a byte-level vocabulary, but llama.cpp's
    converter reads them as a Llama SentencePiece vocabulary and writes a GGUF that crashes
    llama.cpp. None when nothing needs changing."""
    model = data.get("model") or {}
    if model.get("type") != "BPE" or not model.get("byte_fallback") or not _byte_level(data.get("pre_tokenizer")):
        return None
    if any(re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", token) for token in model.get("vocab", {})):
        return None  # real byte-fallback tokens: a SentencePiece-style vocab, leave it alone
    decoder = data.get("decoder") or {}
    steps = decoder.get("decoders", []) if decoder.get("type") == "Sequence" else [decoder]
    byte_level = next((step for step in steps if step.get("type") == "ByteLevel"), None)
    if byte_level is None:
        return None
    fixed = copy.deepcopy(data)
    fixed["model"]["byte_fallback"] = False
    fixed["decoder"] = dict(byte_level)
    return fixed


def _same_tokenizer(original: str, fixed: str, probes: list[str]) -> bool:
    from tokenizers import Tokenizer

    a, b = Tokenizer.from_str(original), Tokenizer.from_str(fixed)
    if any(a.encode(t, add_special_tokens=False).ids != b.encode(t, add_special_tokens=False).ids for t in probes):
        return False
    ids = [[i] for i in range(a.get_vocab_size(with_added_tokens=True))]
    return a.decode_batch(ids, skip_special_tokens=False) == b.decode_batch(ids, skip_special_tokens=False)


PROBE_TEXTS = ["Hello world! Ça va? 3.14159 ... 🦥  \n\t tabs\nund äöü, 日本語, нещо", " leading space",
               "I've been 'told he's there, 'RE you sure? 3333333 ------=======",
               "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"]


def conversion_view(merged: Path, view: Path, emit: Emit) -> Path:
    """What the converter reads: the merged folder by symlinks, with a canonical tokenizer.json
    when the merged one is the GGUF-rebuilt form (checked to encode and decode identically)."""
    view.mkdir(parents=True)
    for item in merged.iterdir():
        if not item.name.startswith("slothctl_"):
            (view / item.name).symlink_to(item.resolve())
    tokenizer_json = merged / "tokenizer.json"
    if tokenizer_json.is_file():
        original = tokenizer_json.read_text(encoding="utf-8")
        fixed = canonical_byte_level(json.loads(original))
        if fixed is not None:
            fixed_text = json.dumps(fixed, ensure_ascii=False)
            if not _same_tokenizer(original, fixed_text, PROBE_TEXTS):
                raise RuntimeFailure("cannot present this tokenizer to llama.cpp's converter as byte-level BPE "
                                     "without changing its behaviour")
            status(emit, "The tokenizer is byte-level BPE in the form transformers rebuilds from GGUF; the "
                         "converter reads it in its hub form (same tokens, checked)")
            (view / "tokenizer.json").unlink()
            (view / "tokenizer.json").write_text(fixed_text, encoding="utf-8")
    return view


# ---- running llama.cpp ------------------------------------------------------------------------------

def _converter_failure(log: str) -> str:
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    for pattern in ("NotImplementedError", "Error:", "ERROR", "Exception"):
        hits = [line for line in lines if pattern in line]
        if hits:
            return hits[-1]
    return lines[-1] if lines else "no output"


# llama.cpp's SentencePiece tokenizer writes a word-boundary space before the text after every special
# token when the GGUF says `add_space_prefix`; transformers' non-legacy SentencePiece tokenizers (Phi 3.5,
# Mistral) write it only at the very start of a text. Chat prompts consist of text after special tokens,
# so for those tokenizers the GGUF says no: its chat prompts are then tokenized exactly as in training
# (a plain text that starts with a word loses that one leading space). llama.cpp's converter does not
# decide this key from the tokenizer, so it is set as the converter writes the file: the only use of
# gguf-py's internals, here.
CONVERT_CODE = """
import runpy, sys
from pathlib import Path
converter, space_prefix = sys.argv[1], sys.argv[2]
sys.argv = [converter] + sys.argv[3:]
sys.path.insert(1, str(Path(converter).parent / "gguf-py"))
import gguf
if space_prefix != "keep":
    write = gguf.GGUFWriter.write_header_to_file
    def write_header_to_file(self, *args, **kwargs):
        model = self.kv_data[0].get(gguf.Keys.Tokenizer.MODEL)
        if model is not None and model.value == "llama":
            self.add_add_space_prefix(space_prefix == "true")
        return write(self, *args, **kwargs)
    gguf.GGUFWriter.write_header_to_file = write_header_to_file
runpy.run_path(converter, run_name="__main__")
"""


def space_prefix_setting(tok) -> str:
    """"false" for a SentencePiece tokenizer that marks a word boundary at the start of a text but not
    after a special token; "keep" (the converter's choice) otherwise."""
    boundary = "\u2581"
    if tok.token_to_id(boundary) is None or not tok.eos_token:
        return "keep"
    at_start = tok.backend.encode("Hi", add_special_tokens=False).tokens
    after_special = tok.backend.encode(f"{tok.eos_token}Hi", add_special_tokens=False).tokens[1:]
    if at_start and at_start[0].startswith(boundary) and after_special and not after_special[0].startswith(boundary):
        return "false"
    return "keep"


def convert(tools_state: tools.ToolsState, view: Path, outfile: Path, outtype: str, name: str,
            space_prefix: str = "keep") -> None:
    cmd = [sys.executable, "-c", CONVERT_CODE, str(tools_state.path / tools.CONVERTER), space_prefix, str(view),
           "--outfile", str(outfile), "--outtype", outtype, "--model-name", name]
    proc = interrupts.run(cmd, "while converting to GGUF (nothing was written)", env=tools.converter_env(),
                          cwd=str(tools_state.path))
    if proc.returncode != 0 or not outfile.is_file():
        reason = _converter_failure(proc.stderr + proc.stdout)
        if "pre-tokenizer was not recognized" in reason or "is not supported" in reason:
            chkhsh = re.search(r"chkhsh:\s*([0-9a-f]{64})", proc.stderr)
            raise UsageError(f"llama.cpp {tools_state.llama_cpp_commit or ''} cannot convert this model: {reason}"
                             + (f" (chkhsh {chkhsh.group(1)})" if chkhsh else ""),
                             "a newer llama-cpp-python may know it; then run slothctl export prepare --force")
        raise RuntimeFailure(f"llama.cpp's converter failed ({outtype}): {reason}")


def gguf_model_name(name: str, merged: Path) -> str:
    """The GGUF's general.name. llama.cpp gives Phi 3's special tokens their `rstrip` (they swallow the
    newline after them, as in transformers) only when that name says phi-3, so for that architecture
    it does."""
    config = merged / "config.json"
    model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type") if config.is_file() else None
    if model_type == "phi3" and not any(tag in name.lower() for tag in ("phi-3", "phi3")):
        return f"{name} (phi-3)"
    return name


QUANTIZE_CODE = """
import ctypes, sys, llama_cpp
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = getattr(llama_cpp, sys.argv[3])
params.nthread = int(sys.argv[4])
sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(params)))
"""


def quantize(source: Path, target: Path, quant: str) -> None:
    threads = str(max(1, min(8, os.cpu_count() or 1)))
    proc = interrupts.run([sys.executable, "-c", QUANTIZE_CODE, str(source), str(target), QUANTIZER_TYPES[quant],
                           threads], "while quantizing (nothing was written)")
    if proc.returncode != 0 or not target.is_file():
        raise RuntimeFailure(f"llama.cpp's quantizer failed ({quant}, exit {proc.returncode}): "
                             f"{_converter_failure(proc.stderr)}")


# ---- reading the result back --------------------------------------------------------------------------

def read_metadata(path: Path) -> dict:
    """The keys that decide whether a chat model works: template, special tokens, tokenizer kind."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))

    def value(key: str):
        item = reader.fields.get(key)
        return item.contents() if item is not None else None

    return {"architecture": value("general.architecture"), "file_type": value("general.file_type"),
            "tokenizer_model": value("tokenizer.ggml.model"), "tokenizer_pre": value("tokenizer.ggml.pre"),
            "chat_template": value("tokenizer.chat_template"), "bos_token_id": value("tokenizer.ggml.bos_token_id"),
            "eos_token_id": value("tokenizer.ggml.eos_token_id"), "add_bos_token": value("tokenizer.ggml.add_bos_token"),
            "padding_token_id": value("tokenizer.ggml.padding_token_id")}


def verify_metadata(path: Path, metadata: dict, template: str | None, eos_id: int | None) -> None:
    """Fail loudly when the GGUF would lose the chat template or never stop."""
    if template is not None and metadata["chat_template"] != template:
        raise RuntimeFailure(f"{path.name}: the chat template in the GGUF differs from the one used in training")
    if eos_id is not None and metadata["eos_token_id"] != eos_id:
        raise RuntimeFailure(f"{path.name}: the GGUF's eos token id is {metadata['eos_token_id']}, the tokenizer's "
                             f"is {eos_id}")


# ---- the whole export ----------------------------------------------------------------------------

def _usable_merged(folder: Path, adapter: Path) -> bool:
    """True when `folder` is a full-weight merge of exactly this adapter; exit 2 when it is something else."""
    info_path = folder / MERGED_INFO
    if not folder.exists():
        return False
    if not info_path.is_file():
        raise UsageError(f"{folder} exists but is not a folder written by slothctl merge",
                         "remove it, or pass --merged PATH")
    info = json.loads(info_path.read_text(encoding="utf-8"))
    if info.get("precision") not in ("16bit", "32bit"):
        raise UsageError(f"{folder} holds a {info.get('precision')} export; GGUF needs full weights",
                         "run slothctl merge --force --precision 16bit")
    if info.get("adapter_sha256") != adapter_fingerprint(adapter):
        raise UsageError(f"{folder} was merged from another adapter than {adapter}",
                         "run slothctl merge --force with the same --adapter/--checkpoint first")
    changed = changed_files(folder, info.get("files") or {})
    if changed:
        raise UsageError(f"{folder} changed since slothctl merge checked it ({', '.join(changed)})",
                         "run slothctl merge --force to merge and check it again")
    return True


@interrupts.deferring
def export_gguf(cfg: Config, *, quants: list[str] | None = None, adapter: Path | None = None,
                checkpoint: int | None = None, merged: Path | None = None, out: Path | None = None,
                force: bool = False, check: bool = True, emit: Emit = ignore) -> GgufResult:
    started = time.time()
    chosen = parse_quants(quants or cfg.export.quant)
    tools_state = tools.require()
    if importlib.util.find_spec("llama_cpp") is None:
        raise UsageError("GGUF export needs llama-cpp-python", "pip install 'slothctl[gguf]'")
    paths = RunPaths(cfg.run_dir)
    adapter_path = resolve_adapter(cfg.run_dir, adapter, checkpoint)
    target = Path(out).expanduser() if out else paths.gguf
    if target.exists() and not force:
        raise UsageError(f"{target} already exists", "pass --force to replace it")
    merged_dir = Path(merged).expanduser() if merged else paths.merged
    merge_seconds = None
    if not _usable_merged(merged_dir, adapter_path):
        precision = cfg.export.precision if cfg.export.precision in ("16bit", "32bit") else "16bit"
        status(emit, f"No merged model yet: merging first into {merged_dir}")
        merged_result = merge(cfg, adapter=adapter_path, out=merged_dir, precision=precision, check=check, emit=emit)
        merge_seconds = merged_result.seconds
    params = models.parameter_count(str(merged_dir))
    needs_f16 = any(q in QUANTIZER_TYPES for q in chosen) and "f16" not in chosen
    if params:
        require_disk(target, int(params * (sum(BYTES_PER_PARAM[q] for q in chosen) + (2 if needs_f16 else 0))),
                     "GGUF files")

    from slothctl.data.tokenizer import load_text_tokenizer
    from slothctl.export.chat_formats import FAMILIES, translate

    tok = load_text_tokenizer(str(merged_dir))
    eos_id = tok.eos_id
    name = cfg.output.name
    files: list[GgufFile] = []
    warnings: list[str] = []
    with atomic_dir(target, replace=force) as tmp:
        interrupts.hold("exporting")
        view = conversion_view(merged_dir, tmp / ".convert-source", emit)
        interrupts.check("while exporting (nothing was written)")
        intermediate = None
        for quant in [q for q in CONVERTER_TYPES if q in chosen or (q == "f16" and needs_f16)]:
            path = tmp / (f"{name}-{quant.upper()}.gguf" if quant in chosen else ".intermediate-F16.gguf")
            status(emit, f"Converting to GGUF {quant} with llama.cpp's converter")
            began = time.time()
            convert(tools_state, view, path, quant, gguf_model_name(name, merged_dir), space_prefix_setting(tok))
            if quant in chosen:
                files.append(GgufFile(quant, path, path.stat().st_size, time.time() - began, {}))
            if quant == "f16":
                intermediate = path
        shutil.rmtree(view)
        for quant in [q for q in QUANTIZER_TYPES if q in chosen]:
            path = tmp / f"{name}-{quant.upper()}.gguf"
            status(emit, f"Quantizing to {quant} with llama.cpp's quantizer")
            began = time.time()
            quantize(intermediate, path, quant)
            files.append(GgufFile(quant, path, path.stat().st_size, time.time() - began, {}))
        if needs_f16 and intermediate is not None:
            intermediate.unlink()
        files.sort(key=lambda f: chosen.index(f.quant))
        for item in files:
            item.metadata = read_metadata(item.path)
            verify_metadata(item.path, item.metadata, tok.chat_template, eos_id)

        chat = translate(tok.chat_template, tok) if tok.chat_template else None
        modelfile = None
        if chat is None:
            known = ", ".join(family.name for family in FAMILIES)
            warnings.append(f"the chat template matches none of the families slothctl translates for Ollama ({known}), "
                            "so no Modelfile was written (the GGUF carries the template for llama.cpp and LM Studio)")
        else:
            from slothctl.export.modelfile import modelfile_text

            if chat.starts_with_bos and not files[0].metadata.get("add_bos_token"):
                warnings.append("the chat template writes a BOS token but the GGUF does not add one")
            modelfile = tmp / MODELFILE
            write_text_atomic(modelfile, modelfile_text(files[0].path.name, chat, cfg))
        result = None
        if check:
            result = run_check("gguf", ["--folder", str(tmp), "--merged", str(merged_dir)], emit)
            write_json_atomic(tmp / CHECK_FILE, result)
            emit(Event("check", result))
            warnings += result.get("warnings", [])
            if not result.get("passed"):
                raise RuntimeFailure(f"the GGUF export failed its check: {result.get('reason')} (nothing was written)")
        for line in warnings:
            warning(emit, line)
        write_json_atomic(tmp / EXPORT_INFO, {
            "merged": str(merged_dir.resolve()), "llama_cpp_python": tools_state.library,
            "llama_cpp_commit": tools_state.llama_cpp_commit, "files": [f.to_json() for f in files],
            "ollama_template": chat.family if chat else None})
        make_readable(tmp)
        interrupts.check("while exporting (nothing was written)")
    final = [GgufFile(f.quant, target / f.path.name, f.bytes, f.seconds, f.metadata) for f in files]
    return GgufResult(target, merged_dir, final, target / MODELFILE if modelfile else None,
                      chat.family if chat else None, merge_seconds, time.time() - started, result, warnings)


def gguf_check_summary(result: dict) -> str:
    parts = []
    for name, item in result.get("files", {}).items():
        same = item["decisions"] - item["decisions_differing"]
        parts.append(f"{name}: tokens {'ok' if item['tokenization_matches'] else 'DIFFER'}, "
                     f"{same}/{item['decisions']} greedy decisions as transformers"
                     + (f" ({item['differing_at_near_ties']} of the others near-ties)"
                        if item["decisions_differing"] else "")
                     + f", max |logit diff| {item['max_abs_logit_diff']:.3g}, "
                     f"{'stops' if item['stops_at_eos'] else 'does not stop'} at end of turn")
    return f"check {'passed' if result.get('passed') else 'FAILED'}: " + "; ".join(parts)
