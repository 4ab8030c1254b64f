"""The `unsloth` backend: Unsloth's FastLanguageModel on CUDA.

Importing this module imports unsloth, which must happen before transformers, trl and peft are
imported in the process: Unsloth patches their classes (TRL's SFTTrainer included, which is how the
shared trainer in training/trainer.py becomes Unsloth's). `backends.get("unsloth")` is therefore
called before anything else heavy in `training.run` and `chat`. Unsloth refuses to import without
a CUDA GPU; `backends.select` checks that first and gives a clear message.

Only loading, LoRA, merging and inference differ from the hf backend: data, trainer arguments,
checkpoints and artifacts are shared, so a GPU adapter is used on CPU as is.
"""

from __future__ import annotations

import os

os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")  # no network calls from the training process

import unsloth  # noqa: E402,F401  (must precede transformers, trl, peft)

from typing import Any  # noqa: E402

from slothctl.backends import LoadOptions, lora_arguments  # noqa: E402
from slothctl.backends.device import rank_device_map  # noqa: E402
from slothctl.backends.hf import HFBackend, load_tokenizer  # noqa: E402
from slothctl.config import LoraConfig, ModelConfig  # noqa: E402
from slothctl.errors import RuntimeFailure, UsageError  # noqa: E402
from slothctl.events import Emit, ignore, status  # noqa: E402


def _dtype(model: ModelConfig):
    import torch

    return None if model.dtype in ("auto", "float32") else getattr(torch, model.dtype)


def _gradient_checkpointing(enabled: bool) -> str | bool:
    return "unsloth" if enabled else False  # Unsloth's offloaded variant


class UnslothBackend:
    name = "unsloth"

    def load(self, model: ModelConfig, path: str, options: LoadOptions, emit: Emit = ignore) -> tuple[Any, Any]:
        """FastLanguageModel.from_pretrained with the [model] settings; the tokenizer is loaded with
        transformers, as the hf backend does, so both backends save identical tokenizers."""
        from unsloth import FastLanguageModel

        status(emit, f"Loading {model.name} with Unsloth")
        placement = rank_device_map()  # several ranks: each its own GPU (Unsloth does so only for 4/8-bit)
        try:
            loaded, _ = FastLanguageModel.from_pretrained(
                model_name=path,
                max_seq_length=model.max_seq_length,
                dtype=_dtype(model),
                load_in_4bit=model.load_in_4bit,
                load_in_8bit=model.load_in_8bit,
                trust_remote_code=model.trust_remote_code,
                revision=model.revision or None,
                use_gradient_checkpointing=_gradient_checkpointing(options.gradient_checkpointing),
                random_state=options.seed,
                **({"device_map": placement} if placement else {}),
            )
        except OSError as exc:
            raise UsageError(f"cannot load model `{model.name}`: {exc}") from None
        from slothctl.data.templates import configure_hf_tokenizer

        tokenizer = load_tokenizer(model, path)
        configure_hf_tokenizer(options.chat_template, tokenizer, loaded)  # the same pad token as the hf backend
        return loaded, tokenizer

    def add_lora(self, model: Any, lora: LoraConfig, *, seed: int, gradient_checkpointing: bool,
                 max_seq_length: int) -> Any:
        from unsloth import FastLanguageModel

        try:
            return FastLanguageModel.get_peft_model(
                model, **lora_arguments(lora, model),
                use_gradient_checkpointing=_gradient_checkpointing(gradient_checkpointing),
                random_state=seed, max_seq_length=max_seq_length)
        except ValueError as exc:
            raise UsageError(f"[lora] target_modules: {exc}") from None

    def trainer_overrides(self, strategy: str) -> dict[str, Any]:
        """Unsloth's own (offloaded) gradient checkpointing is set up by get_peft_model; the trainer's
        would replace it with transformers' slower one, so the trainer is told to leave it alone."""
        return {"gradient_checkpointing": False, "gradient_checkpointing_kwargs": None}

    def load_adapter(self, model: ModelConfig, path: str, adapter: str, options: LoadOptions,
                     emit: Emit = ignore) -> tuple[Any, Any]:
        """Base model through Unsloth + a trained adapter (from either backend)."""
        from peft import PeftModel

        base, _ = self.load(model, path, options, emit)
        try:
            loaded = PeftModel.from_pretrained(base, adapter, is_trainable=False)
        except (OSError, ValueError) as exc:
            raise RuntimeFailure(f"cannot load the adapter {adapter}: {exc}") from None
        return loaded, load_tokenizer(model, adapter)

    def for_inference(self, model: Any) -> Any:
        """Unsloth's fast generation mode (its own KV cache and kernels)."""
        from unsloth import FastLanguageModel

        FastLanguageModel.for_inference(model)
        return model

    def merge(self, model: ModelConfig, path: str, adapter: str, out_dir: Any, *, precision: str, dtype: str,
              options: LoadOptions, emit: Emit = ignore) -> str:
        """The hf backend's exact float32 PEFT merge, stored in [export] dtype or quantized afresh to NF4.
        Unsloth's merged_16bit stores the model's bfloat16, which kept only 34% of a short fine-tune's
        update in our measurement (README, "Ship it"), and its merged_4bit_forced adds the update to NF4
        weights, which kept about a third of its effect on the logits (HFBackend.merge): both backends
        merge the same way."""
        return HFBackend().merge(model, path, adapter, out_dir, precision=precision, dtype=dtype,
                                 options=options, emit=emit)
