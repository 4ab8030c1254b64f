"""Fidelity checks, run in a fresh process: `python -m slothctl.export.check merged|gguf ...` prints
one JSON object.

merged: the adapter on its base (float32) is the reference. The saved weights are compared with
PEFT's exact float32 merge (bit for bit after rounding to the stored dtype: the merge is the right
one; a single weight off by more than one step of the stored dtype fails it) and the merged folder is loaded the way a user would, with transformers, to compare logits.
A 4-bit merge cannot be closer to the reference than 4-bit quantization lets the base model be to
itself, so it is held to that floor, and it must carry the adapter (differ from the quantized base
about as much as the adapter changes the base).
gguf: llama.cpp (through llama-cpp-python) loads each file; its tokenization of chat prompts must equal
the tokenizer's (plain texts are compared too, a difference there is a warning: see gguf.CONVERT_CODE),
and its greedy tokens and logits are compared with transformers on the merged model.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

PROMPTS = ["What is the capital of Peru?", "Give me three tips for sleeping well.",
           "Explain what a sloth eats, in two sentences."]
LOGIT_TOLERANCE_32BIT = 1e-3
# Top-1 agreement a 4-bit merge may lose beyond what quantizing the base alone costs; two standard
# errors of that floor's estimate come on top (9 points at 58% over the 116 positions of PROMPTS).
FLOOR_MARGIN_4BIT = 0.05
GREEDY_TOKENS = 20
EOS_BUDGET = 160  # tokens a q-quant may take to stop on a chat prompt
TIE_MARGIN = 0.25  # logits this close are a tie at f16 precision (measured |diff| 0.06-0.12)


def _chat_ids(tok, prompt: str) -> list[int]:
    ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                  tokenize=True, return_dict=True)["input_ids"]
    return list(ids)


def _device():
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _logits(model, ids: list[int]):
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids], device=model.device)).logits[0].float().cpu()


def _saved_tensors(folder: Path):
    from safetensors import safe_open

    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                yield key, handle.get_tensor(key)


def _delta_norms(peft_model) -> dict[str, float]:
    """Squared Frobenius norm of each LoRA update (B·A·scale), keyed like the merged state dict."""
    from peft.tuners.lora import LoraLayer

    norms = {}
    for name, module in peft_model.named_modules():
        if isinstance(module, LoraLayer):
            for adapter_name in module.active_adapters:
                delta = module.get_delta_weight(adapter_name).float()
                key = name.removeprefix("base_model.model.") + ".weight"
                norms[key] = norms.get(key, 0.0) + float(delta.pow(2).sum())
    return norms


def _quantized_floor(base: str, merged, prompts, base_logits, reference, produced) -> dict:
    """The base model quantized the way the merged model is: how much 4-bit quantization costs this
    model by itself, and whether the merged model moved away from it as the adapter moves the base
    (a merge that dropped the adapter would quantize to the very same weights)."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    settings = merged.config.quantization_config
    settings = settings.to_dict() if hasattr(settings, "to_dict") else dict(settings)
    quantized = AutoModelForCausalLM.from_pretrained(base, quantization_config=BitsAndBytesConfig.from_dict(settings),
                                                     dtype=merged.dtype, device_map={"": str(merged.device)}).eval()
    alone = [_logits(quantized, ids) for ids in prompts]
    shift, moved = _distance(reference, base_logits), _distance(produced, alone)
    floor, positions = _agreement(alone, base_logits), sum(x.shape[0] for x in alone)
    return {"floor_top1_agreement": floor, "floor_mean_abs_logit_diff": _distance(alone, base_logits),
            "min_top1_agreement": floor - FLOOR_MARGIN_4BIT - 2 * math.sqrt(floor * (1 - floor) / positions),
            "adapter_mean_abs_shift": shift, "moved_from_quantized_base": moved,
            "adapter_carried": moved >= 0.5 * shift}


def _agreement(a, b) -> float:
    return sum(int((x.argmax(-1) == y.argmax(-1)).sum()) for x, y in zip(a, b)) / sum(x.shape[0] for x in a)


def _distance(a, b) -> float:
    return sum(float((x - y).abs().mean()) for x, y in zip(a, b)) / len(a)


def _beyond_rounding(saved, truth) -> tuple[int, float]:
    """Elements of `saved` further from the exact float32 merge `truth` than one step of the stored
    dtype at that value, and the largest such error. Rounding to nearest is off by at most half a step;
    a whole step, and at least 2^-20 of the tensor's largest weight, allow for a merge that summed in
    another order (another device) and rounded the other way. NaN and infinity count as beyond."""
    import torch

    finfo = torch.finfo(saved.dtype)
    truth = truth.float()
    _, exponent = torch.frexp(truth)  # |truth| in [2^(e-1), 2^e): the stored dtype's step there is eps * 2^(e-1)
    floor = max(finfo.tiny * finfo.eps, float(truth.abs().max()) * 2.0 ** -20)
    step = torch.clamp(torch.exp2((exponent - 1).float()) * finfo.eps, min=floor)
    diff = (saved.float() - truth).abs()
    beyond = ~(diff <= step)
    if not bool(beyond.any()):
        return 0, 0.0
    return int(beyond.sum()), float(diff[beyond].nan_to_num(nan=math.inf, posinf=math.inf).max())


def check_merged(out: Path, adapter: Path, base: str | None, precision: str) -> dict:
    if precision == "lora":
        from slothctl.export.merge import ADAPTER_FILES
        from slothctl.runs import file_sha256

        differing = [name for name in ADAPTER_FILES if (adapter / name).is_file()
                     and (not (out / name).is_file() or file_sha256(out / name) != file_sha256(adapter / name))]
        return {"kind": "lora", "passed": not differing, "adapter": str(adapter), "differing_files": differing,
                "reason": f"files differ: {differing}" if differing else None}

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = _device()
    tok = AutoTokenizer.from_pretrained(out)
    trained_template = (adapter / "chat_template.jinja").read_text(encoding="utf-8") \
        if (adapter / "chat_template.jinja").is_file() else AutoTokenizer.from_pretrained(adapter).chat_template
    prompts = [_chat_ids(tok, p) for p in PROMPTS]

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).to(device).eval()
    base_logits = [_logits(model, ids) for ids in prompts]
    model = PeftModel.from_pretrained(model, str(adapter)).eval()
    reference = [_logits(model, ids) for ids in prompts]
    delta_sq = _delta_norms(model)
    exact = model.merge_and_unload().eval()
    exact_state = exact.state_dict()

    weights: dict = {"tensors": 0, "mismatched_elements": 0, "elements": 0, "max_abs_error": 0.0,
                     "beyond_rounding": 0, "worst_beyond_rounding": None}
    error_sq = {key: 0.0 for key in delta_sq}
    stored_dtype = None
    if precision in ("16bit", "32bit"):
        for key, saved in _saved_tensors(out):
            truth = exact_state[key].detach().cpu()
            stored_dtype = str(saved.dtype).removeprefix("torch.")
            rounded = truth.to(saved.dtype)
            weights["tensors"] += 1
            weights["elements"] += saved.numel()
            weights["mismatched_elements"] += int((rounded != saved).sum())
            beyond, worst = _beyond_rounding(saved, truth)
            if beyond:
                weights["beyond_rounding"] += beyond
                if weights["worst_beyond_rounding"] is None or worst > weights["worst_beyond_rounding"][1]:
                    weights["worst_beyond_rounding"] = [key, worst]
            diff = saved.float() - truth.float()
            weights["max_abs_error"] = max(weights["max_abs_error"], float(diff.abs().max()))
            if key in error_sq:
                error_sq[key] = float(diff.pow(2).sum())
    del exact, exact_state, model

    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32 if precision != "4bit" else None)
    if precision != "4bit":
        merged = merged.to(device)
    merged.eval()
    produced = [_logits(merged, ids) for ids in prompts]
    quantized = None
    if precision == "4bit":
        quantized = _quantized_floor(base, merged, prompts, base_logits, reference, produced)

    max_diff = max(float((a - b).abs().max()) for a, b in zip(reference, produced))
    mean_diff, agree = _distance(reference, produced), _agreement(reference, produced)
    shift = max(float((a - b).abs().max()) for a, b in zip(reference, base_logits))
    total_delta = sum(delta_sq.values())
    retained = None
    if precision in ("16bit", "32bit") and total_delta > 0:
        retained = max(0.0, 1.0 - math.sqrt(sum(error_sq.values()) / total_delta))
    template_ok = tok.chat_template == trained_template
    gen = merged.generation_config
    eos = gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]

    warnings, reasons = [], []
    if not template_ok:
        reasons.append("the merged tokenizer's chat template differs from the one used in training")
    if precision in ("16bit", "32bit"):
        fraction = weights["mismatched_elements"] / max(1, weights["elements"])
        weights["mismatched_fraction"] = fraction
        if fraction > 1e-4:
            reasons.append(f"{fraction:.2%} of the saved weights differ from the exact merge")
        if weights["beyond_rounding"]:
            key, worst = weights["worst_beyond_rounding"]
            reasons.append(f"{weights['beyond_rounding']} saved weights differ from the exact merge by more than "
                           f"rounding to {stored_dtype} (the worst by {worst:.3g}, in {key})")
    if not math.isfinite(max_diff):
        reasons.append("the merged model produces non-finite logits")
    if precision == "32bit" and max_diff > LOGIT_TOLERANCE_32BIT:
        reasons.append(f"max |logit diff| {max_diff:.2e} > {LOGIT_TOLERANCE_32BIT}")
    if quantized and agree < quantized["min_top1_agreement"]:
        reasons.append(f"top-1 agreement {agree:.1%} < {quantized['min_top1_agreement']:.1%}, well below what 4-bit "
                       f"quantization leaves of the base model itself ({quantized['floor_top1_agreement']:.1%})")
    if quantized and not quantized["adapter_carried"]:
        reasons.append(f"the 4-bit model is within {quantized['moved_from_quantized_base']:.3g} (mean |logit "
                       f"diff|) of the quantized base, where the adapter moves it by "
                       f"{quantized['adapter_mean_abs_shift']:.3g}: the adapter was not merged")
    if precision == "16bit" and retained is not None and (retained < 0.8 or agree < 0.99):
        warnings.append(f"rounding to {stored_dtype} kept only {retained:.0%} of the adapter's weight update "
                        f"(logits move by up to {max_diff:.3g}; the adapter moved them by {shift:.3g}); "
                        "--precision 32bit writes an exact copy" + ("" if stored_dtype == "float16" else
                                                                    ", --set export.dtype=float16 a closer one"))
    return {"kind": "merged", "passed": not reasons, "reason": "; ".join(reasons) or None, "precision": precision,
            "stored_dtype": stored_dtype, "prompts": len(prompts), "max_abs_logit_diff": max_diff,
            "mean_abs_logit_diff": mean_diff, "top1_agreement": agree, "adapter_logit_shift": shift,
            "delta_retained": retained, "weights": weights if precision != "4bit" else None,
            "chat_template_matches": template_ok, "eos_token_ids": eos,
            "pad_token_id": gen.pad_token_id, "tolerance": LOGIT_TOLERANCE_32BIT if precision == "32bit" else None,
            "device": device, "quantized": quantized, "warnings": warnings}


# ---- GGUF ------------------------------------------------------------------------------------------

def _llama(path: Path, **kwargs):
    import llama_cpp

    return llama_cpp.Llama(str(path), n_ctx=512, n_threads=2, seed=0, verbose=False, **kwargs)


def _greedy_hf(model, ids: list[int], n: int) -> list[int]:
    """Greedy tokens, stopping after an end-of-turn token (generation_config's eos)."""
    import torch

    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False,
                             attention_mask=torch.ones(1, len(ids), dtype=torch.long))
    return out[0, len(ids):].tolist()


def _greedy_llama(llm, ids: list[int], n: int, stop: set[int]) -> list[int]:
    llm.reset()
    produced = []
    for token in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
        produced.append(int(token))
        if len(produced) >= n or token in stop:
            break
    return produced


def check_gguf(folder: Path, merged: Path) -> dict:
    """Per file: tokenization (must match), greedy decisions and logits against transformers on the
    transformers greedy answers (teacher-forced, so one near-tie cannot derail the rest), free-running
    greedy answers, and whether a chat answer ends with an end-of-turn token."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(merged)
    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    prompts = [_chat_ids(tok, p) for p in PROMPTS]
    reference = [_greedy_hf(model, ids, GREEDY_TOKENS) for ids in prompts]
    sequences = [ids + answer for ids, answer in zip(prompts, reference)]
    ref_logits = [_logits(model, seq).numpy() for seq in sequences]
    gen = model.generation_config
    stop = set(gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id])
    stop.discard(None)
    chat_texts = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                          tokenize=False) for p in PROMPTS]
    chat_texts.append(tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! 🦥 Ça va?"},
         {"role": "user", "content": "  Tabs\tand\n\nnewlines  "}], add_generation_prompt=True, tokenize=False))
    plain_texts = ["Hello world! Ça va? 3.14159 ... 🦥🦥  \n\t tabs\nund Umlaute: äöü, 日本語, нещо", " leading space"]

    files, reasons, warnings = {}, [], []
    for path in sorted(folder.glob("*.gguf")):
        quant = path.stem.rsplit("-", 1)[-1].lower()
        vocab = _llama(path, vocab_only=True)
        token_mismatch, plain_mismatch = [
            [t for t in texts if vocab.tokenize(t.encode(), add_bos=False, special=True)
             != tok.encode(t, add_special_tokens=False)] for texts in (chat_texts, plain_texts)]
        del vocab
        llm = _llama(path, logits_all=True)
        free_running = [_greedy_llama(llm, ids, GREEDY_TOKENS, stop) for ids in prompts]
        max_diff, decisions, ties, flips = 0.0, 0, 0, 0
        for ids, seq, ref in zip(prompts, sequences, ref_logits):
            llm.reset()
            llm.eval(seq)
            scores = np.asarray(llm.scores[: len(seq)], dtype=np.float32)
            max_diff = max(max_diff, float(np.abs(scores - ref).max()))
            for pos in range(len(ids) - 1, len(seq) - 1):  # each position that chose an answer token
                decisions += 1
                if int(scores[pos].argmax()) != int(ref[pos].argmax()):
                    top2 = np.sort(ref[pos])[-2:]
                    ties += int(top2[1] - top2[0] < TIE_MARGIN)
                    flips += int(top2[1] - top2[0] >= TIE_MARGIN)
        answer = _greedy_llama(llm, prompts[0], EOS_BUDGET, stop)
        stopped = bool(answer) and answer[-1] in stop
        del llm
        files[path.name] = {
            "quant": quant, "tokenization_matches": not token_mismatch,
            "plain_text_tokenization_matches": not plain_mismatch, "greedy_tokens": GREEDY_TOKENS,
            "greedy_matches": [g == r for g, r in zip(free_running, reference)],
            "decisions": decisions, "decisions_differing": ties + flips, "differing_at_near_ties": ties,
            "tie_margin": TIE_MARGIN, "max_abs_logit_diff": max_diff, "stops_at_eos": stopped,
            "answer_tokens": len(answer)}
        if token_mismatch:
            reasons.append(f"{path.name}: llama.cpp tokenizes {len(token_mismatch)} chat prompts differently "
                           f"from the tokenizer, e.g. {token_mismatch[0][:40]!r}")
        if plain_mismatch:
            warnings.append(f"{path.name}: llama.cpp tokenizes {len(plain_mismatch)} plain texts (not chat prompts) "
                            f"differently from the tokenizer, e.g. {plain_mismatch[0][:40]!r}")
        if quant in ("f16", "bf16") and flips:
            warnings.append(f"{path.name}: {flips} of {decisions} greedy decisions differ from transformers where "
                            f"they are not near-ties (margin >= {TIE_MARGIN})")
        if not stopped:
            warnings.append(f"{path.name}: no end-of-turn token within {EOS_BUDGET} tokens on a chat prompt")
    return {"kind": "gguf", "passed": not reasons and bool(files), "reason": "; ".join(reasons) or None,
            "prompts": len(prompts), "files": files, "warnings": warnings}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m slothctl.export.check")
    sub = parser.add_subparsers(dest="kind", required=True)
    merged = sub.add_parser("merged")
    merged.add_argument("--out", type=Path, required=True)
    merged.add_argument("--adapter", type=Path, required=True)
    merged.add_argument("--base")
    merged.add_argument("--precision", required=True)
    gguf = sub.add_parser("gguf")
    gguf.add_argument("--folder", type=Path, required=True)
    gguf.add_argument("--merged", type=Path, required=True)
    args = parser.parse_args(argv)
    from slothctl import libraries

    libraries.quiet()
    if args.kind == "merged":
        result = check_merged(args.out, args.adapter, args.base, args.precision)
    else:
        result = check_gguf(args.folder, args.merged)
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
