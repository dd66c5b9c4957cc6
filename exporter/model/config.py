"""DecoderConfig: the few numbers the compact decoder needs, read from a HuggingFace config.

Two families of blocks: 'llama' (RMSNorm, SwiGLU, RoPE, GQA) and 'gpt2' (LayerNorm, GELU, learned positions).
The llama family's members differ by small quirks, each a field here that a layer reads:

    model_type   quirks
    llama        llama3 RoPE scaling, tied embeddings (Llama 3.2)
    mistral      -
    qwen2        q/k/v biases
    qwen3        q_norm, k_norm: RMSNorm over each head's d numbers of q and k, before RoPE
    phi3         q/k/v and gate/up stored fused (split on load), LongRoPE (short/long factors)
    smollm3      NoPE layers: every fourth layer has no RoPE
    gemma3_text  GeGLU, embeddings x sqrt(D), (1 + w) RMSNorm, norms after attention and MLP too, q/k norms,
                 scores scaled by query_pre_attn_scalar^-1/2, sliding-window layers with their own RoPE base
Any of them may have sliding-window layers (Mistral's sliding_window, Qwen's use_sliding_window with
max_window_layers, layer_types): `windows` holds each layer's window, 0 for a global layer.

Entry point: `from_hf(hf_config)` -> DecoderConfig.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class DecoderConfig:
    family: str             # 'llama' (llama, mistral, qwen2, qwen3, phi3, smollm3) or 'gpt2'
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
    qk_norm: bool = False                               # qwen3
    nope_layers: tuple[int, ...] = field(default=())    # smollm3: layers without RoPE
    windows: tuple[int, ...] = field(default=())        # per layer, 0 = global; () = no windowed layer
    sandwich_norms: bool = False                        # gemma3: a norm after attention and after the MLP
    embed_scale: float | None = None                    # gemma3: embeddings x sqrt(hidden_size)
    score_scale: float | None = None                    # gemma3: query_pre_attn_scalar^-1/2; None: head_dim^-1/2
    mlp_activation: str = "silu"                        # gemma3: 'gelu_tanh' (GeGLU)

    @property
    def kv_dim(self) -> int:
        """Numbers per token per layer in the uncompressed key (or value) cache: kv heads x head_dim."""
        return self.num_kv_heads * self.head_dim

    @property
    def has_rope(self) -> bool:
        return self.family == "llama"

    def window(self, layer: int) -> int | None:
        """The layer's attention window (it sees itself and window - 1 tokens before), or None: global."""
        return (self.windows[layer] or None) if self.windows else None

    def rope_on(self, layer: int) -> bool:
        """Whether this layer rotates its queries and keys (a NoPE layer scores them as they are)."""
        return self.has_rope and layer not in self.nope_layers

    def to_json(self) -> dict:
        """The fields, less the quirks a model does not have: a model without any hashes as it did before the
        quirks existed (model_fingerprint hashes this), so earlier projector files and caches still match."""
        js = asdict(self)
        js["nope_layers"], js["windows"] = list(self.nope_layers), list(self.windows)
        for name in QUIRKS:
            if js[name] == QUIRKS[name]:
                del js[name]
        return js


QUIRKS = {"qk_norm": False, "nope_layers": [], "windows": [], "sandwich_norms": False, "embed_scale": None,
          "score_scale": None, "mlp_activation": "silu"}      # field -> the value of a model without the quirk


def sliding_window(config) -> int | None:
    """The attention window a config turns on, or None: qwen2/qwen3/smollm3 only with use_sliding_window, and a
    window that covers every position (Phi-4-mini's 262,144) is no window."""
    window = getattr(config, "sliding_window", None)
    if config.model_type in ("qwen2", "qwen3", "smollm3") and not getattr(config, "use_sliding_window", False):
        return None
    if window is None or window >= config.max_position_embeddings:
        return None
    return int(window)


def layer_windows(config) -> tuple[int, ...]:
    """Each layer's window (0: global) from sliding_window and layer_types (every layer when it has none)."""
    window, n = sliding_window(config), config.num_hidden_layers
    if window is None:
        return ()
    types = getattr(config, "layer_types", None) or ["sliding_attention"] * n
    return tuple(window if t == "sliding_attention" else 0 for t in types[:n])


def _llama_family(config, **quirks) -> DecoderConfig:
    mt = config.model_type
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    bias = bool(getattr(config, "attention_bias", False)) or mt == "qwen2"
    return DecoderConfig("llama", mt, config.num_hidden_layers, config.hidden_size, heads,
                         getattr(config, "num_key_value_heads", None) or heads, head_dim, config.vocab_size,
                         config.rms_norm_eps, config.max_position_embeddings, bias,
                         bool(getattr(config, "tie_word_embeddings", False)), windows=layer_windows(config),
                         **quirks)


def from_hf(config) -> DecoderConfig:
    mt = config.model_type
    if mt == "gpt2":
        return DecoderConfig("gpt2", mt, config.n_layer, config.n_embd, config.n_head, config.n_head,
                             config.n_embd // config.n_head, config.vocab_size, config.layer_norm_epsilon,
                             config.n_positions, True, True)
    if mt == "qwen3":
        return _llama_family(config, qk_norm=True)
    if mt == "gemma3_text":
        return _llama_family(config, qk_norm=True, sandwich_norms=True, embed_scale=config.hidden_size ** 0.5,
                             score_scale=config.query_pre_attn_scalar ** -0.5, mlp_activation="gelu_tanh")
    if mt == "smollm3":
        return _llama_family(config, nope_layers=tuple(i for i, rope in enumerate(config.no_rope_layers)
                                                       if not rope and i < config.num_hidden_layers))
    return _llama_family(config)
