"""The I/O contract of an exported decoder, written once and read by exporter, runtime and validator.

Inputs:  input_ids [batch, seq] int64, attention_mask [batch, past+seq] int64, position_ids [batch, seq] int64,
         past_key_values.{i}.key / .value  [batch, kv_heads_i, past, head_size_i],
         logits_to_keep [] int64, optional (an initializer that is also an input, default 0)
Outputs: logits [batch, n, vocab] (n = logits_to_keep when > 0, else seq),
         present.{i}.key / .value [batch, kv_heads_i, past+seq, head_size_i]

An uncompressed tensor has kv_heads = the model's KV heads and head_size = head_dim (the usual GQA layout);
a compressed one has kv_heads = 1 and head_size = k, its latent rank (one latent shared by all KV heads);
a quantized one (exporter/codec/quantizer.py) is uint8 with kv_heads = 1 and head_size = its packed bytes per
token; one that onnxruntime's fused attention quantizes itself (exporter/codec/cache_quant.py) is int8 of the
uncompressed shape.
A windowed layer (sliding-window attention, window W: a token sees itself and the W-1 tokens before it) keeps
only what the next token can see: its present holds the last min(past+seq, W-1) tokens, and its past is the
previous step's present, so its seq axis differs from the other layers' and from attention_mask's; the graph
reads the mask's last past+seq columns for it.
A float window (KIVI's residual, quantized caches only: export.json "float_window" W) adds per quantized
latent cache past_key_values.{i}.key_window / .value_window [batch, 1, min(past, W-1), r] float16: the exact
latents of the last W-1 tokens beside their codes, so a query reads its last W tokens (itself included) exact.
Like a windowed layer it stops growing when full; its bytes count at the context a figure is quoted for
(`bytes_per_token_at`).
The names are those optimum and onnxruntime-genai use, so other runtimes can drive the graph.

Two variants of the cache update (export.json "cache_update"):
  concat         present = concat(past, new) along seq; any runtime drives it; left padding works.
  shared-buffer  attention is onnxruntime's fused GroupQueryAttention: the caller may bind one max-length
                 buffer [batch, kv_heads, max_length, head_size] as both past and present, and the new
                 tokens are written into it in place (no per-step copy of the cache). Driven with distinct
                 past/present it concatenates like the plain graph. Sequences must not be left-padded (the op
                 takes the first sum(attention_mask) positions as valid). Not for pre-RoPE keys.
"""
from __future__ import annotations

from dataclasses import dataclass, asdict

INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
POSITION_IDS = "position_ids"
LOGITS = "logits"
# Optional: runtimes that do not know it (optimum, onnxruntime-genai, validation) get every position's logits.
LOGITS_TO_KEEP = "logits_to_keep"

DTYPE_BYTES = {"float32": 4, "float16": 2}                      # the model's float types
CACHE_DTYPE_BYTES = {**DTYPE_BYTES, "uint8": 1, "int8": 1}     # quantized caches: packed codes (uint8), or the
                                                               # int8 codes onnxruntime's fused attention reads
CODE_DTYPES = ("uint8", "int8")
CACHE_UPDATES = ("concat", "shared-buffer")
WINDOW_KINDS = {"key": "key_window", "value": "value_window"}   # a quantized cache's float window, by the codes' kind
WINDOW_DTYPE = "float16"


def past_name(layer: int, kind: str) -> str:
    """Name of the cache input of one layer; kind is 'key', 'value', 'key_window' or 'value_window'."""
    return f"past_key_values.{layer}.{kind}"


def present_name(layer: int, kind: str) -> str:
    return f"present.{layer}.{kind}"


@dataclass(frozen=True)
class CacheShape:
    """The static part of one cache tensor: [batch, kv_heads, seq, head_size]."""
    kv_heads: int
    head_size: int
    dtype: str | None = None        # None: the layout's dtype; 'uint8': packed codes (head_size = bytes/token)
    window: int | None = None       # sliding-window attention: the cache holds at most window - 1 tokens

    @property
    def width(self) -> int:
        """Numbers stored per token."""
        return self.kv_heads * self.head_size

    def tokens_held(self, tokens: int) -> int:
        """Tokens this cache holds after a sequence of `tokens`."""
        return tokens if self.window is None else min(tokens, self.window - 1)


@dataclass(frozen=True)
class CacheLayout:
    """Cache shapes of every layer, keys and values; the single description of what the graph stores.
    key_windows / value_windows: per layer the float window beside quantized codes (CacheShape, window = W), or
    None; empty without one."""
    keys: tuple[CacheShape, ...]
    values: tuple[CacheShape, ...]
    dtype: str = "float32"
    key_windows: tuple = ()
    value_windows: tuple = ()

    @property
    def num_layers(self) -> int:
        return len(self.keys)

    def shape(self, layer: int, kind: str) -> CacheShape:
        return {"key": self.keys, "value": self.values, "key_window": self.key_windows,
                "value_window": self.value_windows}[kind][layer]

    def kinds(self, layer: int) -> tuple[str, ...]:
        """The cache tensors of one layer, in graph order: key, value, then its float windows if any."""
        windows = tuple(WINDOW_KINDS[k] for k, w in (("key", self.key_windows), ("value", self.value_windows))
                        if w and w[layer] is not None)
        return ("key", "value") + windows

    def all_shapes(self) -> list[CacheShape]:
        """Every cache tensor's shape, float windows included."""
        return [self.shape(i, kind) for i in range(self.num_layers) for kind in self.kinds(i)]

    @property
    def float_window(self) -> int:
        """W of the float windows (0: none)."""
        return max([s.window for s in self.key_windows + self.value_windows if s is not None] or [0])

    def dtype_of(self, shape: CacheShape) -> str:
        return shape.dtype or self.dtype

    @property
    def quantized(self) -> bool:
        return any(s.dtype in CODE_DTYPES for s in self.keys + self.values)

    def names(self):
        """(layer, kind, past name, present name) for every cache tensor, in graph order."""
        for i in range(self.num_layers):
            for kind in self.kinds(i):
                yield i, kind, past_name(i, kind), present_name(i, kind)

    def to_json(self) -> dict:
        shape = lambda s: None if s is None else {k: v for k, v in asdict(s).items() if v is not None}
        out = {"dtype": self.dtype, "keys": [shape(s) for s in self.keys], "values": [shape(s) for s in self.values]}
        if self.key_windows or self.value_windows:
            out.update(key_windows=[shape(s) for s in self.key_windows],
                       value_windows=[shape(s) for s in self.value_windows])
        return out

    @classmethod
    def from_json(cls, d: dict) -> "CacheLayout":
        shapes = lambda key: tuple(None if s is None else CacheShape(**s) for s in d.get(key, ()))
        return cls(shapes("keys"), shapes("values"), d.get("dtype", "float32"), shapes("key_windows"),
                   shapes("value_windows"))

    @classmethod
    def uniform(cls, num_layers: int, key: CacheShape, value: CacheShape, dtype: str = "float32"):
        return cls((key,) * num_layers, (value,) * num_layers, dtype)


def kv_bytes_per_token(layout: CacheLayout, extra_bytes_per_token: int = 0) -> int:
    """Bytes the cache grows by per token, all layers, keys and values: the one source of every KV-size figure.
    Windowed layers and float windows stop growing once full, so the figure is the growth beyond every window
    (`kv_bytes` counts what they hold, `bytes_per_token_at` spreads it over a context).

    extra_bytes_per_token is for codecs that store side information per token outside the cache tensors (a
    quantized cache keeps its token scales inside its uint8 tensors, so they are counted by width).
    """
    shapes = [s for s in layout.keys + layout.values if s.window is None]
    return sum(token_bytes(layout, s) for s in shapes) + extra_bytes_per_token


def cached_token_bytes(layout: CacheLayout) -> int:
    """Bytes one token takes in every cache that holds it, windowed layers included: what a code's ratio
    against another is about (equal to kv_bytes_per_token without windows; a float window's second copy of the
    newest tokens is not a token's cost: bytes_per_token_at spreads it over a context)."""
    return sum(token_bytes(layout, s) for s in layout.keys + layout.values)


def token_bytes(layout: CacheLayout, shape: CacheShape) -> int:
    """Bytes one token takes in one cache tensor."""
    return shape.width * CACHE_DTYPE_BYTES[layout.dtype_of(shape)]


def kv_bytes(layout: CacheLayout, tokens: int, batch: int = 1) -> int:
    """Bytes of the whole cache for a batch of sequences of `tokens` tokens (windowed layers: their window's;
    float windows included)."""
    return sum(token_bytes(layout, s) * s.tokens_held(tokens) for s in layout.all_shapes()) * batch


def bytes_per_token_at(layout: CacheLayout, tokens: int) -> float:
    """The whole cache of one sequence of `tokens` tokens over its tokens: what a figure quoted at a context
    length counts, every window's bytes included."""
    return kv_bytes(layout, tokens) / tokens
