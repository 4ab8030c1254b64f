"""The `unsloth` backend: Unsloth's FastLanguageModel on CUDA.

Importing this module imports unsloth, which must happen before transformers, trl and peft are
imported in the process: Unsloth patches their classes. `backends.get("unsloth")` is therefore
called before anything else heavy in `training.train`. Unsloth refuses to import without a
CUDA GPU; `backends.select` checks that first and gives a clear message.

Only loading, LoRA, merging and inference differ from the hf backend: data, TRL arguments,
checkpoints and artifacts are shared, so a GPU adapter is used on CPU as is.
"""

from __future__ import annotations

import dataclasses
import os

os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")  # no network calls from the training process

import unsloth  # noqa: E402,F401  (must precede transformers, trl, peft)

from slothctl.backends import hf  # noqa: E402
from slothctl.backends.common import lora_targets, make_trainer_class  # noqa: E402
from slothctl.config import Config  # noqa: E402
from slothctl.errors import RuntimeFailure, UsageError  # noqa: E402
from slothctl.events import Emit, ignore, status  # noqa: E402

NAME = "unsloth"


def _dtype(cfg: Config):
    import torch

    return None if cfg.model.dtype in ("auto", "float32") else getattr(torch, cfg.model.dtype)


def load(cfg: Config, model_path: str, emit: Emit = ignore):
    """FastLanguageModel.from_pretrained with the [model] settings; the tokenizer is loaded with
    transformers, as the hf backend does, so both backends save identical tokenizers."""
    from unsloth import FastLanguageModel

    status(emit, f"Loading {cfg.model.name} with Unsloth")
    try:
        model, _ = FastLanguageModel.from_pretrained(
            model_name=model_path,
            max_seq_length=cfg.model.max_seq_length,
            dtype=_dtype(cfg),
            load_in_4bit=cfg.model.load_in_4bit,
            load_in_8bit=cfg.model.load_in_8bit,
            trust_remote_code=cfg.model.trust_remote_code,
            revision=cfg.model.revision or None,
            use_gradient_checkpointing="unsloth" if cfg.train.gradient_checkpointing else False,
            random_state=cfg.train.seed,
        )
    except OSError as exc:
        raise UsageError(f"cannot load model `{cfg.model.name}`: {exc}") from None
    from slothctl.data.templates import configure_hf_tokenizer

    tokenizer = hf.load_tokenizer(cfg, model_path)
    configure_hf_tokenizer(cfg, tokenizer, model)  # the same pad token as the hf backend and `data inspect`
    return model, tokenizer


def add_lora(model, cfg: Config):
    from unsloth import FastLanguageModel

    lora = cfg.lora
    try:
        return FastLanguageModel.get_peft_model(
            model,
            r=lora.r,
            target_modules=lora_targets(model, list(lora.target_modules)),
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            bias=lora.bias,
            use_gradient_checkpointing="unsloth" if cfg.train.gradient_checkpointing else False,
            random_state=cfg.train.seed,
            use_rslora=lora.use_rslora,
            max_seq_length=cfg.model.max_seq_length,
        )
    except ValueError as exc:
        raise UsageError(f"[lora] target_modules: {exc}") from None


def sft_overrides(cfg: Config) -> dict:
    """Unsloth's own (offloaded) gradient checkpointing is set up by get_peft_model; the trainer's
    would replace it with transformers' slower one, so the trainer is told to leave it alone."""
    return {"gradient_checkpointing": False, "gradient_checkpointing_kwargs": None}


def trainer_class() -> type:
    from trl import SFTTrainer  # Unsloth's patched trainer, since unsloth was imported first

    return make_trainer_class(SFTTrainer, plain_loss=False)


def load_adapter(cfg: Config, model_path: str, adapter_path: str, emit: Emit = ignore):
    """Base model through Unsloth + a trained adapter (from either backend)."""
    from peft import PeftModel

    model, _ = load(cfg, model_path, emit)
    try:
        model = PeftModel.from_pretrained(model, adapter_path, is_trainable=False)
    except (OSError, ValueError) as exc:
        raise RuntimeFailure(f"cannot load the adapter {adapter_path}: {exc}") from None
    return model, hf.load_tokenizer(cfg, adapter_path)


def for_inference(model):
    """Unsloth's fast generation mode (its own KV cache and kernels)."""
    from unsloth import FastLanguageModel

    FastLanguageModel.for_inference(model)
    return model


def merge(cfg: Config, model_path: str, adapter_path: str, out_dir, precision: str, emit: Emit = ignore) -> str:
    """`4bit`: Unsloth's `save_pretrained_merged(save_method="merged_4bit_forced")`. `16bit` and
    `32bit`: the hf backend's exact float32 PEFT merge, stored in [export] dtype. Unsloth's
    merged_16bit stores the model's bfloat16, which kept only 34% of a short fine-tune's update in
    our measurement (README, "Ship it"), so both backends merge 16-bit models the same way."""
    if precision != "4bit":
        return hf.merge(cfg, model_path, adapter_path, out_dir, precision, emit)
    quantized = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, load_in_4bit=True, load_in_8bit=False))
    model, tokenizer = load_adapter(quantized, model_path, adapter_path, emit)
    from unsloth.save import patch_saving_functions

    # PeftModel.from_pretrained leaves Unsloth's savers bound to the base model, which refuses to
    # save while it holds LoRA layers; bind them to the PeftModel, as get_peft_model does.
    patch_saving_functions(model)
    status(emit, "Merging into 4-bit weights with Unsloth (save_pretrained_merged)")
    model.save_pretrained_merged(str(out_dir), tokenizer, save_method="merged_4bit_forced")
    return "nf4"
