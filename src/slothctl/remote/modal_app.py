"""The Modal side of a remote run, built from a RemotePlan; the only module that imports `modal`.

`build_app` creates the App, its image, volumes, secrets and the Function, all lazily: nothing is
contacted until `launch` runs the app (`app.run(detach=True)`, so a run can outlive this process).
The Function is `worker.run_remote` (plain Python, imported by name in the container) and is not a
generator, because Modal retries only non-generator Functions; its events come back through an
ephemeral `modal.Queue` instead. `VolumeStore` is the runs volume as a `pull.RunStore`.
"""

from __future__ import annotations

import contextlib
import queue as queue_module
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from slothctl.errors import Interrupted, RuntimeFailure, SlothctlError, UsageError
from slothctl.events import Emit, Event, status
from slothctl.remote import worker
from slothctl.remote.plan import RemotePlan
from slothctl.remote.pull import PullResult, StoredFile, pull

INSTALL_HINT = "pip install 'slothctl[modal]'"
CREDENTIALS_HINT = "run `modal token new`, or set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET"
RETRY_DELAY_S = 10.0
REMOTE_ROOT = "/root"  # where Modal puts local Python packages in the container (on its path)


def require_modal():
    """The modal module, or exit 2 with the install command."""
    try:
        import modal
    except ImportError:
        raise UsageError("--remote modal needs the Modal client", INSTALL_HINT) from None
    return modal


def check_credentials() -> None:
    """Exit 2 unless Modal credentials are configured (a ~/.modal.toml profile or MODAL_TOKEN_ID and
    MODAL_TOKEN_SECRET, or Modal's OAuth variables). Reads them as the Modal client does; contacts nothing."""
    require_modal()
    try:
        from modal.config import config

        token = config.get("token_id") and config.get("token_secret")
        oauth = config.get("oauth_refresh_token") and config.get("oauth_client_id") and \
            (config.get("oauth_client_secret") or config.get("oauth_jwt_key"))
    except Exception as exc:  # noqa: BLE001 - a broken ~/.modal.toml or profile: Modal's own message
        raise UsageError(f"cannot read the Modal configuration: {' '.join(str(exc).split())}",
                         CREDENTIALS_HINT) from None
    if not (token or oauth):
        raise UsageError("no Modal credentials (no token in ~/.modal.toml, no MODAL_TOKEN_ID and MODAL_TOKEN_SECRET)",
                         CREDENTIALS_HINT)


def build_image(plan: RemotePlan):
    """Debian slim with the plan's Python and packages; slothctl's source, the templates and the
    uploads are added at container start (not baked in, so editing them rebuilds nothing)."""
    modal = require_modal()
    image = modal.Image.debian_slim(python_version=plan.python).pip_install(*plan.packages)
    if plan.no_deps_packages:
        image = image.pip_install(*plan.no_deps_packages, extra_options="--no-deps")
    if plan.export_packages:  # llama-cpp-python builds from source: portable CPU code, as scripts/test does
        image = image.pip_install(*plan.export_packages, env={"CMAKE_ARGS": "-DGGML_NATIVE=OFF"})
    image = image.add_local_python_source("slothctl", ignore=["**/__pycache__", "**/*.pyc"])
    if plan.templates is not None:
        image = image.add_local_dir(plan.templates, f"{REMOTE_ROOT}/slothctl/templates")
    for upload in plan.uploads:
        image = image.add_local_file(upload.path, str(upload.path))
    return image


def build_app(plan: RemotePlan):
    """(App, Function) for the plan. Lazy: Modal objects are only created when the app runs."""
    modal = require_modal()
    try:
        app = modal.App(plan.app_name)
        volumes = {path: modal.Volume.from_name(name, create_if_missing=True) for path, name in plan.volumes.items()}
        function = app.function(
            image=build_image(plan), gpu=plan.gpu, timeout=plan.timeout_s,
            retries=modal.Retries(max_retries=plan.retries, backoff_coefficient=1.0, initial_delay=RETRY_DELAY_S),
            volumes=volumes, secrets=[modal.Secret.from_name(name) for name in plan.secrets], env=plan.env,
            include_source=False, name="slothctl")(worker.run_remote)
    except modal.exception.InvalidError as exc:  # a volume, secret or GPU name Modal refuses
        raise UsageError(f"[remote]: {' '.join(str(exc).split())}", "fix the [remote] section") from None
    return app, function


@dataclass
class Detached:
    """A run left running on Modal: how to follow, stop and fetch it."""

    app_id: str
    call_id: str
    run: str

    def to_json(self) -> dict[str, Any]:
        return {"detached": True, "app_id": self.app_id, "call_id": self.call_id, "run": self.run,
                "logs": f"modal app logs {self.app_id}", "stop": f"modal app stop {self.app_id}",
                "pull": f"slothctl pull {self.run}"}


def _event(data: dict[str, Any]) -> Event:
    data = dict(data)
    kind = data.pop("event", "status")
    return Event(kind, data, data.pop("message", ""))


def launch(plan: RemotePlan, emit: Emit, *, detach: bool = False,
           on_interrupt: Callable[[], str] | None = None) -> dict[str, Any] | Detached:
    """Run the plan's job on Modal. Attached: its events go to `emit` until it ends, and its result
    (the worker's: exit_code, run, attempt, done) is returned; Ctrl-C calls `on_interrupt`, which
    answers "detach" (leave it running) or "stop". Detached: returns at once."""
    modal = require_modal()
    check_credentials()
    app, function = build_app(plan)
    status(emit, f"Starting on Modal: the image is built when it changed (the first build takes several minutes), "
                 f"then a {plan.gpu} container")
    with modal_errors():
        if detach:
            with app.run(detach=True):
                call = function.spawn(plan.job, None)
                return Detached(app.app_id, call.object_id, plan.job["run"])
        with modal.Queue.ephemeral() as events, app.run(detach=True):
            call = function.spawn(plan.job, events)
            try:
                return _outcome(_follow(call, events, emit))
            except KeyboardInterrupt:
                if on_interrupt is not None and on_interrupt() == "detach":
                    return Detached(app.app_id, call.object_id, plan.job["run"])
                call.cancel()
                app.stop()
                raise Interrupted("stopped the remote run; its newest complete checkpoint stays on the volume",
                                  "continue with: slothctl resume --remote modal") from None


@contextlib.contextmanager
def modal_errors():
    """Modal's exceptions as slothctl errors: credentials and missing names exit 2, the rest 1."""
    modal = require_modal()
    try:
        yield
    except SlothctlError:
        raise
    except modal.exception.AuthError as exc:
        raise UsageError(f"Modal refused the credentials: {exc}", CREDENTIALS_HINT) from None
    except modal.exception.NotFoundError as exc:
        raise UsageError(f"Modal: {' '.join(str(exc).split())}", "check the names in [remote]") from None
    except modal.exception.Error as exc:
        raise RuntimeFailure(f"Modal: {' '.join(str(exc).split()) or type(exc).__name__}") from None


def _follow(call, events, emit: Emit) -> dict[str, Any]:
    """Pass the queue's events on until the call has a result; returns it with the last error event."""
    modal = require_modal()
    last_error = None

    def drain(block: bool) -> None:
        nonlocal last_error
        try:
            batch = events.get_many(100, timeout=2.0) if block else events.get_many(1000, block=False)
        except queue_module.Empty:
            return
        for data in batch:
            if data.get("event") == "error":  # raised here as it was there, by _outcome
                last_error = data
            elif data.get("event") != "done":  # the result carries it; the command renders it
                emit(_event(data))

    while True:
        drain(block=True)
        try:
            result = call.get(timeout=0)
        except TimeoutError:
            continue
        except modal.exception.FunctionTimeoutError:
            drain(block=False)
            raise RuntimeFailure("the remote run reached [remote] timeout_hours on every attempt",
                                 "continue with: slothctl resume --remote modal (or raise timeout_hours)") from None
        except worker.AttemptFailed as exc:
            drain(block=False)
            raise RuntimeFailure(f"{exc.message}; no retries left",
                                 "continue with: slothctl resume --remote modal") from None
        drain(block=False)
        return {**result, "error": last_error}


def _outcome(result: dict[str, Any]) -> dict[str, Any]:
    """The worker's result, or the bad input the remote command stopped on (exit 2, as locally)."""
    if result["exit_code"] != 0:
        message = (result.get("error") or {}).get("message") or f"exit code {result['exit_code']}"
        raise UsageError(f"remote: {message}")
    return result


class VolumeStore:
    """The runs volume as a pull.RunStore."""

    def __init__(self, volume_name: str):
        modal = require_modal()
        self.name = f"Modal Volume {volume_name}"
        self.volume = modal.Volume.from_name(volume_name)

    def list_files(self, prefix: str) -> list[StoredFile]:
        modal = require_modal()
        try:
            entries = self.volume.listdir(prefix, recursive=True)
        except (FileNotFoundError, modal.exception.NotFoundError):
            return []
        return [StoredFile(entry.path.lstrip("/"), entry.size) for entry in entries
                if entry.type == modal.volume.FileEntryType.FILE]

    def read(self, path: str) -> Iterator[bytes]:
        yield from self.volume.read_file(path)


def pull_run(volume_name: str, run: str, runs_dir, *, checkpoints: bool = False, force: bool = False,
             emit: Emit) -> PullResult:
    """`slothctl pull`: the run folder from the runs volume (credentials checked first)."""
    check_credentials()
    with modal_errors():
        return pull(VolumeStore(volume_name), run, runs_dir, checkpoints=checkpoints, force=force, emit=emit)
