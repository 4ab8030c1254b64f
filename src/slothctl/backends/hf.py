"""The `hf` backend: transformers + PEFT, on CPU or any GPU, no Unsloth."""

from __future__ import annotations

import dataclasses
from typing import Any

from slothctl.backends import LoadOptions, lora_arguments
from slothctl.backends.device import compute_dtype, cuda_index, on_cuda
from slothctl.config import LoraConfig, ModelConfig
from slothctl.errors import RuntimeFailure, UsageError
from slothctl.events import Emit, ignore, status


def quantization(model: ModelConfig):
    """bitsandbytes settings for [model] load_in_4bit (NF4, QLoRA) or load_in_8bit; None for neither."""
    if not (model.load_in_4bit or model.load_in_8bit):
        return None
    if not on_cuda():
        flag = "load_in_4bit" if model.load_in_4bit else "load_in_8bit"
        raise UsageError(f"[model] {flag} needs a CUDA GPU (bitsandbytes)", f"set {flag} = false on this machine")
    from transformers import BitsAndBytesConfig

    if model.load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype(model))


def load_tokenizer(model: ModelConfig, path: str):
    """The tokenizer as transformers loads it (both backends: they save identical tokenizers)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, revision=model.revision or None,
                                         trust_remote_code=model.trust_remote_code)


def _stored_dtype(dtype: str, precision: str, state: dict):
    """float32 for `32bit`; for `16bit`, [export] dtype, where `auto` is float16 when every weight fits it
    (finer steps than bfloat16: a LoRA update survives the rounding), else bfloat16."""
    import torch

    if precision == "32bit":
        return torch.float32
    if dtype != "auto":
        return getattr(torch, dtype)
    limit = torch.finfo(torch.float16).max
    fits = all(float(t.abs().max()) < limit for t in state.values() if t.is_floating_point() and t.numel())
    return torch.float16 if fits else torch.bfloat16


class HFBackend:
    name = "hf"

    def load(self, model: ModelConfig, path: str, options: LoadOptions, emit: Emit = ignore) -> tuple[Any, Any]:
        """Base model and tokenizer; float32 on CPU, the configured dtype (and bitsandbytes) on GPU."""
        from transformers import AutoModelForCausalLM

        status(emit, f"Loading {model.name} with transformers")
        quantized = quantization(model)
        try:
            tokenizer = load_tokenizer(model, path)
            loaded = AutoModelForCausalLM.from_pretrained(
                path,
                dtype=compute_dtype(model),
                revision=model.revision or None,
                trust_remote_code=model.trust_remote_code,
                quantization_config=quantized,
                device_map={"": cuda_index()} if on_cuda() else None,  # under torchrun, this rank's GPU
            )
        except OSError as exc:
            raise UsageError(f"cannot load model `{model.name}`: {exc}") from None
        from slothctl.data.templates import configure_hf_tokenizer

        configure_hf_tokenizer(options.chat_template, tokenizer, loaded)  # the pad token `data inspect` reports
        if quantized is not None:
            from peft import prepare_model_for_kbit_training

            loaded = prepare_model_for_kbit_training(loaded, use_gradient_checkpointing=options.gradient_checkpointing)
        return loaded, tokenizer

    def add_lora(self, model: Any, lora: LoraConfig, *, seed: int, gradient_checkpointing: bool,
                 max_seq_length: int) -> Any:
        import torch
        from peft import LoraConfig as PeftLoraConfig, get_peft_model

        torch.manual_seed(seed)  # LoRA's A matrices are initialised randomly
        try:
            model = get_peft_model(model, PeftLoraConfig(**lora_arguments(lora, model), task_type="CAUSAL_LM"))
        except ValueError as exc:
            raise UsageError(f"[lora] target_modules: {exc}",
                             "list module names that exist in the model, e.g. q_proj, v_proj") from None
        if gradient_checkpointing:
            model.enable_input_require_grads()
        return model

    def trainer_overrides(self, strategy: str) -> dict[str, Any]:
        """TRL's dataset preparation is skipped unless it packs: our rows already carry their labels, are
        truncated to max_length and all have a trained token, which is all it would do, row by row in
        Python over the whole dataset (three `map`/`filter` passes). (Unsloth's trainer replaces that
        preparation with its own, which returns such a dataset as it is.) For the same reason a
        padding-free run gets no max_length: TRL refuses one that it would not enforce there."""
        if strategy == "packed":
            return {}
        overrides: dict[str, Any] = {"dataset_kwargs": {"skip_prepare_dataset": True}}
        if strategy == "padding_free":
            overrides["max_length"] = None
        return overrides

    def load_adapter(self, model: ModelConfig, path: str, adapter: str, options: LoadOptions,
                     emit: Emit = ignore) -> tuple[Any, Any]:
        from peft import PeftModel
        from transformers import AutoTokenizer

        base, _ = self.load(model, path, options, emit)
        try:
            tokenizer = AutoTokenizer.from_pretrained(adapter)
            loaded = PeftModel.from_pretrained(base, adapter)
        except (OSError, ValueError) as exc:
            raise RuntimeFailure(f"cannot load the adapter {adapter}: {exc}") from None
        return loaded, tokenizer

    def for_inference(self, model: Any) -> Any:
        """Eval mode (no dropout), gradients off, KV cache on."""
        model.eval()
        model.requires_grad_(False)
        config = getattr(model, "config", None)
        if config is not None and hasattr(config, "use_cache"):
            config.use_cache = True  # training turns it off with gradient checkpointing
        return model

    def merge(self, model: ModelConfig, path: str, adapter: str, out_dir: Any, *, precision: str, dtype: str,
              options: LoadOptions, emit: Emit = ignore) -> str:
        """PEFT's merge in float32 on CPU, saved as safetensors in the chosen dtype; for `4bit`, that
        exact merge quantized afresh to NF4 on the GPU (bitsandbytes).

        The base is loaded unquantized even for a QLoRA adapter: merging into 4-bit weights would round
        the update away. That is also why `4bit` quantizes the merged weights instead of adding the update
        to NF4 weights (PEFT's and Unsloth's `merged_4bit_forced` way): a weight already on an NF4 level
        only moves when its update exceeds half a level, so a short fine-tune's update vanished. Measured
        on the H200 (2026-12-03, SmolLM2-135M after 24 steps): the model that way stayed within 0.26 of
        the quantized base (mean |logit diff|) where the adapter moves the base by 0.75.
        """
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        if precision not in ("16bit", "32bit", "4bit"):
            raise UsageError(f"unknown merge precision {precision}", "use 16bit, 32bit or 4bit")
        nf4 = quantization(dataclasses.replace(model, load_in_4bit=True, load_in_8bit=False)) \
            if precision == "4bit" else None  # refuses (exit 2) without CUDA before anything is loaded
        status(emit, f"Loading {model.name} in float32 to merge")
        try:
            base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, revision=model.revision or None,
                                                        trust_remote_code=model.trust_remote_code)
            peft_model = PeftModel.from_pretrained(base, adapter)
        except (OSError, ValueError) as exc:
            raise RuntimeFailure(f"cannot load {adapter} onto {model.name}: {exc}") from None
        merged = peft_model.merge_and_unload(safe_merge=True)  # safe_merge refuses NaNs instead of writing them
        if nf4 is not None:
            return _quantize_merged(merged, nf4, model, out_dir, emit)
        stored = _stored_dtype(dtype, precision, merged.state_dict())
        name = str(stored).removeprefix("torch.")
        status(emit, f"Merged in float32; saving {name} weights")
        _save_as(merged, stored, out_dir)
        return name


def _save_as(merged, dtype, folder: Any) -> None:
    """The merged model's safetensors in `dtype` (and its config saying so)."""
    merged.to(dtype)
    merged.config.dtype = dtype
    merged.save_pretrained(folder, max_shard_size="5GB")


def _quantize_merged(merged, nf4, model: ModelConfig, out_dir: Any, emit: Emit) -> str:
    """The float32 merge, quantized to NF4 as transformers loads a model in 4-bit: saved in the compute
    dtype to a folder inside `out_dir`, loaded from there with bitsandbytes on the GPU, saved 4-bit."""
    import shutil
    from pathlib import Path

    from transformers import AutoModelForCausalLM

    staging = Path(out_dir) / ".merged-float"
    status(emit, "Merged in float32; quantizing the merged weights to NF4 (bitsandbytes)")
    _save_as(merged, nf4.bnb_4bit_compute_dtype, staging)
    quantized = AutoModelForCausalLM.from_pretrained(staging, quantization_config=nf4,
                                                     device_map={"": f"cuda:{cuda_index()}"},
                                                     trust_remote_code=model.trust_remote_code)
    quantized.save_pretrained(out_dir, max_shard_size="5GB")
    shutil.rmtree(staging)
    return "nf4"
