"""Peak GPU memory and step time of a LoRA run, from the model's shape and the training settings.

Memory follows what each backend keeps alive, read from its sources and checked against the
peaks measured on an H200 (tests/test_memory.py, bench/memory_accuracy.py):

- weights at their precision; NF4 (4-bit) with its double-quantized block constants;
- LoRA weights and their gradients in float32 (PEFT upcasts adapters of 16-bit models), the
  optimizer's state for them;
- activations. Without gradient checkpointing every layer keeps its saved tensors until the
  backward pass. With Unsloth's checkpointing each layer's input goes to CPU memory and comes
  back through one or two GPU buffers (unsloth_zoo/gradient_checkpointing.py); transformers'
  checkpointing keeps every layer's input on the GPU. In the backward pass one layer is
  recomputed at a time;
- the loss: Unsloth's fused cross-entropy computes the logits chunk by chunk, TRL 1.15's fused
  LM head tile by tile (4,096 tokens x 32,768 vocabulary entries); transformers' own loss (the hf
  backend on CPU) holds the whole batch's logits;
- outside torch's count: the CUDA context and the caching allocator's slack.

The peak is the larger of two moments: the loss at the end of the forward pass, and the first
backward layer (gradients and temporaries on top of what the forward pass kept).

Time: FLOPs per token for LoRA on a frozen base (forward 2N, backward input gradients 2N, the
small LoRA weight gradients, a recomputed forward with checkpointing, causal attention) over
the GPU's dense 16-bit throughput times an efficiency factor fitted on measured runs, against
a per-step host floor (kernel launches and offload copies), which small batches hit.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from slothctl.memory.gpus import GIB, Gpu, lookup
from slothctl.memory.shape import ModelShape
from slothctl.memory.tokens import TokenLoad, token_load

SEVEN = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
BACKENDS = ("unsloth", "hf")
WEIGHTS = ("16bit", "4bit", "8bit", "32bit")
INPUT_SOURCE = {"q_proj": "attention", "k_proj": "attention", "v_proj": "attention", "qkv_proj": "attention",
                "gate_proj": "mlp", "up_proj": "mlp", "gate_up_proj": "mlp"}

# ---- constants, and where they come from ------------------------------------------------------------------------

# NF4 with double quantization (what both backends ask bitsandbytes for): 4 bits per weight, one 8-bit
# absmax per block of 64, one float32 per 256 of those.
NF4_BYTES_PER_WEIGHT = 0.5 + 1 / 64 + 4 / (64 * 256)
# Unsloth's fused cross-entropy chunks the tokens (a multiple of 4 chunks) so that one chunk's float32
# logits stay under a target. The kernel profile of the Qwen3-1.7B shape at 8,192 tokens (bench/results/
# profiles) shows 8 chunks: a 1 GiB target with Unsloth 2026.10.7 on an H200.
UNSLOTH_CE_TARGET_BYTES = 1 * GIB
# Bytes per logit of the chunk being computed: its bf16 logits and the fused softmax backward's output.
# Fitted: 5 puts every measured peak within 8%.
UNSLOTH_CE_BYTES_PER_LOGIT = 5
# TRL 1.15's fused LM head (trl/kernels/chunked_logprob.py) projects tiles of this many tokens x vocabulary.
TRL_TILE = (4096, 32768)
# Unsloth offloads checkpointed activations only from this sequence length up (plain checkpointing below).
UNSLOTH_OFFLOAD_MIN_SEQ = 512
# Outside torch's own count: the CUDA context (driver, cuBLAS, cuDNN), and the caching allocator's
# fragmentation (reserved minus allocated), as a share of the allocated peak.
CUDA_CONTEXT_BYTES = int(0.75 * GIB)
ALLOCATOR_SLACK = 0.05

# Time. Efficiency of the dense matmuls grows with the hidden size: E * h / (h + H0), fitted on the
# H200 runs of the Qwen3-1.7B (h 2048) and Llama-3-8B (h 4096) shapes. The hf backend ran Llama-3-8B at
# 0.60x Unsloth's speed on the same machine (bench/results/train_speed-nvidia-h200-2026-11-27.json).
EFFICIENCY_MAX = 0.60
EFFICIENCY_HALF_HIDDEN = 614
BACKEND_SPEED = {"unsloth": 1.0, "hf": 0.60}
# Not measured yet: dequantizing on the fly (bitsandbytes) slows the matmuls.
WEIGHTS_SPEED = {"16bit": 1.0, "32bit": 1.0, "4bit": 0.8, "8bit": 0.5}
# Host time per layer per micro-step (kernel launches, offload copies and their syncs), fitted on the
# step times of small batches: the Qwen3-1.7B shape took ~0.26 s per step at 2 and 4 rows with
# checkpointing, as long as SmolLM2-135M at 8 rows.
HOST_SECONDS_PER_LAYER = {("unsloth", True): 0.0093, ("unsloth", False): 0.0046,
                          ("hf", True): 0.0147, ("hf", False): 0.0073}
# Batches whose shapes change from step to step (rows of different lengths, not packed) pay more per step:
# new attention plans, recompiled kernels. Qwen3-1.7B shape, chat rows, length-grouped batches of 8 and 16:
# ~0.55 s per step either way (bench/results varlen and issue 15), 2.15x the fixed-shape floor.
VARIABLE_SHAPES_HOST_FACTOR = 2.15
HOST_OVERLAP_POWER = 4  # step time = (gpu^p + host^p)^(1/p): the larger one, blended near the crossover
ATTENTION_BACKWARD = 2.5  # attention backward FLOPs / forward FLOPs (flash-style, scores recomputed)


@dataclass(frozen=True)
class TrainSetup:
    """The settings a run's memory and speed depend on, as the backends will apply them.

    `lengths` are the tokens of every training row (None: every row fills seq_len). `autocast` is the
    hf backend's 16-bit autocast over float32 LoRA weights (on CUDA, or a CPU with native bf16).
    """

    backend: str = "unsloth"
    weights: str = "16bit"
    lora_r: int = 16
    lora_targets: tuple[str, ...] = SEVEN
    optimizer: str = "adamw_8bit"
    micro_batch: int = 2
    grad_accum: int = 4
    seq_len: int = 2048
    gradient_checkpointing: bool = True
    batching: str = "padded"
    lengths: tuple[int, ...] | None = None
    on_cuda: bool = True
    autocast: bool = True

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, not {self.backend!r}")
        if self.weights not in WEIGHTS:
            raise ValueError(f"weights must be one of {WEIGHTS}, not {self.weights!r}")
        if self.micro_batch < 1 or self.grad_accum < 1:
            raise ValueError("micro_batch and grad_accum must be at least 1")

    @property
    def rows_per_step(self) -> int:
        """Rows per optimizer step: the effective batch, which micro-batch choices keep."""
        return self.micro_batch * self.grad_accum

    @property
    def compute_bytes(self) -> int:
        return 2 if self.weights in ("16bit", "4bit", "8bit") or self.autocast else 4

    def replace(self, **changes: Any) -> "TrainSetup":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_config(cls, model, lora, train, *, backend: str, optimizer: str, batching: str, on_cuda: bool,
                    lengths: list[int] | tuple[int, ...] | None = None, micro_batch: int | None = None,
                    autocast: bool | None = None) -> "TrainSetup":
        """From the [model], [lora] and [train] sections and the choices the backend resolved (`auto`
        backend, optimizer and batching, as training.batching resolves them)."""
        if model.load_in_4bit:
            weights = "4bit"
        elif model.load_in_8bit:
            weights = "8bit"
        elif not on_cuda or model.dtype == "float32":
            weights = "32bit"
        else:
            weights = "16bit"
        return cls(backend=backend, weights=weights, lora_r=lora.r, lora_targets=tuple(lora.target_modules),
                   optimizer=optimizer, micro_batch=micro_batch or train.batch_size,
                   grad_accum=train.gradient_accumulation_steps, seq_len=model.max_seq_length,
                   gradient_checkpointing=train.gradient_checkpointing, batching=batching,
                   lengths=tuple(int(n) for n in lengths) if lengths is not None and len(lengths) else None, on_cuda=on_cuda,
                   autocast=on_cuda if autocast is None else autocast)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["lengths"] = None if self.lengths is None else {"rows": len(self.lengths), "max": max(self.lengths),
                                                             "mean": sum(self.lengths) / len(self.lengths)}
        return out


@dataclass
class Estimate:
    """Peak memory (bytes per part), time, and the fit against a GPU's budget."""

    setup: TrainSetup
    breakdown: dict[str, int]
    torch_peak_bytes: int  # comparable to torch.cuda.max_memory_allocated
    peak_vram_bytes: int  # + CUDA context and allocator slack: what the GPU must hold
    peak_at: str  # "loss" (end of the forward pass) or "backward"
    tokens_per_step: float  # positions computed per optimizer step, padding included
    real_tokens_per_step: float
    flops_per_token: float  # per computed position
    step_seconds: float
    tokens_per_second: float  # real tokens
    gpu: Gpu | None = None
    budget_bytes: int | None = None
    fits: bool | None = None
    steps: int | None = None
    total_seconds: float | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"peak_vram_bytes": self.peak_vram_bytes, "torch_peak_bytes": self.torch_peak_bytes,
                "breakdown": dict(self.breakdown), "peak_at": self.peak_at, "fits": self.fits,
                "budget_bytes": self.budget_bytes, "gpu": self.gpu.to_dict() if self.gpu else None,
                "tokens_per_step": round(self.tokens_per_step), "real_tokens_per_step": round(self.real_tokens_per_step),
                "flops_per_token": self.flops_per_token, "step_seconds": self.step_seconds,
                "tokens_per_second": self.tokens_per_second, "steps": self.steps, "total_seconds": self.total_seconds,
                "setup": self.setup.to_dict(), "notes": list(self.notes)}


# ---- memory -----------------------------------------------------------------------------------------------------

def weight_bytes(shape: ModelShape, setup: TrainSetup) -> int:
    """The base model's weights. Quantization covers the decoder layers' linear weights; the embedding, the
    head and the norms stay 16-bit with Unsloth, and go to float32 with the hf backend
    (peft.prepare_model_for_kbit_training upcasts them)."""
    total = shape.parameters()
    if setup.weights in ("16bit", "32bit"):
        return total * (2 if setup.weights == "16bit" else 4)
    linear = shape.layers * shape.layer_linear_parameters()
    rest = (total - linear) * (2 if setup.backend == "unsloth" else 4)
    if setup.weights == "4bit":
        return int(linear * NF4_BYTES_PER_WEIGHT) + rest
    rows = shape.layers * sum(out for _, out in shape.linear_modules().values())
    return linear + 4 * rows + rest  # LLM.int8: one byte per weight, a float32 scale per output row


def optimizer_bytes(shape: ModelShape, setup: TrainSetup) -> int:
    """State of the optimizer over the LoRA weights."""
    params = shape.lora_parameters(setup.lora_r, setup.lora_targets)
    name = setup.optimizer
    if "8bit" in name:
        return int(params * (2 + 8 / 256))  # two 8-bit moments, a float32 absmax per block of 256 each
    if name == "sgd":
        return 0  # transformers' SGD has no momentum by default
    if name == "adafactor":  # factored second moment: a row and a column vector per matrix
        r, per_layer = setup.lora_r, 0
        for module, (a, b) in shape.linear_modules().items():
            if module in setup.lora_targets:
                per_layer += (r + a) + (b + r)
        return 4 * shape.layers * per_layer
    return params * 8  # AdamW: two float32 moments


def layer_activation_bytes(shape: ModelShape, setup: TrainSetup, masked: bool) -> int:
    """Bytes one decoder layer keeps per token for its backward pass."""
    h, q, kv, i, b = shape.hidden, shape.q_dim, shape.kv_dim, shape.intermediate, setup.compute_bytes
    if setup.backend == "unsloth":
        # Fast_RMS_Layernorm keeps its input, the fused LoRA QKV/O/MLP kernels their inputs, attention
        # Q, K, V and its output, the MLP its gate and up projections (the product is recomputed).
        elements = 4 * h + 2 * q + 2 * kv + 2 * i + (q + kv if shape.qk_norm else 0)
        elements += (shape.norms_per_layer - 2) * 2 * h
        return elements * b
    # transformers + PEFT: RMSNorm keeps a float32 copy of its input; under autocast every LoRA layer keeps
    # its own 16-bit copy of its input (without autocast the inputs are shared); SDPA keeps Q, K, V (K and V
    # repeated to every head when a padding mask disables its GQA path) and its output; the MLP keeps the
    # gate, its activation and the up projection.
    kv_kept = q if masked else kv
    norms = shape.norms_per_layer * 4 * h + (4 * (q + kv) if shape.qk_norm else 0)
    modules = shape.linear_modules()
    targeted = [name for name in modules if name in setup.lora_targets]
    if setup.autocast:
        lora_inputs = sum(modules[name][0] for name in targeted)
    else:  # shared inputs: one tensor per source (attention's, o_proj's, the MLP's, down_proj's)
        lora_inputs = sum({INPUT_SOURCE.get(name, name): modules[name][0] for name in targeted}.values())
    return norms + b * (lora_inputs + 2 * q + 2 * kv_kept + 3 * i)


def _unsloth_loss_bytes(shape: ModelShape, tokens: int) -> int:
    full = tokens * shape.vocab * 4
    exact = full / UNSLOTH_CE_TARGET_BYTES
    chunks = 1 if exact <= 1 else math.ceil(exact / 4) * 4
    return math.ceil(tokens / chunks) * shape.vocab * UNSLOTH_CE_BYTES_PER_LOGIT


def loss_bytes(shape: ModelShape, setup: TrainSetup, tokens: int) -> int:
    """The loss's transient memory for `tokens` positions, beyond the hidden states it starts from."""
    b = setup.compute_bytes
    if setup.backend == "unsloth":
        return _unsloth_loss_bytes(shape, tokens) + tokens * shape.hidden * b  # + the hidden-state gradient
    if setup.on_cuda:  # TRL's fused LM head: a tile, the selected hidden states, a float32 gradient for them
        tile = min(tokens, TRL_TILE[0]) * min(shape.vocab, TRL_TILE[1]) * b
        return tile + tokens * shape.hidden * (2 * b + 4)
    return tokens * shape.vocab * (b + 8)  # transformers' loss: the logits, a float32 copy, log-softmax


def _eager_scores_bytes(shape: ModelShape, setup: TrainSetup, load: TokenLoad) -> int:
    """Attention scores of one layer where they are materialised (gemma2's soft-capping): the capped scores,
    float32 softmax and its 16-bit copy."""
    if not shape.eager_attention:
        return 0
    return load.peak_rows * shape.heads * load.peak_row_length**2 * (2 * setup.compute_bytes + 4)


def memory_breakdown(shape: ModelShape, setup: TrainSetup) -> tuple[dict[str, int], str]:
    """Bytes per part at the peak, and which moment the peak is (`loss` or `backward`)."""
    load = token_load(setup.micro_batch, setup.seq_len, setup.batching, setup.lengths)
    tokens, b, h = load.peak_tokens, setup.compute_bytes, shape.hidden
    masked = setup.batching in ("padded", "length_grouped") and load.padding_fraction > 0
    per_layer = layer_activation_bytes(shape, setup, masked and setup.backend == "hf") * tokens
    per_layer += _eager_scores_bytes(shape, setup, load)
    mask = load.peak_rows * load.peak_row_length**2 if masked else 0  # rows x length x length
    per_layer += mask * b  # SDPA keeps the padding mask, as an additive 16-bit bias, for its backward
    hidden = tokens * h * b
    lora_params = shape.lora_parameters(setup.lora_r, setup.lora_targets)

    parts = {"weights": weight_bytes(shape, setup), "lora_weights": lora_params * 4,
             "optimizer_states": optimizer_bytes(shape, setup)}
    if setup.weights in ("4bit", "8bit"):  # dequantized copies of a weight while it is multiplied
        parts["dequantization"] = (2 if setup.backend == "unsloth" else 1) * shape.largest_linear() * b
    gradients = lora_params * 4

    checkpointing = setup.gradient_checkpointing
    offloaded = checkpointing and setup.backend == "unsloth" and setup.seq_len >= UNSLOTH_OFFLOAD_MIN_SEQ
    if not checkpointing:
        kept = shape.layers * per_layer
    elif offloaded:
        kept = 3 * hidden  # two GPU buffers the layer inputs pass through, the last layer's input
    else:
        kept = shape.layers * hidden
    if masked and setup.backend == "hf":
        kept += mask  # transformers builds one 4-D boolean mask for all layers
    mlp_width = shape.intermediate if setup.backend == "unsloth" else 3 * shape.intermediate
    backward_temporaries = tokens * b * (mlp_width + 2 * h)

    at_loss = kept + 2 * hidden + loss_bytes(shape, setup, tokens)  # + the final norm's input and output
    at_backward = kept + hidden + (per_layer if checkpointing else 0) + backward_temporaries
    grads_at_loss = gradients if setup.grad_accum > 1 else 0  # they persist between accumulated micro-batches
    if at_loss + grads_at_loss >= at_backward + gradients:
        parts.update(activations=kept + 2 * hidden, loss=loss_bytes(shape, setup, tokens), lora_gradients=grads_at_loss)
        return parts, "loss"
    parts.update(activations=at_backward, loss=0, lora_gradients=gradients)
    return parts, "backward"


# ---- time -------------------------------------------------------------------------------------------------------

def flops_per_micro_batch(shape: ModelShape, setup: TrainSetup, load: TokenLoad) -> float:
    """FLOPs of one micro-batch's forward and backward pass (mean batch)."""
    layers_linear = shape.layers * shape.layer_linear_parameters()
    head = shape.head_parameters()
    lora = shape.lora_parameters(setup.lora_r, setup.lora_targets)
    per_token = 4 * layers_linear + 6 * lora + (2 * layers_linear if setup.gradient_checkpointing else 0)
    # logits and their input gradient; TRL's fused head recomputes the logits in the backward pass
    per_token += (6 if setup.backend == "hf" and setup.on_cuda else 4) * head
    passes = 1 + ATTENTION_BACKWARD + (1 if setup.gradient_checkpointing else 0)
    attention = 4 * shape.layers * shape.q_dim * load.mean_attention_pairs * passes
    return load.mean_tokens * per_token + attention


def efficiency(shape: ModelShape, setup: TrainSetup) -> float:
    """Share of the GPU's dense 16-bit peak the matmuls reach, fitted on measured runs."""
    width = EFFICIENCY_MAX * shape.hidden / (shape.hidden + EFFICIENCY_HALF_HIDDEN)
    return width * BACKEND_SPEED[setup.backend] * WEIGHTS_SPEED[setup.weights]


def micro_step_seconds(shape: ModelShape, setup: TrainSetup, gpu: Gpu, load: TokenLoad) -> float:
    gpu_seconds = flops_per_micro_batch(shape, setup, load) / (gpu.tflops * 1e12 * efficiency(shape, setup))
    host = shape.layers * HOST_SECONDS_PER_LAYER[(setup.backend, setup.gradient_checkpointing)]
    if setup.lengths and setup.batching != "packed" and len(set(setup.lengths)) > 1:
        host *= VARIABLE_SHAPES_HOST_FACTOR
    p = HOST_OVERLAP_POWER
    return (gpu_seconds**p + host**p) ** (1 / p)


# ---- the estimate -----------------------------------------------------------------------------------------------

def estimate(shape: ModelShape, setup: TrainSetup, gpu: Gpu | None = None, *, steps: int | None = None,
             max_vram_fraction: float = 0.85) -> Estimate:
    """Memory and time of `setup` on `gpu` (None: an H200-class GPU for time, no fit decision)."""
    parts, peak_at = memory_breakdown(shape, setup)
    torch_peak = sum(parts.values())
    on_gpu = gpu is None or not gpu.is_cpu
    if on_gpu:
        parts["allocator"] = int(torch_peak * ALLOCATOR_SLACK)
        parts["cuda_context"] = CUDA_CONTEXT_BYTES
    load = token_load(setup.micro_batch, setup.seq_len, setup.batching, setup.lengths)
    timing_gpu = gpu or lookup("H200")
    micro = micro_step_seconds(shape, setup, timing_gpu, load)
    step_seconds = micro * setup.grad_accum
    real_per_step = load.mean_real_tokens * setup.grad_accum
    budget = int(gpu.memory_bytes * max_vram_fraction) if gpu is not None and not gpu.is_cpu else None
    peak = sum(parts.values())
    notes = []
    if not shape.known_family:
        notes.append(f"model type {shape.model_type!r} is estimated as a Llama-like layer")
    if setup.weights in ("4bit", "8bit"):
        notes.append(f"{setup.weights} speed is not calibrated yet")
    if setup.backend == "hf" and setup.weights in ("4bit", "8bit"):
        notes.append("hf backend with quantized weights: activations estimated as for 16-bit weights")
    if shape.eager_attention:
        notes.append("attention scores are materialised (soft-capping): rough")
    return Estimate(
        setup=setup, breakdown=parts, torch_peak_bytes=torch_peak, peak_vram_bytes=peak, peak_at=peak_at,
        tokens_per_step=load.mean_tokens * setup.grad_accum, real_tokens_per_step=real_per_step,
        flops_per_token=flops_per_micro_batch(shape, setup, load) / load.mean_tokens,
        step_seconds=step_seconds, tokens_per_second=real_per_step / step_seconds, gpu=gpu,
        budget_bytes=budget, fits=None if budget is None else peak <= budget, steps=steps,
        total_seconds=None if steps is None else steps * step_seconds, notes=notes)
