"""`slothctl doctor`: what the machine can do, for people and scripts."""

from __future__ import annotations

import pytest


from conftest import run_cli


def test_doctor_json_reports_versions_backend_model_and_gguf_tools(tmp_path):
    result = run_cli("doctor", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    info = result.json()
    for name in ("torch", "transformers", "trl", "peft"):
        assert info["libraries"][name], name
    assert info["python"].count(".") == 2
    usable = info["cuda"]["available"] and info["unsloth"]["installed"]
    assert info["unsloth"]["usable"] == usable and info["auto_backend"] == ("unsloth" if usable else "hf")
    model = info["embedded_models"][0]
    assert model["name"] == "embedded:smollm2-135m" and model["installed"] and model["converted"]
    tools = info["gguf_tools"]
    assert tools["llama_cpp_python"] == "0.3.36" and tools["ready"], tools
    assert len(tools["llama_cpp_commit"]) == 40 and info["project"] is None


@pytest.mark.slow  # not in CI (./scripts/test -m slow runs these)
def test_doctor_with_an_empty_cache_says_how_to_prepare(tmp_path, project):
    result = run_cli("doctor", cwd=project, env={"SLOTHCTL_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr
    assert "slothctl export prepare" in result.stdout
    assert "not converted yet" in result.stdout and "not trained yet" in result.stdout
    as_json = run_cli("doctor", "--json", cwd=project, env={"SLOTHCTL_CACHE": str(tmp_path / "cache")}).json()
    assert as_json["gguf_tools"] == {**as_json["gguf_tools"], "ready": False, "prepare": "slothctl export prepare"}
    assert as_json["project"]["valid"] and as_json["project"]["adapter"] is False


def test_prepare_rejects_a_wrong_sdist(tmp_path):
    missing = run_cli("export", "prepare", "--sdist", str(tmp_path / "nope.tar.gz"), "--force")
    assert missing.returncode == 2 and "no such file" in missing.stderr
    other = tmp_path / "llama_cpp_python-0.2.0.tar.gz"
    other.write_bytes(b"")
    wrong = run_cli("export", "prepare", "--sdist", str(other), "--force")
    assert wrong.returncode == 2 and "0.3.36" in wrong.stderr
