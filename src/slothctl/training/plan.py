"""Before training: which folder a run goes to, and whether it starts, resumes or is already done.
Everything here runs before the model loads, so a refusal is quick.

The rules (README, "Resuming"):
- A run folder with complete checkpoints continues from the newest one (or `--from`) when the
  config that wrote it matches; keys in checkpoints.FREE_TO_CHANGE (max_steps, epochs, save and
  logging intervals, report_to) may differ. Otherwise exit 2 listing the changed keys, unless
  `--fresh` (a new folder <name>-2, -3, ...) or `--force-resume` (continue with the new values).
- A larger max_steps trains longer: the run continues from its newest checkpoint and the
  learning-rate schedule is recomputed for the new total. A max_steps below the checkpoint is refused.
- A run whose summary.json says it finished with this config and length is not trained again.
- `resume` continues the run as it was started: the checkpoint's recorded [model] [lora] [data]
  [train] values (length, intervals, every --set the run was started with), except the keys the
  resume command sets itself (--set, --max-steps) and HERE_KEYS, which describe this machine rather
  than the run and come from the project file. `train` on a run folder uses the project file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path

from slothctl import config as config_mod
from slothctl.config import Config
from slothctl.errors import RuntimeFailure, UsageError
from slothctl.events import Emit, ignore, status, warning
from slothctl.runs import CHECKPOINT_INFO, DELETING, RunPaths, checkpoint_problem, clean_incomplete
from slothctl.training import checkpoints


@dataclass
class RunPlan:
    cfg: Config
    paths: RunPaths
    checkpoint: Path | None = None  # resume from here
    info: dict = field(default_factory=dict)  # its slothctl_checkpoint.json
    forced: list = field(default_factory=list)  # changes accepted with --force-resume
    renamed_from: str | None = None  # --fresh moved the run to a new folder
    announced: int | None = None  # the end step `resume` announced in its first line

    @property
    def resume_step(self) -> int | None:
        return self.info.get("step") if self.checkpoint else None


# Keys `resume` takes from the project file as it is now, not from the run's record: how this machine
# runs the run (engine, GPUs, memory, tokenizing processes), not what is trained.
HERE_KEYS = frozenset({"model.backend", "train.gpus", "train.micro_batch", "train.max_vram_fraction",
                       "data.num_proc"})


def given_keys(overrides: list[str]) -> frozenset[str]:
    """`section.key` of each `--set section.key=value` a command was given (already validated)."""
    return frozenset(".".join(config_mod.parse_override(text)[:2]) for text in overrides)


def recorded_config(cfg: Config, checkpoint: Path, info: dict, given: frozenset[str]) -> tuple[Config, list]:
    """The config `resume` continues with: the checkpoint's recorded values of the sections it records,
    but for the keys the resume command set (`given`) and HERE_KEYS, which stay as in `cfg`. Also
    returns (key, recorded, file) for each key where the project file now says otherwise."""
    recorded, current = info.get("config") or {}, cfg.to_dict()
    merged = {section: dict(values) for section, values in current.items()}
    ignored = []
    for section, values in recorded.items():
        for name, value in values.items():
            dotted = f"{section}.{name}"
            if name not in merged.get(section, {}) or dotted in given or dotted in HERE_KEYS:
                continue
            if merged[section][name] != value:
                ignored.append((dotted, value, merged[section][name]))
                merged[section][name] = value
    if not ignored:
        return cfg, []
    return config_mod.build(merged, f"{checkpoint / CHECKPOINT_INFO} (the run's config)", source=cfg.source), ignored


def _announce_resume(plan: "RunPlan", recorded: dict, ignored: list, emit: Emit) -> None:
    """`resume`'s first line: from which step to which (the end step is known before the data is read
    when max_steps is set, or when the run's epochs and batch are those it recorded)."""
    train, old = plan.cfg.train, recorded.get("train", {})
    same_length = all(old.get(k) == getattr(train, k) for k in ("epochs", "batch_size", "gradient_accumulation_steps",
                                                                 "gpus", "packing"))
    end = train.max_steps or (plan.info.get("max_steps") if same_length else None)
    plan.announced = end
    to = f"step {end}" if end else f"the end of epoch {train.epochs:g}"
    status(emit, f"Resuming {plan.paths.root} from step {plan.resume_step} to {to} "
                 f"({plan.checkpoint.name})")
    if ignored:
        shown = ", ".join(f"{key} {config_mod.toml_value(old)} (the file says {config_mod.toml_value(new)})"
                          for key, old, new in ignored)
        status(emit, f"Continuing with the run's own values: {shown}; --set KEY=VALUE on resume changes one")


def has_content(folder: Path) -> bool:
    return folder.is_dir() and any(child.name != ".lock" for child in folder.iterdir())


def next_free_name(cfg: Config) -> str:
    """<name>-2, <name>-3, ...: the first that is not taken in the runs folder."""
    parent = cfg.run_dir.parent
    n = 2
    while (parent / f"{cfg.output.name}-{n}").exists():
        n += 1
    return f"{cfg.output.name}-{n}"


def with_run_name(cfg: Config, name: str) -> Config:
    return dataclasses.replace(cfg, output=dataclasses.replace(cfg.output, name=name))


def find_checkpoint(paths: RunPaths, choice: str | None, cfg: Config | None = None,
                    emit: Emit = ignore) -> Path | None:
    """The checkpoint to resume from: `--from` (a step, checkpoint-N or a folder), else the newest one
    that verifies (its files match its marker). A damaged `--from` checkpoint is exit 1 naming its file,
    with the command that resumes from the previous good one."""
    if choice is None:
        return newest_good_checkpoint(paths, cfg, emit)
    text = str(choice)
    if text.isdigit():
        candidate = paths.checkpoint(int(text))
    elif Path(text).expanduser().is_dir():
        candidate = Path(text).expanduser().resolve()
    else:
        candidate = paths.root / text
    if not (candidate / CHECKPOINT_INFO).is_file():
        steps = ", ".join(str(step) for step, _ in paths.checkpoints()) or "none"
        problem = "is not a complete checkpoint" if candidate.is_dir() else "does not exist"
        raise UsageError(f"--from {text}: {candidate} {problem} (no {CHECKPOINT_INFO})",
                         f"complete checkpoints of {paths.root}: {steps}")
    problem = checkpoint_problem(candidate)
    if problem:
        command = resume_command(cfg) if cfg is not None else "slothctl resume"
        raise RuntimeFailure(problem, checkpoints.previous_good(paths, checkpoint_step(candidate), command))
    return candidate


def checkpoint_step(folder: Path) -> int:
    try:
        return int(checkpoints.read_info(folder)["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return int(folder.name.rsplit("-", 1)[-1]) if folder.name.rsplit("-", 1)[-1].isdigit() else 0


def newest_good_checkpoint(paths: RunPaths, cfg: Config | None, emit: Emit) -> Path | None:
    """The newest checkpoint whose files verify. Damaged newer ones are renamed aside
    (checkpoint-N.damaged-<time>, kept for a look, never resumed from) with a warning naming the file;
    when none verifies, exit 1 naming the damaged file."""
    damaged: list[tuple[Path, str]] = []
    for _, path in reversed(paths.marked_checkpoints()):
        problem = checkpoint_problem(path)
        if problem is None:
            for bad, why in damaged:
                kept = bad.with_name(f"{bad.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
                os.replace(bad, kept)
                warning(emit, f"{why}: {bad.name} kept as {kept.name}; resuming from {path.name}, the newest "
                              "checkpoint that verifies")
            return path
        damaged.append((path, problem))
    if damaged:
        raise RuntimeFailure(damaged[0][1], "no checkpoint of this run verifies: start over with "
                                            "slothctl train --fresh")
    return None


def _compare_with_folder_config(cfg: Config, paths: RunPaths) -> None:
    """No checkpoint to resume: refuse to mix a different config into a folder that holds a run."""
    if not paths.config.is_file():
        return
    previous = config_mod.load(paths.config)
    changes = checkpoints.changed_keys(previous, cfg)
    if changes:
        raise UsageError(f"run folder {paths.root} holds a run of a different config (changed: "
                         f"{checkpoints.describe_changes(changes)})",
                         f"train with --fresh to start over in {cfg.run_dir.parent / next_free_name(cfg)}, "
                         "or set another [output] name")


def plan_run(cfg: Config, emit: Emit, *, fresh: bool = False, force_resume: bool = False,
             from_checkpoint: str | None = None, require_checkpoint: bool = False,
             given: frozenset[str] | None = None) -> RunPlan:
    """Decide where and from which step this run trains (exit 2 on a conflict, before anything loads).
    `given` (resume): the keys the command set itself; the others come from the checkpoint's record."""
    paths = RunPaths(cfg.run_dir)
    if fresh:
        if not has_content(paths.root):
            return RunPlan(cfg, paths)
        name = next_free_name(cfg)
        moved = with_run_name(cfg, name)
        return RunPlan(moved, RunPaths(moved.run_dir), renamed_from=cfg.output.name)
    if not paths.root.exists():
        if require_checkpoint or from_checkpoint:
            raise UsageError(f"no run at {paths.root} to resume", "start it with: slothctl train")
        return RunPlan(cfg, paths)
    if not paths.root.is_dir():
        raise UsageError(f"run folder {paths.root} is a file", "remove it or set another [output] name")
    for removed in clean_incomplete(paths):
        why = ("an old checkpoint whose deletion was interrupted" if DELETING in removed.name
               else "an unfinished write (the process stopped while writing it)")
        warning(emit, f"removed {removed.name}: {why}")
    checkpoint = find_checkpoint(paths, from_checkpoint, cfg, emit)
    if checkpoint is None:
        if require_checkpoint or force_resume:
            raise UsageError(f"run {paths.root} has no complete checkpoint to resume from",
                             "start it over with: slothctl train" + (" --fresh" if paths.config.is_file() else ""))
        _compare_with_folder_config(cfg, paths)
        return RunPlan(cfg, paths)
    info = checkpoints.read_info(checkpoint)
    ignored: list = []
    if given is not None:
        cfg, ignored = recorded_config(cfg, checkpoint, info, given)
    changes = checkpoints.changed_keys(info["config"], cfg)
    if changes and not force_resume:
        raise UsageError(f"{checkpoint.name} of {paths.root} was written with a different config (changed: "
                         f"{checkpoints.describe_changes(changes)})",
                         f"undo the change, or pass --fresh to start over in {cfg.run_dir.parent / next_free_name(cfg)}"
                         ", or --force-resume to continue with the new values")
    shape = [key for key, _, _ in changes if key in checkpoints.SHAPE_KEYS]
    if shape:
        raise UsageError(f"--force-resume cannot change {', '.join(shape)}: the adapter in {checkpoint.name} "
                         "has another shape", "pass --fresh to start over in a new folder")
    if changes:
        warning(emit, f"--force-resume: continuing from {checkpoint.name} with "
                      f"{checkpoints.describe_changes(changes)}; the rest of the run differs from one "
                      "trained with these values from the start")
    plan = RunPlan(cfg, paths, checkpoint, info, forced=changes)
    if given is not None:
        _announce_resume(plan, info["config"], ignored, emit)
    return plan


def set_aside_newer(plan: RunPlan, emit: Emit) -> None:
    """Resuming from an older checkpoint: newer ones are renamed, so they are neither resumed from
    nor rotated, and nothing is deleted. Called once the checkpoint resumed from has loaded
    (checkpoints.completion), so a checkpoint that fails to load never costs the good newer ones."""
    for step, path in plan.paths.checkpoints():
        if plan.resume_step is not None and step > plan.resume_step:
            target = path.with_name(f"{path.name}.superseded-{time.strftime('%Y%m%d-%H%M%S')}")
            os.replace(path, target)
            warning(emit, f"{path.name} is newer than {plan.checkpoint.name}: kept as {target.name}")


def finished_summary(cfg: Config, paths: RunPaths, total_steps: int, data_hash: str) -> dict | None:
    """summary.json of a run that already finished with this config (up to FREE_TO_CHANGE keys), this
    data and this number of steps (or stopped early), else None."""
    if not paths.summary.is_file() or not (paths.adapter / "adapter_config.json").is_file():
        return None
    try:
        summary = json.loads(paths.summary.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    same = summary.get("config_hash") == checkpoints.config_hash(cfg) and \
        summary.get("data", {}).get("hash") == data_hash
    ended = summary.get("steps") == total_steps or summary.get("stopped_early")
    return summary if same and ended else None


def resume_command(cfg: Config) -> str:
    """The command that continues this run: `slothctl resume` plus whatever differs from the TOML file."""
    parts = ["slothctl", "resume"]
    source = cfg.source
    if source is not None and source != (Path.cwd() / config_mod.DEFAULT_CONFIG_NAME).resolve():
        try:
            shown = source.relative_to(Path.cwd().resolve())
        except ValueError:
            shown = source
        parts += ["-c", str(shown)]
    try:
        on_disk = config_mod.load(source).to_dict() if source is not None else None
    except Exception:  # noqa: BLE001 - the file changed or vanished: the plain command still helps
        on_disk = None
    if on_disk is not None:
        for section, values in cfg.to_dict().items():
            for key, value in values.items():
                if on_disk[section].get(key) != value:  # --set reads a string key's value as it is
                    shown = value if isinstance(value, str) else config_mod.toml_value(value)
                    parts += ["--set", f"{section}.{key}={shown}"]
    return " ".join(shlex.quote(p) for p in parts)


def check_resume_point(plan: RunPlan, run: dict, total: int, force: bool, emit: Emit) -> None:
    """The data and the length must allow continuing from the chosen checkpoint."""
    info, name = plan.info, plan.checkpoint.name
    if info["data"]["hash"] != run["data"]["hash"]:
        if not force:
            raise UsageError(f"the training data changed since {name} was written ({info['data']['rows']} → "
                             f"{run['data']['rows']} rows, other tokens): the run cannot continue exactly",
                             "restore the data, pass --fresh to start over, or --force-resume to go on with the new data")
        warning(emit, f"--force-resume: the training data changed since {name}; its order cannot be continued exactly")
    step = info["step"]
    if step > total:
        raise UsageError(f"{name} is at step {step}, past max_steps = {total}",
                         f"set --max-steps above {step}, resume --from an earlier checkpoint, or start over with --fresh")
    if info.get("max_steps") not in (None, total):
        status(emit, f"max_steps {info['max_steps']} → {total}: training on from step {step}, with the "
                     f"learning-rate schedule recomputed for {total} steps")


def run_optimizer(plan: RunPlan, choice: str, resolved: str) -> str:
    """A run keeps the optimizer it started with: `optim = "auto"` resolves per device (fused AdamW on
    CUDA, AdamW on CPU; 8-bit AdamW on CUDA until 2026-12-03), and a checkpoint's optimizer state only
    loads into the same kind, so a CPU run continued on a GPU keeps AdamW, and a run started with 8-bit
    AdamW keeps it."""
    if plan.checkpoint is not None and choice == "auto":
        info = plan.checkpoint / CHECKPOINT_INFO
        if info.is_file():
            resolved = json.loads(info.read_text(encoding="utf-8")).get("optim", resolved)
    return resolved
