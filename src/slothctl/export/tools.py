"""llama.cpp's GGUF converter, fetched once into slothctl's cache at the version of the installed
`llama-cpp-python`.

The `llama-cpp-python` wheel ships the compiled library (used here to quantize and to load GGUF
files) but not `convert_hf_to_gguf.py`. Its sdist vendors the llama.cpp tree it was built from, so
`prepare` fetches that sdist with pip and keeps only the converter (`convert_hf_to_gguf.py`, its
`conversion/` package and `gguf-py/`). Converter and library then come from one llama.cpp commit,
and exporting needs neither a compiler nor the network.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from slothctl.errors import RuntimeFailure, UsageError
from slothctl.events import Emit, ignore, status
from slothctl.models import cache_root
from slothctl.runs import atomic_dir, write_json_atomic

PACKAGE = "llama-cpp-python"
PREPARE_COMMAND = "slothctl export prepare"
MARKER = "slothctl_tools.json"
# What is kept from the sdist's vendor/llama.cpp/ folder.
KEEP = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")
CONVERTER = "convert_hf_to_gguf.py"


def installed_version() -> str | None:
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return None


def tools_dir(version: str) -> Path:
    return cache_root() / "gguf-tools" / f"llama.cpp-for-{PACKAGE}-{version}"


@dataclass
class ToolsState:
    """Where the GGUF tools stand: `ready` means converter and quantizer match and can run."""

    library: str | None  # installed llama-cpp-python version
    path: Path | None  # the prepared converter folder, when there is one
    llama_cpp_commit: str | None
    ready: bool
    problem: str | None

    def to_json(self) -> dict:
        return {"llama_cpp_python": self.library, "path": str(self.path) if self.path else None,
                "llama_cpp_commit": self.llama_cpp_commit, "ready": self.ready, "problem": self.problem,
                "prepare": None if self.ready else PREPARE_COMMAND}


def state() -> ToolsState:
    version = installed_version()
    if version is None:
        return ToolsState(None, None, None, False, f"{PACKAGE} is not installed (pip install 'slothctl[gguf]')")
    folder = tools_dir(version)
    marker = folder / MARKER
    if not marker.is_file() or not (folder / CONVERTER).is_file():
        return ToolsState(version, None, None, False, f"the llama.cpp converter for {PACKAGE} {version} is not "
                          f"prepared (run: {PREPARE_COMMAND})")
    info = json.loads(marker.read_text(encoding="utf-8"))
    return ToolsState(version, folder, info.get("llama_cpp_commit"), True, None)


def require() -> ToolsState:
    """The ready tools, or one line that says which command prepares them (exit 2)."""
    current = state()
    if current.library is None:
        raise UsageError(f"GGUF export needs {PACKAGE}", "pip install 'slothctl[gguf]'")
    if not current.ready:
        raise UsageError(f"the llama.cpp GGUF converter is not prepared for {PACKAGE} {current.library}",
                         f"run: {PREPARE_COMMAND}")
    return current


def _download_sdist(version: str, into: Path, emit: Emit) -> Path:
    status(emit, f"Fetching the {PACKAGE}=={version} source distribution with pip")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", PACKAGE, "--quiet",
           "--disable-pip-version-check", "-d", str(into), f"{PACKAGE}=={version}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(into.glob("*.tar.gz"))
    if proc.returncode != 0 or not found:
        last = next((line for line in reversed(proc.stderr.splitlines()) if line.strip()), "no sdist downloaded")
        raise RuntimeFailure(f"pip could not download the {PACKAGE}=={version} sdist: {last.strip()}")
    return found[0]


def _extract(sdist: Path, target: Path) -> str | None:
    """Copy the converter out of the sdist into `target`; returns llama.cpp's commit when recorded."""
    commit = None
    try:
        with tarfile.open(sdist, "r:gz") as archive:
            members = archive.getmembers()
            root = members[0].name.split("/")[0] if members else ""
            vendor = f"{root}/vendor/llama.cpp/"
            wanted = [m for m in members if m.name.startswith(vendor)
                      and m.name[len(vendor):].startswith(KEEP) and (m.isfile() or m.isdir())]
            if not any(m.name == vendor + CONVERTER for m in wanted):
                raise UsageError(f"{sdist.name} has no vendor/llama.cpp/{CONVERTER}",
                                 f"use the {PACKAGE} sdist that matches the installed version")
            for member in wanted:
                member.name = member.name[len(vendor):]
            extract_kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            archive.extractall(target, members=wanted, **extract_kwargs)
            head = archive.extractfile(f"{root}/.git/modules/vendor/llama.cpp/HEAD") \
                if f"{root}/.git/modules/vendor/llama.cpp/HEAD" in archive.getnames() else None
            if head is not None:
                commit = head.read().decode().strip() or None
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise UsageError(f"cannot read {sdist}: {exc}") from None
    return commit


def prepare(sdist: Path | None = None, force: bool = False, emit: Emit = ignore) -> ToolsState:
    """Fetch (or take `sdist`) and install the converter for the installed llama-cpp-python."""
    version = installed_version()
    if version is None:
        raise UsageError(f"GGUF export needs {PACKAGE}", "pip install 'slothctl[gguf]'")
    current = state()
    if current.ready and not force:
        status(emit, f"GGUF tools already prepared in {current.path}")
        return current
    if sdist is not None:
        sdist = Path(sdist).expanduser()
        if not sdist.is_file():
            raise UsageError(f"no such file: {sdist}", f"pass the {PACKAGE}-{version}.tar.gz sdist")
        if f"-{version}." not in sdist.name:
            raise UsageError(f"{sdist.name} is not the {PACKAGE} {version} sdist",
                             f"the converter must match the installed {PACKAGE} {version}")
    target = tools_dir(version)
    with tempfile.TemporaryDirectory(prefix="slothctl-sdist-") as download:
        source = sdist or _download_sdist(version, Path(download), emit)
        digest = hashlib.sha256(source.read_bytes()).hexdigest()
        status(emit, f"Extracting llama.cpp's converter into {target}")
        with atomic_dir(target, replace=True) as tmp:
            commit = _extract(source, tmp)
            write_json_atomic(tmp / MARKER, {"package": PACKAGE, "version": version, "sdist": source.name,
                                             "sdist_sha256": digest, "llama_cpp_commit": commit})
    return state()


def converter_env() -> dict[str, str]:
    """The converter runs offline, with its own gguf-py, quietly."""
    env = dict(os.environ)
    env.pop("NO_LOCAL_GGUF", None)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               TQDM_DISABLE="1", PYTHONUNBUFFERED="1")
    return env

