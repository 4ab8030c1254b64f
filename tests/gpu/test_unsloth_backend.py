"""The Unsloth backend on a real GPU with the embedded model: it trains, QLoRA trains, its
adapter is a normal PEFT adapter that the hf backend (CPU, float32, no Unsloth) loads and that
gives the same logits within bf16 precision, `chat` answers through Unsloth's inference mode, and
`merge --precision 4bit` writes a checked bitsandbytes model.

Measured numbers are written to $SLOTHCTL_GPU_RESULTS (a JSON file) when it is set."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import pytest
from conftest import make_project, run_cli

HERE = Path(__file__).resolve().parent
GPU = ["model.max_seq_length=256", "train.batch_size=8", "train.gradient_accumulation_steps=1",
       "data.eval_fraction=0.0", "train.save_steps=0", "model.backend=unsloth"]
# Tolerance: the tuned model on the GPU (Unsloth, bf16) and on the CPU (hf backend, float32) may
# differ by at most twice what bf16 vs float32 does to the base model itself, plus a small margin;
# the most likely next token must agree almost everywhere.
MIN_TOP1_AGREEMENT = 0.9


def record(name: str, value) -> None:
    target = os.environ.get("SLOTHCTL_GPU_RESULTS")
    if not target:
        return
    path = Path(target)
    data = json.loads(path.read_text()) if path.exists() else {}
    data[name] = value
    path.write_text(json.dumps(data, indent=2))


def losses_of(result) -> list[float]:
    return [e["loss"] for e in result.json_lines() if e["event"] == "step"]


def probe(backend: str, base: Path, adapter: Path, device: str, out: Path):
    import subprocess

    env = dict(os.environ)
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    proc = subprocess.run([sys.executable, str(HERE / "logits_probe.py"), backend, str(base), str(adapter),
                           device, str(out)], check=False, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    import torch

    return torch.load(out)


@pytest.fixture(scope="module")
def gpu_run(tmp_path_factory, embedded_model):
    """One 24-step Unsloth run that the training, chat and merge tests share."""
    project = make_project(tmp_path_factory.mktemp("gpu") / "gpu", *GPU, fast=False)
    result = run_cli("train", "--max-steps", "24", "--json", cwd=project)
    assert result.returncode == 0, result.stderr[-4000:]
    return project, losses_of(result)


def test_unsloth_trains_and_hf_backend_reproduces_its_logits(tmp_path, embedded_model, gpu_run):
    project, losses = gpu_run
    assert len(losses) == 24
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < first * 0.8, losses
    summary = json.loads((project / "runs" / "gpu" / "summary.json").read_text())
    assert summary["backend"] == "unsloth" and summary["device"] == "cuda"
    adapter = project / "runs" / "gpu" / "adapter"
    info = json.loads((adapter / "slothctl_adapter.json").read_text())
    assert info["backend"] == "unsloth"

    def compare(gpu_rows, cpu_rows) -> dict:
        diffs = [(a - b).abs() for a, b in zip(gpu_rows, cpu_rows)]
        agree = sum((a.argmax(-1) == b.argmax(-1)).sum().item() for a, b in zip(gpu_rows, cpu_rows))
        return {"max_abs_diff": max(d.max().item() for d in diffs),
                "mean_abs_diff": sum(d.sum().item() for d in diffs) / sum(d.numel() for d in diffs),
                "top1_agreement": agree / sum(a.shape[0] for a in gpu_rows)}

    tuned = compare(probe("unsloth", embedded_model, adapter, "cuda", tmp_path / "gpu.pt"),
                    probe("hf", embedded_model, adapter, "cpu", tmp_path / "cpu.pt"))
    base = compare(probe("unsloth", embedded_model, "none", "cuda", tmp_path / "gpu-base.pt"),
                   probe("hf", embedded_model, "none", "cpu", tmp_path / "cpu-base.pt"))
    record("unsloth_gpu_vs_hf_cpu_logits", {"tuned": tuned, "base": base, "first_loss": first, "last_loss": last,
                                            "tokens_per_s": summary["tokens_per_s"]})
    assert tuned["max_abs_diff"] <= 2 * base["max_abs_diff"] + 0.25, (tuned, base)
    assert tuned["mean_abs_diff"] <= 2 * base["mean_abs_diff"] + 0.02, (tuned, base)
    assert tuned["top1_agreement"] >= MIN_TOP1_AGREEMENT, tuned


def test_qlora_4bit_trains(tmp_path, embedded_model):
    """16 rows, two batches, six epochs: the same batches come back, so their loss must fall.
    (On the whole dataset the per-step loss mostly reflects which rows a batch holds.)"""
    project = make_project(tmp_path / "qlora", *GPU, "model.load_in_4bit=true", "data.max_rows=16",
                           "train.batching=padded", fast=False)
    result = run_cli("train", "--max-steps", "12", "--json", cwd=project)
    assert result.returncode == 0, result.stderr[-4000:]
    losses = losses_of(result)
    record("qlora_losses", losses)
    assert all(math.isfinite(loss) for loss in losses)
    assert sum(losses[-2:]) / 2 < 0.8 * sum(losses[:2]) / 2, losses
    adapter = project / "runs" / "qlora" / "adapter" / "adapter_model.safetensors"
    assert adapter.is_file()


def test_cpu_checkpoint_resumes_on_gpu(tmp_path, embedded_model):
    """A run started with the hf backend on CPU continues on the GPU with the unsloth backend."""
    project = make_project(tmp_path / "move", *GPU, "train.save_steps=2", fast=False)
    cpu = run_cli("train", "--max-steps", "2", "--json", "--set", "model.backend=hf", cwd=project,
                  env={"CUDA_VISIBLE_DEVICES": ""})
    assert cpu.returncode == 0, cpu.stderr[-4000:]
    assert (project / "runs" / "move" / "checkpoint-2").is_dir()
    gpu = run_cli("train", "--max-steps", "4", "--json", cwd=project)
    assert gpu.returncode == 0, gpu.stderr[-4000:]
    steps = [e["step"] for e in gpu.json_lines() if e["event"] == "step"]
    assert steps == [3, 4], steps
    summary = json.loads((project / "runs" / "move" / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["backend"] == "unsloth"


PROMPT = "What is the capital of Portugal?"
GREEDY = ["--temperature", "0", "--max-new-tokens", "24", "--json"]


def test_chat_answers_cleanly_on_cuda_and_on_the_cpu(gpu_run):
    """`chat` on the GPU (Unsloth's for_inference) and on the CPU (hf backend, float32) answer the
    same prompt greedily with the same adapter: both answer without template markers, and the adapter
    changes the GPU's answer. The words are not compared across devices: where the tuned model's first
    two tokens are nearly tied, bf16 and float32 pick different ones (2026-12-03: "Au" on the GPU,
    "Awesome" on the CPU). test_unsloth_trains_and_hf_backend_reproduces_its_logits compares the two
    devices where it is meaningful: the logits."""
    project, _ = gpu_run
    gpu = run_cli("chat", "-p", PROMPT, "--compare", *GREEDY, cwd=project)
    assert gpu.returncode == 0, gpu.stderr[-4000:]
    replies = gpu.json_lines()[-1]
    cpu = run_cli("chat", "-p", PROMPT, *GREEDY, "--set", "model.backend=hf", cwd=project,
                  env={"CUDA_VISIBLE_DEVICES": ""})
    assert cpu.returncode == 0, cpu.stderr[-4000:]
    cpu_answer = cpu.json_lines()[-1]["answer"]
    tuned, base = replies["tuned"]["answer"], replies["base"]["answer"]
    record("chat", {"gpu_tuned": replies["tuned"], "gpu_base": replies["base"], "cpu_tuned": cpu_answer})
    for answer in (tuned, base, cpu_answer):
        assert answer.strip() and "<|im_" not in answer, answer
    assert tuned != base


def test_merge_4bit_through_unsloth(gpu_run):
    """`merge --precision 4bit` writes a bitsandbytes NF4 model that loads in a fresh process and
    passes the fidelity check: about as close to the exact merge as NF4 lets the base model be to
    itself, and carrying the adapter."""
    project, _ = gpu_run
    result = run_cli("merge", "--precision", "4bit", "--json", "-o", "merged-4bit", cwd=project)
    check = json.loads((project / "merged-4bit" / "slothctl_check.json").read_text()) \
        if (project / "merged-4bit" / "slothctl_check.json").is_file() else None
    record("merge_4bit", {"returncode": result.returncode, "check": check, "stdout": result.stdout[-3000:],
                         "stderr": result.stderr[-1500:]})
    assert result.returncode == 0, result.stderr[-4000:]
    config = json.loads((project / "merged-4bit" / "config.json").read_text())
    quant = config.get("quantization_config", {})
    assert quant.get("load_in_4bit") and quant.get("bnb_4bit_quant_type") == "nf4", quant
    assert check["passed"] and check["precision"] == "4bit" and check["quantized"]["adapter_carried"], check
