"""`slothctl push` against a stand-in Hub on 127.0.0.1 (tests/hub_server.py): what arrives, with which
flags and card, and that the token never leaks."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest

from conftest import assert_usage_error, final_error, run_cli, run_python
from hub_server import HubServer

TOKEN = "hf_sLoThCtLtEsTtOkEn0123456789abcdef"
BASE_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.fixture
def hub():
    with HubServer(token=TOKEN) as server:
        yield server


@pytest.fixture
def hf_home(tmp_path: Path) -> Path:
    """An empty huggingface_hub home: no stored login, and a place to check for written tokens."""
    home = tmp_path / "hf_home"
    home.mkdir()
    return home


def push(project: Path, hub: HubServer, hf_home: Path, *args: str, token: str | None = TOKEN):
    env = {"HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1", "HF_HUB_OFFLINE": "0", "HF_HOME": str(hf_home),
           "HF_TOKEN": token or ""}
    return run_cli("push", *args, cwd=project, env=env, timeout=300)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def card_metadata(card: bytes) -> dict:
    import yaml

    text = card.decode()
    assert text.startswith("---\n"), text[:200]
    return yaml.safe_load(text.split("---\n", 2)[1])


def assert_token_nowhere(result, hub: HubServer, *folders: Path) -> None:
    """Not on stdout/stderr, not in anything sent to the Hub, not in any file under `folders`."""
    secret = TOKEN.encode()
    assert TOKEN not in result.stdout and TOKEN not in result.stderr
    assert secret not in hub.received()
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file():
                assert secret not in path.read_bytes(), f"token written to {path}"


def tree(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): sha256(p.read_bytes()) for p in folder.rglob("*") if p.is_file()}


def test_push_adapter_sends_files_card_and_never_the_token(trained_run: Path, hub, hf_home):
    run = trained_run / "runs" / "proj"
    before = tree(run)
    result = push(trained_run, hub, hf_home, "me/sloth-adapter", "--json")
    assert result.returncode == 0, result.stderr
    *progress, reply = result.json_lines()  # JSON lines: progress events, then the result
    assert {line["event"] for line in progress} == {"status"} and reply["event"] == "done"
    assert reply["repo_id"] == "me/sloth-adapter" and reply["private"] is True and reply["branch"] == "main"
    assert reply["commit"] == hub.repos["me/sloth-adapter"].commits[-1]["oid"]

    repo = hub.repos["me/sloth-adapter"]
    assert repo.private is True
    assert [c["summary"] for c in repo.commits] == ["Upload adapter with slothctl"]
    arrived = repo.files("main")
    local = {p.name: p.read_bytes() for p in (run / "adapter").iterdir() if p.is_file()}
    assert set(arrived) == (set(local) - {"README.md"}) | {"README.md"}
    for name, content in local.items():
        if name not in ("README.md", "adapter_config.json"):
            assert sha256(arrived[name]) == sha256(content), name
    # adapter_config.json names the Hub base model instead of the local cache folder it was trained from
    sent_config, local_config = json.loads(arrived["adapter_config.json"]), json.loads(local["adapter_config.json"])
    assert sent_config["base_model_name_or_path"] == BASE_HUB_ID
    assert {k: v for k, v in sent_config.items() if k != "base_model_name_or_path"} == \
        {k: v for k, v in local_config.items() if k != "base_model_name_or_path"}
    # the weights went through LFS (basic transfer to the server's own URL), the small files inline
    assert sha256(local["adapter_model.safetensors"]) in hub.blobs

    card = arrived["README.md"]
    meta = card_metadata(card)
    assert meta["base_model"] == BASE_HUB_ID and meta["base_model_relation"] == "adapter"
    assert meta["library_name"] == "peft" and meta["license"] == "apache-2.0"
    assert {"slothctl", "lora", "peft"} <= set(meta["tags"]) and "datasets" not in meta  # local data
    summary = json.loads((run / "summary.json").read_text())
    text = card.decode()
    assert f"| final train loss | {summary['final_loss']:.4g} |" in text
    assert f"| steps | {summary['steps']} |" in text and "training tokens/s" in text
    assert "LoRA r=16, alpha=16" in text and "| learning rate | 0.0005" in text
    assert (run / "adapter" / "chat_template.jinja").read_text().strip() in text
    assert 'AutoPeftModelForCausalLM.from_pretrained("me/sloth-adapter")' in text
    assert "de-quantized" in text  # says what the embedded base really is

    assert all(r.authorization == f"Bearer {TOKEN}" for r in hub.requests if r.path.startswith("/api/repos"))
    assert tree(run) == before  # nothing written into the run folder
    assert_token_nowhere(result, hub, trained_run, hf_home)


def test_push_public_to_a_new_branch_of_a_name_only_repo(trained_run: Path, hub, hf_home):
    result = push(trained_run, hub, hf_home, "sloth-public", "--public", "--branch", "dev")
    assert result.returncode == 0, result.stderr
    repo = hub.repos["tester/sloth-public"]  # the owner comes from whoami
    assert repo.private is False
    assert repo.files("main") == {} and "adapter_model.safetensors" in repo.files("dev")
    assert "tester/sloth-public" in result.stdout and "dev" in result.stdout
    assert 'from_pretrained("tester/sloth-public")' in repo.files("dev")["README.md"].decode()
    # pushing again to the existing repo and branch works and adds a commit
    again = push(trained_run, hub, hf_home, "tester/sloth-public", "--branch", "dev", "--json")
    assert again.returncode == 0, again.stderr
    assert [c["branch"] for c in repo.commits] == ["dev", "dev"] and repo.private is False
    assert_token_nowhere(again, hub, hf_home)


def test_dry_run_lists_files_without_a_token_and_sends_nothing(trained_run: Path, hub, hf_home, tmp_path):
    result = push(trained_run, hub, hf_home, "me/x", "--dry-run", "--json", token=None)
    assert result.returncode == 0, result.stderr
    listing = result.json()
    adapter = trained_run / "runs" / "proj" / "adapter"
    sizes = {item["path"]: item["size"] for item in listing["files"]}
    assert sizes["adapter_model.safetensors"] == (adapter / "adapter_model.safetensors").stat().st_size
    assert "README.md" in sizes and listing["private"] is True and listing["dry_run"] is True
    human = push(trained_run, hub, hf_home, "me/x", "--dry-run", token=None)
    assert human.returncode == 0 and "adapter_model.safetensors" in human.stdout and "total" in human.stdout
    # --path works outside a project too; the card still comes from the run the folder belongs to
    elsewhere = run_cli("push", "me/x", "--path", str(adapter), "--dry-run", "--json", cwd=tmp_path,
                        env={"HF_TOKEN": "", "HF_HOME": str(hf_home)})
    assert elsewhere.returncode == 0, elsewhere.stderr
    assert elsewhere.json()["what"] == "adapter" and elsewhere.json()["files"] == \
        listing["files"]
    assert hub.requests == []


def test_no_token_is_one_line_and_exit_2_before_any_upload(trained_run: Path, hub, hf_home):
    assert_usage_error(push(trained_run, hub, hf_home, "me/x", token=None), "no Hugging Face token", "HF_TOKEN")
    assert hub.requests == []


def test_push_usage_errors(trained_run: Path, hub, hf_home, tmp_path):
    assert_usage_error(push(trained_run, hub, hf_home), "no repository given", "[hub] repo_id")
    assert_usage_error(push(trained_run, hub, hf_home, "a/b/c"), "not a Hub repository id")
    assert_usage_error(push(trained_run, hub, hf_home, "me/x", "--what", "merged"), "no merged/", "export")
    assert_usage_error(push(trained_run, hub, hf_home, "me/x", "--what", "weights"), "--what")
    assert_usage_error(push(trained_run, hub, hf_home, "me/x", "--path", str(tmp_path / "nope")), "no such folder")
    assert_usage_error(push(trained_run, hub, hf_home, "me/x", "--path", str(tmp_path)), "no adapter, merged")
    assert hub.requests == []
    rejected = push(trained_run, hub, hf_home, "me/x", token="hf_wrong")
    assert_usage_error(rejected, "rejected the token")
    assert hub.repos == {}


# ---- merged and GGUF folders, made for real in a copy of the trained project ---------------------------------

MERGE = """
import sys, torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
base, adapter, out = sys.argv[1:4]
model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
model = PeftModel.from_pretrained(model, adapter).merge_and_unload().to(torch.bfloat16)
model.save_pretrained(out)
AutoTokenizer.from_pretrained(adapter).save_pretrained(out)
"""


@pytest.fixture(scope="module")
def exported(trained_run: Path, embedded_model: Path, tmp_path_factory) -> Path:
    """A copy of the trained project with runs/proj/merged (PEFT merge_and_unload) and runs/proj/gguf
    (the embedded model's real Q4_1 GGUF file and a Modelfile)."""
    from slothctl.models import embedded_gguf_path

    project = tmp_path_factory.mktemp("exported") / "proj"
    shutil.copytree(trained_run, project, ignore=shutil.ignore_patterns("checkpoint-*"))
    run = project / "runs" / "proj"
    code = MERGE.replace("sys.argv[1:4]", repr([str(embedded_model), str(run / "adapter"), str(run / "merged")]))
    result = run_python(code)
    assert result.returncode == 0, result.stderr[-2000:]
    (run / "gguf").mkdir()
    gguf = embedded_gguf_path("smollm2-135m")
    shutil.copy(gguf, run / "gguf" / "proj-q4_1.gguf")
    (run / "gguf" / "Modelfile").write_text("FROM ./proj-q4_1.gguf\n")
    return project


@pytest.mark.parametrize("what", ["merged", "gguf"])
def test_push_merged_and_gguf_folders(exported: Path, hub, hf_home, what):
    result = push(exported, hub, hf_home, f"me/sloth-{what}", "--what", what, "--json")
    assert result.returncode == 0, result.stderr
    folder = exported / "runs" / "proj" / what
    arrived = hub.repos[f"me/sloth-{what}"].files("main")
    local = tree(folder)
    assert set(arrived) == set(local) | {"README.md"}
    assert {name: sha256(arrived[name]) for name in local} == local
    meta = card_metadata(arrived["README.md"])
    text = arrived["README.md"].decode()
    assert meta["base_model"] == BASE_HUB_ID and meta["base_model_relation"] == "finetune"
    if what == "merged":
        assert meta["library_name"] == "transformers" and 'pipeline("text-generation", model="me/sloth-merged")' in text
    else:
        assert meta["library_name"] == "gguf" and "gguf" in meta["tags"]
        assert 'filename="proj-q4_1.gguf"' in text and "llama-cli -hf me/sloth-gguf" in text
    assert_token_nowhere(result, hub, exported, hf_home)


# ---- failures: one line, the right exit code, and the token nowhere, whatever the Hub answers ----------------

@pytest.fixture
def small_adapter(tmp_path: Path) -> Path:
    """A folder `push --path` accepts: an adapter config and a small binary weights file (sent through LFS)."""
    folder = tmp_path / "proj" / "adapter"
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    (folder / "adapter_model.safetensors").write_bytes(b"\x00\x01weights" * 64)
    return folder


FAILURES = {
    # what goes wrong: (routes answered with a status, routes dropped, exit code, fragments of the line)
    "401 on whoami": ({"GET /api/whoami-v2": 401}, set(), 2, ["rejected the token (401)"]),
    "403 on create": ({"POST /api/repos/create": 403}, set(), 2, ["may not write to me/x (403)"]),
    "500 on create": ({"POST /api/repos/create": 500}, set(), 1, ["the Hub answered 500"]),
    "503 on commit": ({"POST /api/models/.*/commit/.*": 503}, set(), 1, ["the Hub answered 503"]),
    "403 from storage": ({"PUT /lfs-store/.*": 403}, set(), 1,
                         ["uploading 'adapter_model.safetensors'", "storage", "answered 403"]),
    "connection dropped": ({}, {"POST /api/repos/create"}, 1, ["cannot reach the Hub", "127.0.0.1"]),
}


@pytest.mark.parametrize("case", list(FAILURES))
@pytest.mark.parametrize("json_mode", [False, True], ids=["human", "json"])
def test_failed_push_is_one_line_with_its_exit_code_and_never_the_token(case, json_mode, small_adapter, hub, hf_home):
    fail, drop, code, fragments = FAILURES[case]
    hub.fail.update(fail)
    hub.drop.update(drop)
    project = small_adapter.parent
    result = push(project, hub, hf_home, "me/x", "--path", str(small_adapter), *(["--json"] if json_mode else []))
    assert result.returncode == code, (result.returncode, result.stderr)
    error = final_error(result.stderr)  # after the human progress lines
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert not json_mode or lines[0] == error, result.stderr  # with --json only the error (and its hint)
    for fragment in fragments:
        assert fragment in error, (fragment, error)
    if json_mode:  # the error is also the last JSON line, strict JSON
        assert result.json_lines()[-1]["event"] == "error"
    assert any(re.fullmatch(route, f"{r.method} {r.path}") for r in hub.requests for route in (*fail, *drop)), \
        "the failure was never reached"
    assert_token_nowhere(result, hub, project, hf_home)
    assert hub.signature not in result.stdout + result.stderr  # a pre-signed URL's query string is a secret too
    assert all(r.authorization is None for r in hub.requests if r.path.startswith("/lfs-store/"))



@pytest.mark.parametrize("json_mode", [False, True], ids=["human", "json"])
def test_retried_uploads_log_no_signature(json_mode, small_adapter, hub, hf_home):
    """huggingface_hub retries a storage upload that failed with 503 or a dropped connection and logs
    each try with the pre-signed URL: those lines become scrubbed warnings (events under --json)."""
    hub.transient["PUT /lfs-store/.*"] = [503, None]
    project = small_adapter.parent
    result = push(project, hub, hf_home, "me/x", "--path", str(small_adapter), *(["--json"] if json_mode else []))
    assert result.returncode == 0, result.stderr
    assert len([r for r in hub.requests if r.path.startswith("/lfs-store/")]) == 3  # failed, dropped, stored
    if json_mode:
        assert not result.stderr.strip(), result.stderr
        retries = [e["message"] for e in result.json_lines() if e["event"] == "warning"]
        assert result.json_lines()[-1]["event"] == "done"
    else:
        retries = [line for line in result.stderr.splitlines() if "lfs-store" in line or "Retry" in line]
    assert any("lfs-store" in line and "?…" in line for line in retries), result.stdout + result.stderr
    assert any("Retrying" in line for line in retries), retries
    assert hub.signature not in result.stdout + result.stderr
    assert_token_nowhere(result, hub, project, hf_home)
