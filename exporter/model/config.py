"""DecoderConfig: the few numbers the compact decoder needs, read from a HuggingFace config.

Entry point: `from_hf(hf_config)` -> DecoderConfig.
"""
from __future__ import annotations

from dataclasses import dataclass, asdict


@dataclass(frozen=True)
class DecoderConfig:
    family: str             # 'llama' (llama, mistral, qwen2: RoPE, GQA, RMSNorm) or 'gpt2'
    model_type: str         # the HF model_type
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    norm_eps: float
    max_positions: int
    qkv_bias: bool          # qwen2 and gpt2
    tie_embeddings: bool

    @property
    def kv_dim(self) -> int:
        """Numbers per token per layer in the uncompressed key (or value) cache: kv heads x head_dim."""
        return self.num_kv_heads * self.head_dim

    @property
    def has_rope(self) -> bool:
        return self.family == "llama"

    def to_json(self) -> dict:
        return asdict(self)


def from_hf(config) -> DecoderConfig:
    mt = config.model_type
    if mt == "gpt2":
        return DecoderConfig("gpt2", mt, config.n_layer, config.n_embd, config.n_head, config.n_head,
                             config.n_embd // config.n_head, config.vocab_size, config.layer_norm_epsilon,
                             config.n_positions, True, True)
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    bias = bool(getattr(config, "attention_bias", False)) or mt == "qwen2"
    return DecoderConfig("llama", mt, config.num_hidden_layers, config.hidden_size, heads,
                         getattr(config, "num_key_value_heads", None) or heads, head_dim, config.vocab_size,
                         config.rms_norm_eps, config.max_position_embeddings, bias,
                         bool(getattr(config, "tie_word_embeddings", False)))
