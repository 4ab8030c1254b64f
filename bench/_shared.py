"""What the training benchmark's scripts share: model shapes, synthetic data, step timing, FLOPs.

Kept free of slothctl imports, so that the hand-written reference scripts (raw_unsloth.py,
raw_hf.py) stay what a user would write.
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

# Published shapes (vocab sizes kept, so the output head costs what it costs in the real models).
SHAPES = {
    "qwen3-1.7b": dict(model_type="qwen3", hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                       num_attention_heads=16, num_key_value_heads=8, head_dim=128, vocab_size=151936,
                       tie_word_embeddings=True, rope_theta=1_000_000.0, max_position_embeddings=40960,
                       rms_norm_eps=1e-6),
    "llama-3-8b": dict(model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=128256,
                       tie_word_embeddings=False, rope_theta=500_000.0, max_position_embeddings=8192,
                       rms_norm_eps=1e-5),
}
WORDS = ("sloth tree leaf branch slow green forest river stone cloud rain sun moon star wind bird "
         "nest quiet morning evening light shadow path hill valley water fruit seed root bark moss").split()


# Objects with on_step_begin(step) / on_step_end(step) that hand-written loops (raw_loop.py) call
# around each optimizer step, as the Trainer calls its callbacks: bench/profile_steps.py adds one.
STEP_HOOKS: list = []


class StepTimer:
    """A TrainerCallback-compatible timer: wall time and real tokens at the end of every step."""

    def __init__(self):
        self.marks: list[tuple[int, float]] = []

    def on_step_end(self, args, state, control, **kwargs):
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.marks.append((state.global_step, time.perf_counter()))

    def __getattr__(self, name):  # every other callback event: nothing to do
        if name.startswith("on_"):
            return lambda *a, **k: None
        raise AttributeError(name)


def step_profile(seconds: list[float]) -> dict:
    """How step times evolve: a slow first half that speeds up points at compilation per new shape."""
    def median(xs: list[float]) -> float | None:
        return sorted(xs)[len(xs) // 2] if xs else None

    half = len(seconds) // 2
    return {"median_step_s": median(seconds), "first_half_median_s": median(seconds[:half]),
            "second_half_median_s": median(seconds[half:]), "max_step_s": max(seconds) if seconds else None}


def steady_rate(marks: list[tuple[int, float]], tokens_per_step: list[int], warmup: int) -> float:
    """Tokens per second over the steps after `warmup` (compilation and allocator warm-up excluded)."""
    start = marks[warmup - 1][1]
    end = marks[-1][1]
    return sum(tokens_per_step[warmup:len(marks)]) / (end - start)


def write_text_rows(path: Path, rows: int, words_per_row: int, seed: int = 0) -> None:
    """Rows of plain text long enough to be truncated to the sequence length (fixed-length batches)."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        for _ in range(rows):
            handle.write(json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(words_per_row))}) + "\n")


def write_chat_rows(path: Path, rows: int, seed: int = 0, median_words: int = 190) -> list[int]:
    """Chat rows whose lengths follow a log-normal law like real chat corpora (median ~270 tokens,
    50-2,000 tokens). Returns the word counts."""
    rng = random.Random(seed)
    counts = []
    with open(path, "w") as handle:
        for _ in range(rows):
            words = int(min(1450, max(36, rng.lognormvariate(math.log(median_words), 0.8))))
            prompt_words = max(8, words // 4)
            user = " ".join(rng.choice(WORDS) for _ in range(prompt_words)) + "?"
            reply = " ".join(rng.choice(WORDS) for _ in range(words - prompt_words)) + "."
            handle.write(json.dumps({"messages": [{"role": "user", "content": user},
                                                  {"role": "assistant", "content": reply}]}) + "\n")
            counts.append(words)
    return counts


def linear_params(cfg: dict) -> tuple[int, int]:
    """(weights of all linear layers including the head, weights of the head)."""
    h, i, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    q = cfg["num_attention_heads"] * cfg["head_dim"]
    kv = cfg["num_key_value_heads"] * cfg["head_dim"]
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * i
    head = h * cfg["vocab_size"]
    return layers * per_layer + head, head


def flops_per_token(cfg: dict, seq_len: float, checkpointing: bool = True) -> float:
    """Model FLOPs per trained token for LoRA with a frozen base (LoRA's own matmuls ignored):

        linear layers: 2N forward + 2N backward (input gradients only, the base is frozen)
                       + 2(N - head) recomputed forward with gradient checkpointing
        attention:     4 * layers * heads * head_dim * (L + 1) / 2 per token forward (QK^T and AV over
                       the causal half), x3 for backward, x4 with checkpointing.
    """
    n, head = linear_params(cfg)
    linear = 4 * n + (2 * (n - head) if checkpointing else 0)
    attn = 4 * cfg["num_hidden_layers"] * cfg["num_attention_heads"] * cfg["head_dim"] * (seq_len + 1) / 2
    return linear + attn * (4 if checkpointing else 3)


def peak_tflops(device_name: str) -> float | None:
    """Dense bf16 tensor-core peak from the vendor datasheets."""
    name = device_name.upper()
    for key, value in (("H100 PCIE", 756.0), ("H100", 989.0), ("H200", 989.0), ("A100", 312.0)):
        if key in name:
            return value
    return None
