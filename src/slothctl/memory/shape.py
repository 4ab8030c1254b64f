"""A model's shape, read from its config.json: the numbers that memory and FLOPs depend on.

Parameter counts come from formulas, not from building the model; tests/test_memory.py checks
them against models built on the `meta` device for each family listed in FAMILIES.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from slothctl.errors import SlothctlError

# Families whose layer layout the formulas below were checked on (meta-device counts, tests).
FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3")
# Families whose config.json may omit tie_word_embeddings because their config class ties by default.
TIED_BY_DEFAULT = ("gemma", "gemma2", "gemma3_text")


class EstimateUnavailable(SlothctlError):
    """The model cannot be estimated from its config (a mixture of experts, missing sizes).
    Callers show the run without an estimate rather than stop."""


@dataclass(frozen=True)
class ModelShape:
    """A dense decoder-only transformer: sizes per layer and the flags that change what is stored."""

    model_type: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied_embeddings: bool
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    norms_per_layer: int = 2  # gemma2 and gemma3 add norms after attention and around the MLP
    qk_norm: bool = False  # qwen3, gemma3: RMSNorm on every query and key head
    fused_projections: bool = False  # phi3: qkv_proj and gate_up_proj instead of q/k/v and gate/up
    eager_attention: bool = False  # gemma2 soft-caps attention scores, so they are materialised

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def known_family(self) -> bool:
        return self.model_type in FAMILIES

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | Any) -> "ModelShape":
        """From a config.json dict or a transformers config object (its text part for multimodal models)."""
        cfg = config if isinstance(config, Mapping) else config.to_dict()
        if isinstance(cfg.get("text_config"), Mapping):
            cfg = {**cfg["text_config"], "model_type": cfg["text_config"].get("model_type", cfg.get("model_type"))}
        model_type = str(cfg.get("model_type", ""))
        experts = max(int(cfg.get(k) or 0) for k in ("num_experts", "num_local_experts", "n_routed_experts"))
        if experts > 1:
            raise EstimateUnavailable(f"{model_type or 'this model'} is a mixture of experts; the memory "
                                      "estimate covers dense models only")
        try:
            hidden = int(cfg["hidden_size"])
            heads = int(cfg["num_attention_heads"])
            shape = cls(
                model_type=model_type,
                hidden=hidden,
                intermediate=int(cfg["intermediate_size"]),
                layers=int(cfg["num_hidden_layers"]),
                heads=heads,
                kv_heads=int(cfg.get("num_key_value_heads") or heads),
                head_dim=int(cfg.get("head_dim") or hidden // heads),
                vocab=int(cfg["vocab_size"]),
                tied_embeddings=bool(cfg.get("tie_word_embeddings", model_type in TIED_BY_DEFAULT)),
                qkv_bias=bool(cfg.get("attention_bias", False)) or model_type == "qwen2",
                o_bias=bool(cfg.get("attention_bias", False)) and model_type != "qwen2",
                mlp_bias=bool(cfg.get("mlp_bias", False)),
                norms_per_layer=4 if model_type in ("gemma2", "gemma3_text", "gemma3") else 2,
                qk_norm=model_type in ("qwen3", "gemma3_text", "gemma3"),
                fused_projections=model_type == "phi3",
                eager_attention=model_type == "gemma2" and bool(cfg.get("attn_logit_softcapping", 50.0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise EstimateUnavailable(f"the model config lacks the sizes the memory estimate needs ({exc})") from None
        return shape

    # ---- parameters --------------------------------------------------------------------------------------------

    def linear_modules(self) -> dict[str, tuple[int, int]]:
        """Each decoder layer's linear layers: name -> (in_features, out_features)."""
        h, i, q, kv = self.hidden, self.intermediate, self.q_dim, self.kv_dim
        if self.fused_projections:
            return {"qkv_proj": (h, q + 2 * kv), "o_proj": (q, h), "gate_up_proj": (h, 2 * i), "down_proj": (i, h)}
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    def layer_linear_parameters(self) -> int:
        return sum(a * b for a, b in self.linear_modules().values())

    def layer_parameters(self) -> int:
        """One decoder layer: linear weights, biases, norms."""
        q, kv = self.q_dim, self.kv_dim
        bias = (q + 2 * kv if self.qkv_bias else 0) + (self.hidden if self.o_bias else 0)
        bias += (2 * self.intermediate + self.hidden) if self.mlp_bias else 0
        norms = self.norms_per_layer * self.hidden + (2 * self.head_dim if self.qk_norm else 0)
        return self.layer_linear_parameters() + bias + norms

    def embedding_parameters(self) -> int:
        """Input embedding, plus the output head when it is not tied to it."""
        return self.vocab * self.hidden * (1 if self.tied_embeddings else 2)

    def head_parameters(self) -> int:
        return self.vocab * self.hidden

    def parameters(self) -> int:
        """All weights, counted once when the head is tied to the embedding (as torch counts them)."""
        return self.layers * self.layer_parameters() + self.embedding_parameters() + self.hidden

    def lora_parameters(self, r: int, targets: tuple[str, ...] | list[str]) -> int:
        """Trainable LoRA weights: r x (in + out) for every targeted linear layer (names unknown to this
        family add nothing, as PEFT would find no such module)."""
        per_layer = sum(r * (a + b) for name, (a, b) in self.linear_modules().items() if name in targets)
        extra = sum(r * (self.vocab + self.hidden) for name in ("lm_head", "embed_tokens") if name in targets)
        return self.layers * per_layer + extra

    def largest_linear(self) -> int:
        return max(a * b for a, b in self.linear_modules().values())


def load_model_config(path: str, revision: str | None = None, trust_remote_code: bool = False) -> dict[str, Any]:
    """config.json of a local model folder (read directly), or of a hub model through transformers."""
    folder = Path(path).expanduser()
    if (folder / "config.json").is_file():
        return json.loads((folder / "config.json").read_text(encoding="utf-8"))
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path, revision=revision or None, trust_remote_code=trust_remote_code).to_dict()
    except (OSError, ValueError) as exc:
        raise EstimateUnavailable(f"cannot read the config of {path}: {exc}") from None
