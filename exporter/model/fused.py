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


def _rotate(x, cos_cache, sin_cache, start: int):
    """HF rotate-half RoPE of x (B, n, T, s) at positions start..start+T-1 from (P, s/2) tables."""
    T, half = x.shape[2], x.shape[-1] // 2
    cos = cos_cache[start:start + T].repeat(1, 2)                               # (T, s)
    sin = sin_cache[start:start + T].repeat(1, 2)                               # (T, s)
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def _causal_attention(q, k, v, past_k, past_v, heads: int, kv_heads: int, scale: float, cos_cache=None,
                      sin_cache=None):
    """Eager semantics on the concatenating protocol, no padding. q (B, T, H*s), k/v (B, T, G*s), past (B, G, P, s);
    with cos/sin tables, q and k are rotated first at positions P..P+T-1."""
    B, T, _ = q.shape
    s = past_k.shape[-1]
    q = q.view(B, T, heads, s).transpose(1, 2)                                  # (B, H, T, s)
    k = k.view(B, T, kv_heads, s).transpose(1, 2)                               # (B, G, T, s)
    if cos_cache is not None:
        q, k = (_rotate(t, cos_cache, sin_cache, past_k.shape[2]) for t in (q, k))
    present_k = torch.cat([past_k, k], dim=2)                                   # (B, G, S, s)
    present_v = torch.cat([past_v, v.view(B, T, kv_heads, s).transpose(1, 2)], dim=2)   # (B, G, S, s)
    S = present_k.shape[2]
    rep = heads // kv_heads
    scores = q @ present_k.repeat_interleave(rep, dim=1).transpose(-1, -2) * scale      # (B, H, T, S)
    allowed = torch.arange(S)[None, :] <= torch.arange(T)[:, None] + (S - T)            # (T, S)
    probs = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
    out = probs @ present_v.repeat_interleave(rep, dim=1)                               # (B, H, T, s)
    return out.transpose(1, 2).reshape(B, T, heads * s), present_k, present_v


class _GroupQueryAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, past_k, past_v, seqlens_k, total_length, cos_cache, sin_cache, position_ids, heads,
                kv_heads, size, scale):
        return _causal_attention(q, k, v, past_k, past_v, heads, kv_heads, scale, cos_cache, sin_cache)

    @staticmethod
    def symbolic(g, q, k, v, past_k, past_v, seqlens_k, total_length, cos_cache, sin_cache, position_ids, heads,
                 kv_heads, size, scale):
        # position_ids go along so the graph keeps the contract's input; the CPU kernel derives the same
        # positions from seqlens_k (no padding), checked in tests/exporter/model/test_fused.py
        rotary = [] if cos_cache is None or cos_cache.node().mustBeNone() else [cos_cache, sin_cache, position_ids]
        out, present_k, present_v = g.op("com.microsoft::GroupQueryAttention", q, k, v, past_k, past_v, seqlens_k,
                                         total_length, *rotary, num_heads_i=heads, kv_num_heads_i=kv_heads,
                                         scale_f=scale, do_rotary_i=int(bool(rotary)), rotary_interleaved_i=0,
                                         outputs=3)
        # the tracer cannot infer a custom op's output shapes: state them (None = dynamic)
        out.setType(q.type().with_sizes([None, None, heads * size]))
        present_k.setType(past_k.type().with_sizes([None, kv_heads, None, size]))
        present_v.setType(past_v.type().with_sizes([None, kv_heads, None, size]))
        return out, present_k, present_v


def group_query_attention(q, k, v, past_k, past_v, lengths, heads: int, kv_heads: int, scale: float,
                          rotary: tuple | None = None):
    """q (B, T, H*s), k/v (B, T, G*s), past (B, G, P, s), lengths = (seqlens_k (B,) int32, total ()) int32;
    rotary = (cos, sin) tables (max_positions, s/2) and position_ids (B, T) to rotate q and k inside the op,
    or None.
    Returns out (B, T, H*s), present_k, present_v (B, G, P+T, s) in eager mode / the buffer's shape in ORT."""
    seqlens_k, total = lengths
    cos_cache, sin_cache, position_ids = rotary if rotary is not None else (None, None, None)
    size = int(past_k.shape[-1])
    return _GroupQueryAttention.apply(q, k, v, past_k, past_v, seqlens_k, total, cos_cache, sin_cache,
                                      position_ids, heads, kv_heads, size, scale)


def sequence_lengths(attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(seqlens_k (B,), total_sequence_length ()) int32 from the attention mask (B, S), as the op wants them."""
    seqlens = (attention_mask.sum(-1) - 1).to(torch.int32)                              # (B,)
    total = torch._shape_as_tensor(attention_mask)[1].to(torch.int32)                  # ()
    return seqlens, total
