"""Third-party exceptions a user can act on, as one line, a hint and an exit code.

Library code raises `SlothctlError`s for what it knows; anything else reaches `app.main`, which
looks here before falling back to "TypeName: message". Each row of `TABLE` is (matches, explain);
the first row that matches the exception or any exception it was raised from wins. Matching is by
class name, so nothing heavy is imported to recognise an error (an exception of a library that was
never imported cannot happen).
"""

from __future__ import annotations

import errno
import sys
from dataclasses import dataclass
from typing import Callable, Iterator

from slothctl.errors import EXIT_RUNTIME, EXIT_USAGE


@dataclass
class Explained:
    message: str
    hint: str | None
    exit_code: int


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception and those it was raised from or while handling, outermost first."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _is(*qualified: str) -> Callable[[BaseException], bool]:
    """A matcher for exceptions of (or derived from) classes named `module.Class`."""
    def matches(exc: BaseException) -> bool:
        return any(f"{cls.__module__}.{cls.__qualname__}" in qualified for cls in type(exc).__mro__)
    return matches


def _says(*fragments: str, kind: type = BaseException) -> Callable[[BaseException], bool]:
    def matches(exc: BaseException) -> bool:
        return isinstance(exc, kind) and any(f in str(exc) for f in fragments)
    return matches


def _repo(exc: BaseException) -> str:
    repo_id = getattr(exc, "repo_id", None)
    return f"`{repo_id}`" if repo_id else "the repository"


def _gated(exc: BaseException) -> Explained:
    repo_id = getattr(exc, "repo_id", None)
    page = f"https://huggingface.co/{repo_id}" if repo_id else "the model's page on huggingface.co"
    return Explained(f"{_repo(exc)} is gated: its files need an approved access request",
                     f"ask for access at {page}, then set HF_TOKEN (or run `hf auth login`) with that account",
                     EXIT_USAGE)


def _not_found(exc: BaseException) -> Explained:
    return Explained(f"{_repo(exc)} was not found on the Hugging Face Hub",
                     "check the name ([model] name, e.g. unsloth/Qwen3-1.7B); a private repository needs HF_TOKEN",
                     EXIT_USAGE)


def _offline(exc: BaseException) -> Explained:
    from os import environ

    if environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return Explained("the files are not in the local cache and HF_HUB_OFFLINE is set",
                         "unset HF_HUB_OFFLINE to download them once (or `hf download ID` on a connected machine)",
                         EXIT_RUNTIME)
    return Explained("cannot reach the Hugging Face Hub, and the files are not in the local cache",
                     "check the network (or HF_ENDPOINT / proxy settings) and try again", EXIT_RUNTIME)


def _disk_full(exc: BaseException) -> Explained:
    where = getattr(exc, "filename", None)
    return Explained(f"no space left on the device{f' writing {where}' if where else ''}",
                     "free some disk space (old runs/ and checkpoints, or the cache in $SLOTHCTL_CACHE / $HF_HOME) "
                     "and run the command again; completed checkpoints are kept", EXIT_RUNTIME)


def out_of_memory(exc: BaseException) -> Explained:
    """CUDA ran out of memory. The memory-model work fills this in: the estimate it made for this
    config, the measured peak below, and the smallest change that fits (it knows the config; this
    function only sees the exception)."""
    peak = ""
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_available():
            used, total = torch.cuda.max_memory_allocated(), torch.cuda.get_device_properties(0).total_memory
            peak = f" (peak {used / 2**30:.1f} of {total / 2**30:.1f} GiB)"
    except Exception:  # noqa: BLE001 - a broken CUDA context must not hide the real error
        pass
    return Explained(f"the GPU ran out of memory{peak}",
                     "lower train.batch_size (raise gradient_accumulation_steps to keep the effective batch), "
                     "model.max_seq_length, or lora.r; or set model.load_in_4bit = true", EXIT_RUNTIME)


def _is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    # torch.save reports a full disk from C++ without an errno
    return isinstance(exc, RuntimeError) and ("PytorchStreamWriter failed writing" in str(exc)
                                              or "unexpected pos" in str(exc))


TABLE: list[tuple[Callable[[BaseException], bool], Callable[[BaseException], Explained]]] = [
    (_is("huggingface_hub.errors.GatedRepoError"), _gated),
    (_is("huggingface_hub.errors.RepositoryNotFoundError"), _not_found),
    (_is("huggingface_hub.errors.OfflineModeIsEnabled", "huggingface_hub.errors.LocalEntryNotFoundError"), _offline),
    (_is_disk_full, _disk_full),
    (_is("torch.OutOfMemoryError"), out_of_memory),
    (_says("CUDA out of memory", "CUDA error: out of memory", kind=RuntimeError), out_of_memory),
]


def explain(exc: BaseException) -> Explained | None:
    """The table's reading of `exc` (or of what it was raised from), or None if it is unknown."""
    for cause in _causes(exc):
        for matches, describe in TABLE:
            if matches(cause):
                return describe(cause)
    return None
