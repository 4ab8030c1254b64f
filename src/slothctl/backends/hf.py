"""The `hf` backend: transformers + PEFT + TRL, on CPU or any GPU, no Unsloth."""

from __future__ import annotations

from slothctl.backends.common import compute_dtype, lora_targets, make_trainer_class, on_cuda
from slothctl.config import Config
from slothctl.errors import RuntimeFailure, UsageError
from slothctl.events import Emit, ignore, status

NAME = "hf"


def _quantization(cfg: Config):
    if not (cfg.model.load_in_4bit or cfg.model.load_in_8bit):
        return None
    if not on_cuda():
        flag = "load_in_4bit" if cfg.model.load_in_4bit else "load_in_8bit"
        raise UsageError(f"[model] {flag} needs a CUDA GPU (bitsandbytes)", f"set {flag} = false on this machine")
    from transformers import BitsAndBytesConfig

    if cfg.model.load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype(cfg))


def load_tokenizer(cfg: Config, model_path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path, revision=cfg.model.revision or None,
                                         trust_remote_code=cfg.model.trust_remote_code)


def load(cfg: Config, model_path: str, emit: Emit = ignore):
    """Base model and tokenizer; float32 on CPU, the configured dtype (and bitsandbytes) on GPU."""
    from transformers import AutoModelForCausalLM

    status(emit, f"Loading {cfg.model.name} with transformers")
    quantization = _quantization(cfg)
    try:
        tokenizer = load_tokenizer(cfg, model_path)
        model = AutoModelForCausalLM.from_pretrained(
            model_path,
            dtype=compute_dtype(cfg),
            revision=cfg.model.revision or None,
            trust_remote_code=cfg.model.trust_remote_code,
            quantization_config=quantization,
            device_map={"": 0} if on_cuda() else None,
        )
    except OSError as exc:
        raise UsageError(f"cannot load model `{cfg.model.name}`: {exc}") from None
    from slothctl.data.templates import configure_hf_tokenizer

    configure_hf_tokenizer(cfg, tokenizer, model)  # a pad token distinct from eos, as `data inspect` reports
    if quantization is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.train.gradient_checkpointing)
    return model, tokenizer


def lora_config(cfg: Config, model=None):
    from peft import LoraConfig

    lora = cfg.lora
    targets = lora_targets(model, list(lora.target_modules)) if model is not None else list(lora.target_modules)
    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, bias=lora.bias,
                      target_modules=targets, use_rslora=lora.use_rslora, task_type="CAUSAL_LM")


def add_lora(model, cfg: Config):
    import torch
    from peft import get_peft_model

    torch.manual_seed(cfg.train.seed)  # LoRA's A matrices are initialised randomly
    try:
        model = get_peft_model(model, lora_config(cfg, model))
    except ValueError as exc:
        raise UsageError(f"[lora] target_modules: {exc}",
                         "list module names that exist in the model, e.g. q_proj, v_proj") from None
    if cfg.train.gradient_checkpointing:
        model.enable_input_require_grads()
    return model


def sft_overrides(cfg: Config) -> dict:
    """Nothing to change in the shared TRL arguments."""
    return {}


def trainer_class() -> type:
    from trl import SFTTrainer

    return make_trainer_class(SFTTrainer, plain_loss=not on_cuda())


def load_adapter(cfg: Config, model_path: str, adapter_path: str, emit: Emit = ignore):
    """Base model + a trained adapter, for chat and merge."""
    from peft import PeftModel

    model, _ = load(cfg, model_path, emit)
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(adapter_path)
        model = PeftModel.from_pretrained(model, adapter_path)
    except (OSError, ValueError) as exc:
        raise RuntimeFailure(f"cannot load the adapter {adapter_path}: {exc}") from None
    return model, tokenizer


def for_inference(model):
    """Ready a loaded model for generation: eval mode (no dropout), gradients off, KV cache on."""
    model.eval()
    model.requires_grad_(False)
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "use_cache"):
        config.use_cache = True  # training turns it off with gradient checkpointing
    return model


def _stored_dtype(cfg: Config, precision: str, state: dict):
    """float32 for `32bit`; for `16bit`, [export] dtype, where `auto` is float16 when every weight fits it
    (finer steps than bfloat16: a LoRA update survives the rounding), else bfloat16."""
    import torch

    if precision == "32bit":
        return torch.float32
    if cfg.export.dtype != "auto":
        return getattr(torch, cfg.export.dtype)
    limit = torch.finfo(torch.float16).max
    fits = all(float(t.abs().max()) < limit for t in state.values() if t.is_floating_point() and t.numel())
    return torch.float16 if fits else torch.bfloat16


def merge(cfg: Config, model_path: str, adapter_path: str, out_dir, precision: str, emit: Emit = ignore) -> str:
    """PEFT's merge in float32 on CPU, saved as safetensors in the chosen dtype; returns that dtype's name.

    The base is loaded unquantized even for a QLoRA adapter: merging into 4-bit weights would round
    the update away. Writes weights and config; the caller adds tokenizer and generation config.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    if precision not in ("16bit", "32bit"):
        raise UsageError(f"--precision {precision} needs the unsloth backend on a CUDA GPU",
                         "use --precision 16bit (or 32bit) here")
    status(emit, f"Loading {cfg.model.name} in float32 to merge")
    try:
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32, revision=cfg.model.revision or None,
                                                     trust_remote_code=cfg.model.trust_remote_code)
        model = PeftModel.from_pretrained(model, adapter_path)
    except (OSError, ValueError) as exc:
        raise RuntimeFailure(f"cannot load {adapter_path} onto {cfg.model.name}: {exc}") from None
    merged = model.merge_and_unload(safe_merge=True)  # safe_merge refuses NaNs instead of writing them
    dtype = _stored_dtype(cfg, precision, merged.state_dict())
    name = str(dtype).removeprefix("torch.")
    status(emit, f"Merged in float32; saving {name} weights")
    merged = merged.to(dtype)
    merged.config.dtype = dtype
    merged.save_pretrained(out_dir, max_shard_size="5GB")
    return name
