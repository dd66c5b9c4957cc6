"""onnxruntime's fused GroupQueryAttention (com.microsoft), for exports whose cache is a shared buffer.

The op takes queries (B, T, H*s), new keys/values (B, T, G*s), the past cache (B, G, S, s), seqlens_k (B,) int32
(tokens per sequence after this step, minus one) and total_sequence_length () int32, and applies the causal
mask itself. When the caller binds one buffer as both past and present, it writes the new keys/values into it
in place at positions seqlens_k - T + 1 .. seqlens_k, so a step costs no copy of the cache; when past and
present are different tensors it concatenates, like the plain graph. It knows no left padding: the valid
tokens of a sequence are its first seqlens_k + 1.

k-space attention fits it as it is: one KV head (G = 1) of size r, H query heads of size r (queries already
projected into k-space), values the latents whose up-projection sits in o_proj.

Uncompressed layers hand it the un-rotated queries and keys with cos/sin tables (max_positions, d/2): the op
rotates them itself (do_rotary, HF's half-split convention) at positions seqlens_k - T + 1 + i, which is what
the graph's position_ids hold when there is no padding. That saves ~10 small nodes per layer and step.

`group_query_attention` is that op for the tracer: eager PyTorch computes the same result on a concatenated
cache (what the reference decoder does), and the exported node is the fused op.

Entry point: `group_query_attention(...)`, `sequence_lengths(attention_mask)`.
"""
from __future__ import annotations

import torch

from graphs.passes import SCALES_LAST

from ..codec.cache_quant import dequantize, quantize
from .rope import apply_rope


def _rotate(x, cos_cache, sin_cache, start: int):
    """HF rotate-half RoPE of x (B, n, T, s) at positions start..start+T-1 from (P, s/2) tables."""
    T = x.shape[2]
    return apply_rope(x, cos_cache[start:start + T].repeat(1, 2), sin_cache[start:start + T].repeat(1, 2))


def _causal_attention(q, k, v, past_k, past_v, heads: int, kv_heads: int, scale: float, cos_cache=None,
                      sin_cache=None, k_scale=None, v_scale=None, window: int = 0):
    """Eager semantics on the concatenating protocol, no padding. q (B, T, H*s), k/v (B, T, G*s), past (B, G, P, s);
    with cos/sin tables, q and k are rotated first at positions P..P+T-1; with scales (G*s,) the cache holds int8
    codes of k and v (codec/cache_quant.py), written first and read back dequantized, the new tokens' too; with a
    window, a query sees itself and the window - 1 keys before it."""
    B, T, _ = q.shape
    s = past_k.shape[-1]
    q = q.view(B, T, heads, s).transpose(1, 2)                                  # (B, H, T, s)
    k = k.view(B, T, kv_heads, s).transpose(1, 2)                               # (B, G, T, s)
    v = v.view(B, T, kv_heads, s).transpose(1, 2)                               # (B, G, T, s)
    if cos_cache is not None:
        q, k = (_rotate(t, cos_cache, sin_cache, past_k.shape[2]) for t in (q, k))
    if k_scale is not None:
        ks, vs = k_scale.view(kv_heads, 1, s), v_scale.view(kv_heads, 1, s)
        k, v = quantize(k, ks), quantize(v, vs)                                 # int8 codes
    present_k = torch.cat([past_k, k], dim=2)                                   # (B, G, S, s)
    present_v = torch.cat([past_v, v], dim=2)                                   # (B, G, S, s)
    keys, values = present_k, present_v
    if k_scale is not None:
        keys, values = dequantize(present_k, ks), dequantize(present_v, vs)
    S = present_k.shape[2]
    rep = heads // kv_heads
    scores = q @ keys.repeat_interleave(rep, dim=1).transpose(-1, -2) * scale           # (B, H, T, S)
    keys, queries = torch.arange(S)[None, :], torch.arange(T)[:, None] + (S - T)
    allowed = keys <= queries                                                           # (T, S)
    if window:
        allowed = allowed & (keys > queries - window)
    probs = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
    out = probs @ values.repeat_interleave(rep, dim=1)                                  # (B, H, T, s)
    return out.transpose(1, 2).reshape(B, T, heads * s), present_k, present_v


class _GroupQueryAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, past_k, past_v, seqlens_k, total_length, cos_cache, sin_cache, position_ids, k_scale,
                v_scale, heads, kv_heads, size, scale, window):
        return _causal_attention(q, k, v, past_k, past_v, heads, kv_heads, scale, cos_cache, sin_cache, k_scale,
                                 v_scale, window)

    @staticmethod
    def symbolic(g, q, k, v, past_k, past_v, seqlens_k, total_length, cos_cache, sin_cache, position_ids, k_scale,
                 v_scale, heads, kv_heads, size, scale, window):
        # position_ids go along so the graph keeps the contract's input; the CPU kernel derives the same
        # positions from seqlens_k (no padding), checked in tests/exporter/model/test_fused.py
        rotary = [] if cos_cache is None or cos_cache.node().mustBeNone() else [cos_cache, sin_cache, position_ids]
        quant = {} if k_scale is None or k_scale.node().mustBeNone() else dict(
            k_quant_type_s="PER_CHANNEL", v_quant_type_s="PER_CHANNEL", kv_cache_bit_width_i=8)
        # the scales belong at inputs 12 and 13, after optional inputs the tracer cannot leave empty: they go last
        # here, and graphs/passes.place_group_query_scales moves them (SCALES_LAST marks the node until then)
        scales = [k_scale, v_scale] if quant else []
        # a sliding window: the op's local_window_size is HF's sliding_window (W - 1 fails the parity tests)
        local = {"local_window_size_i": window} if window else {}
        out, present_k, present_v = g.op("com.microsoft::GroupQueryAttention", q, k, v, past_k, past_v, seqlens_k,
                                         total_length, *rotary, *scales, num_heads_i=heads, kv_num_heads_i=kv_heads,
                                         scale_f=scale, do_rotary_i=int(bool(rotary)), rotary_interleaved_i=0,
                                         **quant, **local, **({SCALES_LAST + "_i": 1} if quant else {}), outputs=3)
        # the tracer cannot infer a custom op's output shapes: state them (None = dynamic)
        out.setType(q.type().with_sizes([None, None, heads * size]))
        present_k.setType(past_k.type().with_sizes([None, kv_heads, None, size]))
        present_v.setType(past_v.type().with_sizes([None, kv_heads, None, size]))
        return out, present_k, present_v


class _RotaryEmbedding(torch.autograd.Function):
    """onnxruntime's RotaryEmbedding (com.microsoft): one node for RoPE, HF's half-split convention."""

    @staticmethod
    def forward(ctx, x, position_ids, cos_cache, sin_cache, heads, rotary_dim):
        B, T, _ = x.shape
        x = x.view(B, T, heads, -1)                                              # (B, T, n, s)
        cos = cos_cache[position_ids].repeat(1, 1, 2)[:, :, None]                # (B, T, 1, s)
        sin = sin_cache[position_ids].repeat(1, 1, 2)[:, :, None]
        return apply_rope(x, cos, sin).reshape(B, T, -1)

    @staticmethod
    def symbolic(g, x, position_ids, cos_cache, sin_cache, heads, rotary_dim):
        # rotary_embedding_dim: a partial rotary (the tables cover rotary_dim / 2 pairs of each head); 0 = all
        out = g.op("com.microsoft::RotaryEmbedding", x, position_ids, cos_cache, sin_cache, interleaved_i=0,
                   num_heads_i=heads, rotary_embedding_dim_i=rotary_dim)
        out.setType(x.type())
        return out


def rotary_embedding(x, position_ids, cos_cache, sin_cache, heads: int):
    """x (B, T, n*s) rotated at position_ids (B, T) from (P, r/2) tables (r < s: a partial rotary, the rest of
    each head as it is): one fused node in the graph."""
    rotary_dim = 2 * int(cos_cache.shape[1])
    return _RotaryEmbedding.apply(x, position_ids, cos_cache, sin_cache, heads,
                                  0 if rotary_dim * heads == x.shape[-1] else rotary_dim)


def group_query_attention(q, k, v, past_k, past_v, lengths, heads: int, kv_heads: int, scale: float,
                          rotary: tuple | None = None, cache_scales: tuple | None = None, window: int | None = None):
    """q (B, T, H*s), k/v (B, T, G*s), past (B, G, P, s), lengths = (seqlens_k (B,) int32, total ()) int32;
    rotary = (cos, sin) tables (max_positions, s/2) and position_ids (B, T) to rotate q and k inside the op,
    or None; cache_scales = (k_scale, v_scale) (G*s,) for an int8 cache the op quantizes, or None; window: a
    sliding window the op masks to (the buffer still holds every token).
    Returns out (B, T, H*s), present_k, present_v (B, G, P+T, s) in eager mode / the buffer's shape in ORT."""
    seqlens_k, total = lengths
    cos_cache, sin_cache, position_ids = rotary if rotary is not None else (None, None, None)
    k_scale, v_scale = cache_scales if cache_scales is not None else (None, None)
    size = int(past_k.shape[-1])
    return _GroupQueryAttention.apply(q, k, v, past_k, past_v, seqlens_k, total, cos_cache, sin_cache,
                                      position_ids, k_scale, v_scale, heads, kv_heads, size, scale, window or 0)


def sequence_lengths(attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(seqlens_k (B,), total_sequence_length ()) int32 from the attention mask (B, S), as the op wants them."""
    seqlens = (attention_mask.sum(-1) - 1).to(torch.int32)                              # (B,)
    total = torch._shape_as_tensor(attention_mask)[1].to(torch.int32)                  # ()
    return seqlens, total
