"""Logits of a base model + adapter on three chat prompts, computed in a fresh process.

    python logits_probe.py BACKEND BASE ADAPTER DEVICE OUT

BACKEND is `unsloth` (FastLanguageModel, bf16 on CUDA) or `hf` (transformers + PEFT, float32);
ADAPTER `none` gives the base model's logits.
A fresh process per backend, because Unsloth patches transformers for the whole process.
"""

from __future__ import annotations

import os
import sys

PROMPTS = ["What is the capital of Peru?", "What is 7 times 8?", "What sound does a duck make?"]


def main(backend: str, base: str, adapter: str, device: str, out: str) -> None:
    os.environ["UNSLOTH_RETURN_LOGITS"] = "1"
    from slothctl import backends
    from slothctl import config as config_mod

    engine = backends.get(backend)  # imports unsloth first for the unsloth backend
    import torch

    cfg = config_mod.build({"model": {"name": base, "backend": backend, "max_seq_length": 512},
                            "data": {"source": "unused"}}, "probe")
    if backend == "hf":
        cfg.model.dtype = "float32"
    options = backends.LoadOptions.of(cfg)
    if adapter == "none":  # the base model alone: the precision baseline
        model, tokenizer = engine.load(cfg.model, base, options)
    else:
        model, tokenizer = engine.load_adapter(cfg.model, base, adapter, options)
    model = model.to(device).eval()
    rows = []
    for prompt in PROMPTS:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)["input_ids"].to(device)
        with torch.no_grad():
            rows.append(model(input_ids=ids).logits[0].float().cpu())
    torch.save(rows, out)


if __name__ == "__main__":
    main(*sys.argv[1:])
