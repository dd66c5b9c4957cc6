"""Attention over a compressed KV cache, the PyTorch reference that is exported to ONNX.

Cache per layer: keys and values each either uncompressed, [B, G, S, d] (G KV heads of head_dim d), or a latent
[B, 1, S, r]: one rank-r code shared by all KV heads, k ~= mean + basis @ c with basis [G*d, r] orthonormal.

Keys, by mode:
  full       scores = q . k, the usual GQA.
  post-rope  latents of rotated keys; scores in k-space: (basis_g^T q_h) . c. The mean term q . mean is the
             same for every key of a query, so softmax drops it (the sink is coded like any other key).
  pre-rope   latents of un-rotated keys (projection folded into k_proj; after k_norm where the model has one);
             every step rebuilds the keys mean + basis @ c, rotates them at their positions, then the usual GQA.
A layer without RoPE (GPT-2, SmolLM3's NoPE layers) has one kind of key: fold.py builds it post-rope (k-space).
Quantized latents (codec/quantizer.py): the cache holds packed integer codes of c, and attention reads them decoded.
A float window (KIVI's residual; `float_window` = W >= 2): beside the codes a quantized latent cache keeps the
exact latents of the last W-1 tokens in float16 (a second cache tensor, graphs/contract.py), and a query reads the
latents of its last W tokens (itself included) from there, the older ones' decoded codes. In a prefill each query
gets its own last W (a band over the slots of the window and the new tokens), so a prefill computes what token by
token generation does.
Values: full, or latents with the up-projection absorbed into o_proj: sum_m a_m (mu + B c_m) = mu + B (sum_m a_m c_m)
because the attention weights sum to one, so o_proj' = o_proj @ blockdiag(B_g(h)) and bias o_proj @ mu. Since B
is absorbed head by head, each query head may have its own B_h (trained projectors' head_decode) for free.

Entry point: `Attention` (built by model/fold.build_attention).
"""
from __future__ import annotations

import torch
from torch import nn

from graphs.contract import WINDOW_KINDS

from .fused import group_query_attention, rotary_embedding
from .layers import RMSNorm
from .rope import apply_rope


QUERY_BLOCK = 256          # query rows softmaxed at a time outside the graph (Attention._probabilities)


def grouped_matmul(a: torch.Tensor, b: torch.Tensor, groups: int) -> torch.Tensor:
    """a (B, H, T, x) @ b (B, G, x, y) -> (B, H, T, y), head h using group h // (H/G), without repeating b."""
    B, H, T, x = a.shape
    out = a.reshape(B, groups, (H // groups) * T, x) @ b   # (B, G, H/G*T, y)
    return out.reshape(B, H, T, out.shape[-1])


def _packed(*linears: nn.Linear) -> nn.Linear:
    """One Linear computing several side by side (outputs concatenated); a bias only if one of them has one
    (the others' parts are zeros)."""
    biased = any(l.bias is not None for l in linears)
    packed = nn.Linear(linears[0].in_features, sum(l.out_features for l in linears), bias=biased)
    with torch.no_grad():
        packed.weight.copy_(torch.cat([l.weight for l in linears]))
        if biased:
            packed.bias.copy_(torch.cat([l.bias if l.bias is not None else torch.zeros(l.out_features)
                                         for l in linears]))
    return packed


class Attention(nn.Module):
    """One layer's attention. Built by `model/fold.build_attention` from HF weights and optional projectors."""

    def __init__(self, cfg, key_mode: str, key_rank: int | None, value_rank: int | None, rope: bool = True,
                 window: int | None = None):
        super().__init__()
        H, G, d, D = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.hidden_size
        self.H, self.G, self.d = H, G, d
        self.scale = cfg.score_scale or d ** -0.5
        self.key_mode = "full" if key_rank is None else key_mode
        self.rope = rope            # False: a NoPE layer, whatever positions the decoder hands it
        self.window = window        # sliding window: the decoder (or the fused op) masks to it
        self.window_bounded = True  # ... and the present keeps only window - 1 tokens (False: every token)
        # Qwen3: RMSNorm over each head of q and k, before RoPE
        self.q_norm = RMSNorm(d, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(d, cfg.norm_eps) if cfg.qk_norm else None
        # Two hooks, None when exporting (the graph then has neither): `tap` observes, `codec` replaces.
        self.tap = None    # calibration (calib/capture.py): tap(name, tensor (B, T, width)), tap.wants(name)
        self.codec = None  # training and searches (projectors/coded.py): codec(name, x (B, T, width)) -> coded x,
                           # or None to leave x as it is
        self.key_rank, self.value_rank = key_rank, value_rank
        self.q_proj = nn.Linear(D, H * d, bias=cfg.qkv_bias)
        # pre-rope keys and latent values fold the projection into k_proj / v_proj: they output latents directly
        # (not past a k_norm: then key_encode codes the normed keys)
        folded_key = self.key_mode == "pre-rope" and self.k_norm is None
        self.k_proj = nn.Linear(D, key_rank if folded_key else G * d, bias=cfg.qkv_bias or folded_key)
        self.v_proj = nn.Linear(D, G * d if value_rank is None else value_rank,
                                bias=cfg.qkv_bias or value_rank is not None)
        o_in = H * d if value_rank is None else H * value_rank
        self.o_proj = nn.Linear(o_in, D, bias=cfg.family == "gpt2" or value_rank is not None)
        if self.key_mode == "post-rope" or (self.key_mode == "pre-rope" and not folded_key):
            self.key_encode = nn.Linear(G * d, key_rank)                      # c = basis^T (k - mean)
        if self.key_mode == "post-rope":
            self.register_buffer("query_basis", torch.zeros(H, d, key_rank))  # basis_g(h): q_h -> k-space
        if self.key_mode == "pre-rope":
            self.key_decode = nn.Linear(key_rank, G * d)                      # k = basis c + mean
        self.fused = False  # True: the fused GroupQueryAttention op with a shared-buffer cache (model/fused.py)
        self.key_quant = None     # codec.quantizer.LatentQuantizer: the latents are cached as packed integer codes
        self.value_quant = None
        self.float_window = 0     # W >= 2: quantized latents of a query's last W tokens read exact (float16)

    def use_cache_quant(self, rotation, key_scale, value_scale) -> None:
        """An int8 cache the fused op writes and reads (codec/cache_quant.py): per-channel steps, rotation R."""
        self.register_buffer("cache_key_scale", key_scale.float().clone())             # (G*d,)
        self.register_buffer("cache_value_scale", value_scale.float().clone())         # (G*d,)
        if rotation is not None:
            self.register_buffer("cache_rotation_t", rotation.T.float().contiguous())  # (d, d): x @ R^T = R x

    # read from the buffers on every call, so a copy moved to another dtype or device uses its own
    @property
    def cache_scales(self) -> tuple | None:
        """(k_scale, v_scale) (G*d,) when the fused op quantizes the cache to int8 itself, else None."""
        return (self.cache_key_scale, self.cache_value_scale) if "cache_key_scale" in self._buffers else None

    @property
    def cache_rotation(self) -> torch.Tensor | None:
        """(d, d) R^T: queries and keys rotated after RoPE for the int8 cache (values: folded into v/o_proj)."""
        return self._buffers.get("cache_rotation_t")

    def use_fused(self) -> None:
        """Export this layer through GroupQueryAttention. The op takes full or k-space (post-RoPE) keys with
        values of the same size, a float cache, and sizes that are multiples of 8 (job/checks.py refuses the rest
        before any work)."""
        self.qkv_proj = _packed(self.q_proj, self.k_proj, self.v_proj)   # one MatMul instead of three
        self.fused = True

    def cache_kinds(self) -> tuple[str, ...]:
        """The cache tensors this layer takes and returns, in graph order (graphs/contract.CacheLayout.kinds)."""
        windows = tuple(WINDOW_KINDS[kind] for kind, quant in (("key", self.key_quant), ("value", self.value_quant))
                        if self.float_window and quant is not None)
        return ("key", "value") + windows

    def empty_past(self, batch: int, dtype=torch.float32) -> tuple[torch.Tensor, ...]:
        """This layer's cache of a fresh sequence: every tensor of cache_kinds with 0 tokens."""
        out = []
        for rank, quant in ((self.key_rank, self.key_quant), (self.value_rank, self.value_quant)):
            if quant is not None:
                out.append(torch.zeros(batch, 1, 0, quant.nbytes, dtype=torch.uint8))
            elif self.cache_scales is not None:
                out.append(torch.zeros(batch, self.G, 0, self.d, dtype=torch.int8))
            else:
                out.append(torch.zeros(batch, 1 if rank else self.G, 0, rank or self.d, dtype=dtype))
        for kind in self.cache_kinds()[2:]:
            rank = self.key_rank if kind == WINDOW_KINDS["key"] else self.value_rank
            out.append(torch.zeros(batch, 1, 0, rank, dtype=torch.float16))
        return tuple(out)

    def forward(self, x, rope_new, rope_all, mask, past, sink_slots=None):
        """x (B, T, D); rope_* (cos, sin) for the new tokens / all S tokens or None; mask (B, 1, T, S) additive;
        past: this layer's cache tensors in cache_kinds order, past_k, past_v (B, kvh, P, size) and any float
        windows (B, 1, min(P, W-1), r); sink_slots (B, S) bool, the sink's slot (quantized caches).
        Returns y (B, T, D) and the presents in the same order (present_k, present_v (B, kvh, S, size), ...)."""
        if not self.rope:
            rope_new = rope_all = None
        windows = dict(zip(self.cache_kinds()[2:], past[2:]))
        if self.fused:                  # mask is (seqlens_k, total) here, rope_all the op's cos/sin tables
            y, present_k, present_v = self._fused(x, rope_new, rope_all, mask, past[0], past[1])
            return y, (present_k, present_v)
        B, T, _ = x.shape
        q = self._queries(x, rope_new)                                      # (B, H, T, d)
        scores, present_k, key_window = self._scores(x, q, rope_new, rope_all, past[0], sink_slots,
                                                     windows.get(WINDOW_KINDS["key"]))   # (B, H, T, S)
        probs = self._probabilities(scores, mask)                           # (B, H, T, S)
        out, present_v, value_window = self._mix(x, probs, past[1], sink_slots,
                                                 windows.get(WINDOW_KINDS["value"]))     # (B, H, T, d or r)
        y = self.o_proj(out.transpose(1, 2).reshape(B, T, -1))              # (B, T, D)
        if self.window and self.window_bounded:    # what the next token can see: its window - 1 predecessors
            present_k, present_v = present_k[:, :, 1 - self.window:], present_v[:, :, 1 - self.window:]
        return y, (present_k, present_v) + tuple(w for w in (key_window, value_window) if w is not None)

    def _probabilities(self, scores, mask):
        """softmax(scores * scale + mask) over the keys. Traced (the graph) and with autograd: as written. Else in
        place and a block of queries at a time: the same numbers in a third of the memory (a calibration prefill
        of 2,048 tokens with 32 heads holds 0.5 GiB per (B, H, T, S) tensor, and the plain form holds three)."""
        if torch.jit.is_tracing() or torch.is_grad_enabled():
            return torch.softmax(scores * self.scale + mask, dim=-1)
        scores.mul_(self.scale).add_(mask)
        for rows in scores.split(QUERY_BLOCK, dim=2):                      # (B, H, <= QUERY_BLOCK, S)
            rows.copy_(torch.softmax(rows, dim=-1))
        return scores

    def _queries(self, x, rope_new):
        B, T, _ = x.shape
        q = self._per_head(self.q_proj(x), B, T, self.H, self.q_norm)        # (B, H, T, d)
        self._tap("query_pre", q)
        if rope_new is not None:
            q = apply_rope(q, *rope_new)
        self._tap("query_post", q)
        return q

    def _scores(self, x, q, rope_new, rope_all, past_k, sink_slots=None, past_window=None):
        """-> scores (B, H, T, S), the present keys, the present key window (None without one)."""
        B, T, _ = x.shape
        if self.key_mode == "pre-rope":
            if self.k_norm is None:
                c = self.k_proj(x).unsqueeze(1)                              # (B, 1, T, r), folded
            else:
                k = self._per_head(self.k_proj(x), B, T, self.G, self.k_norm)  # (B, G, T, d)
                c = self.key_encode(k.transpose(1, 2).reshape(B, T, -1)).unsqueeze(1)   # (B, 1, T, r)
            exact = c
            c, present = self._append(self.key_quant, past_k, c, sink_slots)  # (B, 1, S, r), present
            scores = grouped_matmul(q, self._pre_rope_keys(c, rope_all).transpose(-1, -2), self.G)  # (B, H, T, S)
            if past_window is None:
                return scores, present, None
            tail, window = self._window(self.key_quant, past_window, exact, sink_slots)   # (B, 1, E, r)
            S, E = c.shape[2], tail.shape[2]
            rope_tail = None if rope_all is None else tuple(t[:, :, S - E:] for t in rope_all)
            exact_scores = grouped_matmul(q, self._pre_rope_keys(tail, rope_tail).transpose(-1, -2), self.G)
            return self._banded_scores(scores, exact_scores, T), present, window
        k = self._per_head(self.k_proj(x), B, T, self.G, self.k_norm)        # (B, G, T, d)
        self._tap("key_pre", k)
        windowed = self._training_window()   # then also the keys as the window holds them: coded, not rounded
        exact = self._code("key_pre", k, rounding=False) if windowed else None
        k = self._code("key_pre", k)
        if rope_new is not None:
            k = apply_rope(k, *rope_new)
            exact = apply_rope(exact, *rope_new) if windowed else None
        self._tap("key_post", k)
        exact = self._code("key_post", exact, rounding=False) if windowed else None
        k = self._code("key_post", k)
        if self.key_mode == "full":
            present = torch.cat([past_k, k], dim=2)                          # (B, G, S, d)
            scores = grouped_matmul(q, present.transpose(-1, -2), self.G)    # (B, H, T, S)
            if windowed:                                                     # no past in training: S == T
                scores = self._banded_scores(scores, grouped_matmul(q, exact.transpose(-1, -2), self.G), T)
            return scores, present, None
        c = self.key_encode(k.transpose(1, 2).reshape(B, T, -1)).unsqueeze(1)  # (B, 1, T, r)
        exact = c
        c, present = self._append(self.key_quant, past_k, c, sink_slots)     # (B, 1, S, r), present
        q_latent = q @ self.query_basis                                      # (B, H, T, r)
        scores = q_latent @ c.transpose(-1, -2)                              # (B, H, T, S)
        if past_window is None:
            return scores, present, None
        tail, window = self._window(self.key_quant, past_window, exact, sink_slots)   # (B, 1, E, r)
        return self._banded_scores(scores, q_latent @ tail.transpose(-1, -2), T), present, window

    def _fused(self, x, rope_new, rope_tables, lengths, past_k, past_v):
        """Full or k-space attention through GroupQueryAttention: (G heads of d) or (1 head of r)."""
        B, T, _ = x.shape
        sizes = [self.q_proj.out_features, self.k_proj.out_features, self.v_proj.out_features]
        q, k, v = self.qkv_proj(x).split(sizes, dim=-1)                      # (B, T, H*d), (B, T, G*d), v
        if self.q_norm is not None:                                          # per head, back to (B, T, n*d)
            q = self.q_norm(q.view(B, T, self.H, self.d)).reshape(B, T, -1)
            k = self.k_norm(k.view(B, T, self.G, self.d)).reshape(B, T, -1)
        if self.key_mode == "full" and self.cache_rotation is not None:   # RoPE, then R, before the op
            if rope_tables is not None:                                      # (cos, sin tables, position_ids)
                cos, sin, positions = rope_tables
                q = rotary_embedding(q, positions, cos, sin, self.H)         # (B, T, H*d)
                k = rotary_embedding(k, positions, cos, sin, self.G)         # (B, T, G*d)
            q = (q.view(B, T, self.H, self.d) @ self.cache_rotation).reshape(B, T, -1)   # (B, T, H*d)
            k = (k.view(B, T, self.G, self.d) @ self.cache_rotation).reshape(B, T, -1)   # (B, T, G*d)
            return self._group_query(q, k, v, past_k, past_v, lengths, self.G, None)
        if self.key_mode == "full":     # the op rotates q and k itself from the tables (None: no RoPE)
            return self._group_query(q, k, v, past_k, past_v, lengths, self.G, rope_tables)
        # k-space, one KV head of r: RoPE must come before the projection, so it stays in the graph
        q = q.view(B, T, self.H, self.d).transpose(1, 2)                     # (B, H, T, d)
        k = k.view(B, T, self.G, self.d).transpose(1, 2)                     # (B, G, T, d)
        if rope_new is not None:
            q, k = apply_rope(q, *rope_new), apply_rope(k, *rope_new)
        k = self.key_encode(k.transpose(1, 2).reshape(B, T, -1))             # (B, T, r)
        q = (q @ self.query_basis).transpose(1, 2).reshape(B, T, -1)         # (B, T, H*r)
        return self._group_query(q, k, v, past_k, past_v, lengths, 1, None)

    def _group_query(self, q, k, v, past_k, past_v, lengths, kv_heads, rope_tables):
        out, present_k, present_v = group_query_attention(q, k, v, past_k, past_v, lengths, self.H, kv_heads,
                                                          self.scale, rope_tables, self.cache_scales,
                                                          self.window)                         # (B, T, H*s)
        return self.o_proj(out), present_k, present_v                        # (B, T, D)

    def _mix(self, x, probs, past_v, sink_slots=None, past_window=None):
        """-> the heads' outputs (B, H, T, d or r), the present values, the present value window (or None)."""
        B, T, _ = x.shape
        if self.value_rank is None:
            v = self.v_proj(x).view(B, T, self.G, self.d).transpose(1, 2)    # (B, G, T, d)
            self._tap("value", v)
            exact = self._code("value", v, rounding=False) if self._training_window() else None
            v = self._code("value", v)
            if v.shape[1] != self.G:        # training: decoded per query head (B, H, T, d), no past (projectors/coded.py)
                return self._exact_band(probs @ v, probs, v, exact), v, None
            present = torch.cat([past_v, v], dim=2)                          # (B, G, S, d)
            if self.tap is not None and self.tap.wants("value_mix"):      # (B, H, T, S) work: asked for only
                self._tap_mix(probs, present)
            out = grouped_matmul(probs, present, self.G)                     # (B, H, T, d)
            return self._exact_band(out, probs, v, exact), present, None
        c = self.v_proj(x).unsqueeze(1)                                      # (B, 1, T, r)
        exact = c
        c, present = self._append(self.value_quant, past_v, c, sink_slots)   # (B, 1, S, r), present
        out = probs @ c                                                      # (B, H, T, r)
        if past_window is None:
            return out, present, None
        tail, window = self._window(self.value_quant, past_window, exact, sink_slots)   # (B, 1, E, r)
        S, E = c.shape[2], tail.shape[2]
        band = self._band(T, E).to(probs.dtype)                              # (T, E)
        # in the band a query reads the exact latent instead of the decoded one: add what it lacks
        return out + (probs[..., S - E:] * band) @ (tail - c[:, :, S - E:]), present, window

    def _training_window(self) -> bool:
        """Training a quantized code for an export with a float window (projectors/coded.py sets float_window on
        the uncompressed layers it codes): a query reads its last W keys and values as the window holds them, the
        codes' latents unrounded, and the older ones rounded."""
        return self.codec is not None and self.float_window >= 2

    def _exact_band(self, out, probs, coded, exact):
        """out (B, H, T, d) mixed from the rounded values coded (B, G or H, T, d), with each query's band of its
        last W read from the unrounded ones exact instead (training a float window; no past: S == T)."""
        if exact is None:
            return out
        per_head = lambda v: v.repeat_interleave(self.H // v.shape[1], dim=1)          # (B, H, T, d)
        band = self._band(probs.shape[2], probs.shape[3]).to(probs.dtype)               # (T, T)
        return out + (probs * band) @ (per_head(exact) - per_head(coded))

    def _pre_rope_keys(self, c, rope_all):
        """Latents (B, 1, S, r) -> keys (B, G, S, d), rebuilt and rotated at their positions."""
        B = c.shape[0]
        k = self.key_decode(c.squeeze(1)).view(B, -1, self.G, self.d).transpose(1, 2)   # (B, G, S, d)
        return apply_rope(k, *rope_all) if rope_all is not None else k

    def _window(self, quant, past_window, exact, sink_slots):
        """The float window's exact latents of the last E slots (B, 1, E, r) float32, E = its past + T (the new
        tokens' rounded to float16 as they are kept, so later steps read the same numbers; the sink's slot its
        constant latent, as the codes give it, not a float16 copy of how this call's matmul rounded it), and the
        present window: the last W-1 of them, float16."""
        kept = torch.cat([past_window, exact.to(torch.float16)], dim=2)     # (B, 1, E, r)
        tail = kept.to(torch.float32)
        if quant.sink is not None and sink_slots is not None:
            E = tail.shape[2]
            tail = torch.where(sink_slots[:, None, sink_slots.shape[1] - E:, None], quant.sink, tail)
        return tail, kept[:, :, 1 - self.float_window:]

    def _band(self, T: int, E) -> torch.Tensor:
        """(T, E) bool: of the last E slots, those among each new query's last W: query i sits at slot E - T + i
        of them and reads slot j exact when 0 <= (E - T + i) - j < W."""
        i = torch.arange(T)[:, None] + (E - T)                               # (T, 1)
        j = torch.arange(E)[None, :]                                         # (1, E)
        return (i - j >= 0) & (i - j < self.float_window)

    def _banded_scores(self, scores, exact_scores, T: int):
        """scores (B, H, T, S) from the codes, exact_scores (B, H, T, E) from the last E slots' exact latents:
        each query's scores of its band from the exact ones."""
        S, E = scores.shape[-1], exact_scores.shape[-1]
        tail = torch.where(self._band(T, E), exact_scores, scores[..., S - E:])   # (B, H, T, E)
        return torch.cat([scores[..., :S - E], tail], dim=-1)                # (B, H, T, S)

    def _per_head(self, x, B, T, heads: int, norm):
        """(B, T, heads*d) -> (B, heads, T, d), normed per head where the model norms q and k. B and T come from
        the caller's input: reading them off x again would put more shape nodes in the graph."""
        x = x.view(B, T, heads, self.d)
        if norm is not None:
            x = norm(x)
        return x.transpose(1, 2)

    @staticmethod
    def _append(quant, past, c, sink_slots):
        """The new latents c (B, 1, T, r) appended to the cache: (the latents attention reads (B, 1, S, r),
        the present cache). Quantized, the cache holds packed codes (B, 1, S, bytes) and attention reads them
        decoded, the new tokens' included, so every step sees what later steps will read back."""
        if quant is None:
            present = torch.cat([past, c], dim=2)                            # (B, 1, S, r)
            return present, present
        present = torch.cat([past, quant.encode(c)], dim=2)                  # (B, 1, S, bytes) uint8
        return quant.decode(present, sink_slots), present

    def _tap_mix(self, probs, values) -> None:
        """Calibration: what each query head's attention makes of all G*d value dims, leaving out position 0
        (the sink, coded exactly): u = sum_j>0 a_j v_j and w = sum_j>0 a_j, side by side per head. A value
        code's error reaches the output as (I - P)(u - w mean): exactly, for this layer (projectors/metric.py)."""
        v_all = values.transpose(1, 2).flatten(2)[:, 1:]                     # (B, S-1, G*d)
        p = probs[..., 1:]                                                   # (B, H, T, S-1)
        self._tap("value_mix", torch.cat([p @ v_all[:, None], p.sum(-1, keepdim=True)], dim=-1))  # (B,H,T,G*d+1)

    def _code(self, name: str, heads: torch.Tensor, rounding: bool = True) -> torch.Tensor:
        """Training: an uncompressed layer that codes its keys or values as a compressed one would, so the
        projectors can learn through the whole model (projectors/train.py). heads (B, nh, T, d). rounding=False:
        a quantized code's latents as a float window holds them."""
        if self.codec is None:
            return heads
        B, nh, T, d = heads.shape
        x = heads.transpose(1, 2).flatten(2)                                 # (B, T, nh*d)
        coded = self.codec(name, x) if rounding else self.codec(name, x, rounding=False)   # (B, T, nh*d or H*d)
        return heads if coded is None else coded.view(B, T, -1, d).transpose(1, 2)

    def _tap(self, name: str, heads: torch.Tensor) -> None:
        """Hand (B, nh, T, d) to the calibration hook as (B, T, nh*d), heads side by side."""
        if self.tap is not None:
            self.tap(name, heads.transpose(1, 2).flatten(2))
