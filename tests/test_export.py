"""merge, export merged and export gguf on a real trained adapter of the embedded model (CPU).

One merged model and one GGUF export are shared by the module; the fidelity claims are checked
here by independent code in fresh processes, not only by reading slothctl's own check files.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import assert_usage_error, final_error, run_cli, run_python, strict_json

PROMPTS = ["What is the capital of Peru?", "Give me three tips for sleeping well.", "Why are sloths so slow?"]


@pytest.fixture(scope="module")
def proj(trained_run: Path, tmp_path_factory) -> Path:
    """A private copy of the trained project, so exports never touch the shared run."""
    target = tmp_path_factory.mktemp("export") / "proj"
    shutil.copytree(trained_run, target, symlinks=True)
    for leftover in ("merged", "gguf"):
        shutil.rmtree(target / "runs" / "proj" / leftover, ignore_errors=True)
    return target


@pytest.fixture(scope="module")
def merged(proj: Path) -> dict:
    """`slothctl merge` with every default: runs/proj/merged, 16-bit, checked."""
    result = run_cli("merge", "--json", cwd=proj)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.json_lines()[-1]


@pytest.fixture(scope="module")
def gguf(proj: Path, merged: dict) -> dict:
    result = run_cli("export", "gguf", "--quant", "f16", "--quant", "q4_k_m", "--json", cwd=proj)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.json_lines()[-1]


def test_merge_writes_a_complete_checked_folder(proj, merged, embedded_model):
    folder = proj / "runs" / "proj" / "merged"
    adapter = proj / "runs" / "proj" / "adapter"
    assert merged["event"] == "done" and Path(merged["merged"]) == folder
    assert merged["precision"] == "16bit" and merged["dtype"] == "float16"  # [export] dtype = "auto"
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
                 "tokenizer_config.json", "chat_template.jinja", "slothctl_merged.json", "slothctl_check.json"):
        assert (folder / name).is_file(), name
    assert not list(folder.parent.glob(".merged*")), "temporary folders left behind"
    # the tokenizer and chat template are the ones training used
    assert (folder / "chat_template.jinja").read_text() == (adapter / "chat_template.jinja").read_text()
    assert (folder / "tokenizer.json").read_bytes() == (adapter / "tokenizer.json").read_bytes()
    generation = json.loads((folder / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 2 and generation["pad_token_id"] == 0  # <|im_end|>, <|endoftext|>
    config = json.loads((folder / "config.json").read_text())
    assert config["dtype"] == "float16" and "quantization_config" not in config
    check = json.loads((folder / "slothctl_check.json").read_text())
    assert check == merged["check"]
    assert check["passed"] and check["chat_template_matches"] and check["prompts"] == 3
    assert check["weights"]["tensors"] > 200 and check["weights"]["mismatched_elements"] == 0
    # the rounding to 16 bits is measured, not hidden (measured: 0.05 max, 100% top-1, 86% of the update kept)
    assert 0 < check["max_abs_logit_diff"] < 0.2 < check["adapter_logit_shift"]
    assert check["top1_agreement"] == 1.0 and 0.7 < check["delta_retained"] < 1 and not check["warnings"]
    info = json.loads((folder / "slothctl_merged.json").read_text())
    assert info["base_model"] == "embedded:smollm2-135m" and info["backend"] == "hf"


def test_merged_model_answers_like_the_adapter(proj, merged, embedded_model):
    """Loaded as a user would, without PEFT: the same greedy answers as the adapter on its base."""
    folder = proj / "runs" / "proj" / "merged"
    adapter = proj / "runs" / "proj" / "adapter"
    code = f"""
import json, torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained({str(folder)!r})
def answers(model):
    out = []
    for prompt in {PROMPTS[:2]!r}:
        ids = tok.apply_chat_template([{{"role": "user", "content": prompt}}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)["input_ids"]
        out.append(tok.decode(model.generate(ids, max_new_tokens=24, do_sample=False)[0, ids.shape[1]:]))
    return out
merged = answers(AutoModelForCausalLM.from_pretrained({str(folder)!r}, dtype=torch.float32))
base = AutoModelForCausalLM.from_pretrained({str(embedded_model)!r}, dtype=torch.float32)
print(json.dumps({{"merged": merged, "adapter": answers(PeftModel.from_pretrained(base, {str(adapter)!r}))}}))
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["merged"] == found["adapter"], found


@pytest.mark.slow  # not in CI (./scripts/test -m slow runs these)
def test_export_merged_32bit_is_the_adapter(proj, merged, tmp_path):
    """The issue's bar: merged vs adapter max |logit diff| <= 1e-3 in fp32 (measured ~1e-4)."""
    out = tmp_path / "exact"
    result = run_cli("export", "merged", "--precision", "32bit", "--out", str(out), "--json", cwd=proj)
    assert result.returncode == 0, result.stderr[-3000:]
    check = result.json_lines()[-1]["check"]
    assert check["passed"] and check["stored_dtype"] == "float32" and check["tolerance"] == 1e-3
    assert check["max_abs_logit_diff"] <= 1e-3, check
    assert check["top1_agreement"] == 1.0 and check["delta_retained"] > 0.999
    # independent of slothctl: W_merged == W_base + (alpha/r) * B @ A for one projection, read from the files
    adapter = proj / "runs" / "proj" / "adapter"
    code = f"""
import json, torch
from safetensors.torch import load_file
from slothctl.models import ensure_embedded
base = load_file(str(ensure_embedded("smollm2-135m") / "model.safetensors"))
lora = load_file({str(adapter / "adapter_model.safetensors")!r})
merged = load_file({str(out / "model.safetensors")!r})
cfg = json.load(open({str(adapter / "adapter_config.json")!r}))
key = "model.layers.7.mlp.down_proj"
a = lora[f"base_model.model.{{key}}.lora_A.weight"].float()
b = lora[f"base_model.model.{{key}}.lora_B.weight"].float()
expected = base[key + ".weight"].float() + cfg["lora_alpha"] / cfg["r"] * (b @ a)
print(json.dumps({{"err": (merged[key + ".weight"] - expected).abs().max().item(),
                  "delta": (b @ a).abs().max().item()}}))
"""
    proof = run_python(code)
    assert proof.returncode == 0, proof.stderr[-2000:]
    measured = json.loads(proof.stdout.strip().splitlines()[-1])
    assert measured["delta"] > 1e-4 and measured["err"] < 1e-6


def test_gguf_files_metadata_and_modelfile(proj, merged, gguf):
    folder = proj / "runs" / "proj" / "gguf"
    adapter = proj / "runs" / "proj" / "adapter"
    assert Path(gguf["gguf_dir"]) == folder and gguf["merge_seconds"] is None  # reused runs/proj/merged
    names = sorted(p.name for p in folder.glob("*.gguf"))
    assert names == ["proj-F16.gguf", "proj-Q4_K_M.gguf"]
    assert not list(folder.glob(".*")) and not list(folder.parent.glob(".gguf*"))
    from gguf import GGUFReader

    training_template = (adapter / "chat_template.jinja").read_text()
    for name in names:
        reader = GGUFReader(str(folder / name))
        assert reader.fields["tokenizer.chat_template"].contents() == training_template
        assert reader.fields["tokenizer.ggml.eos_token_id"].contents() == 2
        assert reader.fields["tokenizer.ggml.model"].contents() == "gpt2"
        assert reader.fields["tokenizer.ggml.pre"].contents() == "smollm"  # llama.cpp recognised the chkhsh
        assert reader.fields["general.architecture"].contents() == "llama"
    modelfile = (folder / "Modelfile").read_text()
    assert "FROM ./proj-F16.gguf" in modelfile
    assert 'TEMPLATE """{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}' \
           '<|im_start|>assistant\n"""' in modelfile
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face"""' in modelfile
    assert 'PARAMETER stop "<|im_end|>"' in modelfile and "PARAMETER temperature 0.7" in modelfile
    check = json.loads((folder / "slothctl_check.json").read_text())
    assert check["passed"] and set(check["files"]) == set(names)
    assert all(item["tokenization_matches"] for item in check["files"].values())


GGUF_FIDELITY = """
import json, numpy as np, torch, llama_cpp
from transformers import AutoModelForCausalLM, AutoTokenizer
merged, f16, q4 = {merged!r}, {f16!r}, {q4!r}
tok = AutoTokenizer.from_pretrained(merged)
model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)
llm = llama_cpp.Llama(f16, n_ctx=512, logits_all=True, verbose=False)
report = {{"prompts": []}}
for prompt in {prompts!r}:
    ids = tok.apply_chat_template([{{"role": "user", "content": prompt}}], add_generation_prompt=True,
                                  tokenize=True, return_dict=True)["input_ids"]
    answer = model.generate(torch.tensor([ids]), max_new_tokens=20, do_sample=False)[0, len(ids):].tolist()
    seq = ids + answer
    with torch.no_grad():
        ref = model(torch.tensor([seq])).logits[0].numpy()
    llm.reset()
    llm.eval(seq)
    cpp = np.asarray(llm.scores[:len(seq)])
    steps = range(len(ids) - 1, len(seq) - 1)  # the positions that chose the 20 answer tokens
    report["prompts"].append({{
        "answer": answer, "cpp_choices": [int(cpp[i].argmax()) for i in steps],
        "margins": [float(np.diff(np.sort(ref[i])[-2:])[0]) for i in steps],
        "max_logit_diff": float(np.abs(cpp - ref).max())}})
small = llama_cpp.Llama(q4, n_ctx=512, verbose=False)
text = tok.apply_chat_template([{{"role": "user", "content": {prompts!r}[0]}}], add_generation_prompt=True,
                               tokenize=False)
done = small.create_completion(text, max_tokens=200, temperature=0.0)
report["q4"] = {{"finish": done["choices"][0]["finish_reason"], "text": done["choices"][0]["text"],
                "tokens": done["usage"]["completion_tokens"]}}
print(json.dumps(report))
"""


def test_gguf_f16_matches_transformers_and_q4_stops(proj, merged, gguf):
    """f16: on 3 chat prompts, llama.cpp picks the same greedy token as transformers at each of the (up to)
    20 answer positions, except where transformers' own top two are within 0.25 (a tie at f16 precision);
    logits within 0.25 (measured 0.06-0.12). q4_k_m: loads, answers and stops on its own at end of turn."""
    folder = proj / "runs" / "proj" / "gguf"
    code = GGUF_FIDELITY.format(merged=str(proj / "runs" / "proj" / "merged"), f16=str(folder / "proj-F16.gguf"),
                                q4=str(folder / "proj-Q4_K_M.gguf"), prompts=PROMPTS)
    result = run_python(code)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    for item in report["prompts"]:
        assert len(item["answer"]) >= 5 and item["max_logit_diff"] < 0.25, item
        differing = [i for i, (a, b) in enumerate(zip(item["cpp_choices"], item["answer"])) if a != b]
        assert all(item["margins"][i] < 0.25 for i in differing), item
        assert len(differing) <= 1, item
    assert report["q4"]["finish"] == "stop" and report["q4"]["tokens"] < 200, report["q4"]
    assert report["q4"]["text"].strip()
    check = json.loads((folder / "slothctl_check.json").read_text())["files"]["proj-F16.gguf"]
    assert check["decisions_differing"] == check["differing_at_near_ties"] and check["max_abs_logit_diff"] < 0.25


# ---- the checks refuse: a tampered weight, a wrong eos or template; nothing is left behind ---------------

# `slothctl ARGS` in a process where one step of the export is followed by a tampering: `merge` writes
# the weights, then one of them is moved by 0.01 (thousands of float16 steps, in one weight of 135M:
# far below the 1e-4 share of differing weights the check tolerated before); `export gguf` converts,
# then the GGUF's eos id or one byte of its chat template is changed in place (gguf-py, mode r+).
TAMPERED = """
import sys
from pathlib import Path
from slothctl.export import gguf as gguf_export, merge as merge_export
what = {what!r}
copy_tokenizer = merge_export.copy_tokenizer
def tampered_copy_tokenizer(adapter, out, base=None):
    from safetensors.torch import load_file, save_file
    weights = load_file(str(out / "model.safetensors"))
    weights["model.layers.0.self_attn.q_proj.weight"][0, 0] += 0.01
    save_file(weights, str(out / "model.safetensors"), metadata={{"format": "pt"}})
    return copy_tokenizer(adapter, out, base)
convert = gguf_export.convert
def tampered_convert(tools_state, view, outfile, *args, **kwargs):
    convert(tools_state, view, outfile, *args, **kwargs)
    from gguf import GGUFReader
    reader = GGUFReader(str(outfile), "r+")
    if what == "eos":
        field = reader.fields["tokenizer.ggml.eos_token_id"]
        field.parts[field.data[0]][0] = 0
    else:
        field = reader.fields["tokenizer.chat_template"]
        text = field.parts[field.data[0]]
        text[list(text).index(ord("<"))] = ord("[")
    reader.data.flush()
if what == "weight":
    merge_export.copy_tokenizer = tampered_copy_tokenizer
else:
    gguf_export.convert = tampered_convert
sys.argv = ["slothctl", *{args!r}]
from slothctl.cli.app import main
sys.exit(main())
"""


def run_tampered(what: str, *args: str, cwd: Path):
    return run_python(TAMPERED.format(what=what, args=list(args)), cwd=cwd)


def assert_refused(result, code: int, *fragments: str) -> str:
    assert result.returncode == code, (result.returncode, result.stderr[-3000:])
    error = final_error(result.stderr)
    for fragment in fragments:
        assert fragment in error, (fragment, error)
    assert strict_json(result.stdout.splitlines()[-1])["event"] == "error"  # --json: the error event too
    return error


def test_the_merged_check_counts_each_weight_off_by_more_than_one_step_of_its_dtype():
    import torch

    from slothctl.export.check import _beyond_rounding

    truth = torch.tensor([0.1234567, -3.3e-6, 0.0, 1e-9, 300.7, 0.5], dtype=torch.float32)
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        rounded = truth.to(dtype)
        assert _beyond_rounding(rounded, truth) == (0, 0.0), dtype  # rounding to nearest: within half a step
        assert _beyond_rounding(torch.nextafter(rounded.float(), torch.tensor(9e9)).to(dtype), truth)[0] == 0
        off = rounded.clone()
        off[0] += 0.01  # one weight tampered with, among any number of them
        assert _beyond_rounding(off, truth)[0] == 1, dtype
        off[1] = float("nan")
        assert _beyond_rounding(off, truth)[0] == 2 and _beyond_rounding(off, truth)[1] == float("inf")


@pytest.mark.slow  # not in CI (./scripts/test -m slow runs these): a real merge and check, ~50 s
def test_a_merged_weight_off_by_more_than_rounding_is_refused(proj, merged, tmp_path):
    out = tmp_path / "tampered"
    result = run_tampered("weight", "merge", "--out", str(out), "--json", cwd=proj)
    assert_refused(result, 1, "failed its fidelity check", "1 saved weights differ from the exact merge by more "
                   "than rounding to float16", "model.layers.0.self_attn.q_proj.weight", "nothing was written")
    assert list(tmp_path.iterdir()) == []  # no merged folder, no temporary one


@pytest.mark.slow  # not in CI (./scripts/test -m slow runs these): a real GGUF conversion each
@pytest.mark.parametrize("what", ["eos", "template"])
def test_a_gguf_with_a_wrong_eos_or_chat_template_is_refused(proj, merged, tmp_path, what):
    out = tmp_path / "gguf"
    result = run_tampered(what, "export", "gguf", "--quant", "f16", "--out", str(out), "--json", cwd=proj)
    expected = "eos token id is 0, the tokenizer's is 2" if what == "eos" else \
        "the chat template in the GGUF differs from the one used in training"
    assert_refused(result, 1, "proj-F16.gguf", expected)
    assert list(tmp_path.iterdir()) == []


def test_a_merged_folder_changed_since_merge_is_not_exported(proj, merged, tmp_path):
    """merge records each file's sha256; export gguf converts only the folder it checked (exit 2, nothing written)."""
    changed = tmp_path / "merged"
    shutil.copytree(proj / "runs" / "proj" / "merged", changed)
    info = json.loads((changed / "slothctl_merged.json").read_text())
    assert set(info["files"]) >= {"model.safetensors", "config.json", "tokenizer.json", "generation_config.json"}
    config = json.loads((changed / "config.json").read_text())
    (changed / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 0.1}))
    out = tmp_path / "gguf"
    result = run_cli("export", "gguf", "--quant", "f16", "--merged", str(changed), "--out", str(out), cwd=proj)
    assert_usage_error(result, "changed since slothctl merge checked it (config.json)", "merge --force")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]


# ---- bad input: one line, exit 2, nothing written ---------------------------------------------------

def test_merge_refuses_existing_output_and_force_replaces_atomically(proj, merged, tmp_path):
    folder = proj / "runs" / "proj" / "merged"
    before = (folder / "slothctl_check.json").read_text()
    assert_usage_error(run_cli("merge", cwd=proj), "already exists", "--force")
    assert (folder / "slothctl_check.json").read_text() == before
    out = tmp_path / "lora"
    first = run_cli("merge", "--precision", "lora", "--out", str(out), "--json", cwd=proj)
    assert first.returncode == 0, first.stderr
    assert first.json_lines()[-1]["check"]["passed"]
    assert (out / "adapter_model.safetensors").read_bytes() == \
        (proj / "runs" / "proj" / "adapter" / "adapter_model.safetensors").read_bytes()
    assert_usage_error(run_cli("export", "merged", "--precision", "lora", "--out", str(out), cwd=proj),
                       "already exists")
    (out / "marker").write_text("old")
    again = run_cli("export", "merged", "--precision", "lora", "--out", str(out), "--force", "--checkpoint", "10",
                    "--json", cwd=proj)
    assert again.returncode == 0, again.stderr
    assert not (out / "marker").exists() and "checkpoint-10" in again.json_lines()[-1]["adapter"]
    assert not list(tmp_path.glob(".lora*"))


def test_bad_inputs_exit_2_with_one_line(proj, merged, tmp_path):
    empty = tmp_path / "untrained"
    assert run_cli("init", str(empty), "--example").returncode == 0
    assert_usage_error(run_cli("merge", cwd=empty), "no run at", "slothctl train")
    assert_usage_error(run_cli("export", "gguf", cwd=empty), "no run at")
    assert_usage_error(run_cli("merge", "--adapter", str(tmp_path / "nope"), cwd=proj), "not a LoRA adapter")
    assert_usage_error(run_cli("merge", "--checkpoint", "99", cwd=proj), "no checkpoint 99")
    line = assert_usage_error(run_cli("export", "gguf", "--quant", "q5_k_x", cwd=proj), "q5_k_x")
    assert "f16, bf16, q8_0, q4_k_m" in line
    assert_usage_error(run_cli("export", "gguf", "--set", "export.quant=[\"q3\"]", cwd=proj), "[export] quant")
    assert_usage_error(run_cli("merge", "--precision", "4bit", "--out", str(tmp_path / "q"), cwd=proj),
                       "4bit", "CUDA")
    # a merged folder from another adapter is not silently converted
    assert_usage_error(run_cli("export", "gguf", "--checkpoint", "10", "--out", str(tmp_path / "g"), cwd=proj),
                       "another adapter", "merge --force")
    assert not (tmp_path / "q").exists() and not (tmp_path / "g").exists()


def test_not_enough_disk_is_refused_before_writing(proj, merged, tmp_path):
    out = tmp_path / "big"
    result = run_cli("merge", "--out", str(out), "--no-check", cwd=proj, env={"SLOTHCTL_FREE_BYTES": "100000000"})
    assert_usage_error(result, "not enough disk space", "0.27 GB")
    assert not out.exists() and not list(tmp_path.glob(".big*"))


def test_missing_gguf_tools_name_the_prepare_command(proj, tmp_path):
    result = run_cli("export", "gguf", cwd=proj, env={"SLOTHCTL_CACHE": str(tmp_path / "empty-cache")})
    assert_usage_error(result, "not prepared", "slothctl export prepare")


MAKE_4BIT = """
import shutil, sys, torch
from pathlib import Path
from peft import PeftModel
from transformers import AutoModelForCausalLM, BitsAndBytesConfig
base, adapter, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
nf4 = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), str(adapter))
model.merge_and_unload().save_pretrained(out / "fp32")
for name, source in (("merged", out / "fp32"), ("dropped", Path(base))):
    quantized = AutoModelForCausalLM.from_pretrained(source, quantization_config=nf4, dtype=torch.float32)
    quantized.save_pretrained(out / name)
    for f in adapter.iterdir():
        if f.name.startswith(("tokenizer", "chat_template", "special_tokens")):
            shutil.copy(f, out / name / f.name)
"""


@pytest.mark.slow  # not in CI (./scripts/test -m slow runs these)
def test_4bit_check_holds_merges_to_the_models_own_4bit_floor(proj, embedded_model, tmp_path):
    """The 4-bit fidelity check (Unsloth's 4-bit merge needs CUDA; bitsandbytes NF4 runs on CPU
    too): a merged-then-quantized model passes; the quantized base without the adapter fails."""
    import subprocess
    import sys

    adapter = proj / "runs" / "proj" / "adapter"
    subprocess.run([sys.executable, "-c", MAKE_4BIT, str(embedded_model), str(adapter), str(tmp_path)],
                   check=True, capture_output=True, timeout=600)
    results = {}
    for name in ("merged", "dropped"):
        proc = subprocess.run([sys.executable, "-m", "slothctl.export.check", "merged", "--out", str(tmp_path / name),
                               "--adapter", str(adapter), "--base", str(embedded_model), "--precision", "4bit"],
                              check=False, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[name] = strict_json(proc.stdout.splitlines()[-1])
    good, bad = results["merged"], results["dropped"]
    assert 0.3 < good["quantized"]["floor_top1_agreement"] < 0.95  # NF4 costs a 135M model a lot
    assert good["passed"] and good["quantized"]["adapter_carried"], good
    assert good["quantized"]["moved_from_quantized_base"] > 0.5 * good["quantized"]["adapter_mean_abs_shift"] > 0
    assert not bad["passed"] and bad["quantized"]["moved_from_quantized_base"] == 0.0, bad
    assert "the adapter was not merged" in bad["reason"]
