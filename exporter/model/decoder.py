"""The compact decoder: embeddings, N blocks of (norm, attention, norm, MLP), final norm, LM head.

One module for both families; the differences are a norm type, an MLP type, and RoPE vs learned positions.
The llama family's quirks (model/config.py) are switches here: norms after attention and MLP (Gemma 3), scaled
embeddings, a second RoPE for the sliding-window layers (Gemma 3's local base).
Its forward is the ONNX contract (graphs/contract.py): input_ids, attention_mask, position_ids, then the flat
past cache (key, value per layer, then that layer's float windows if it has any) in; logits and the flat present
cache out.

Entry point: `Decoder` (built by model/fold.build_decoder).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .attention import Attention
from .config import DecoderConfig
from .fused import sequence_lengths
from .layers import Embeddings, GatedMLP, GeluMLP, RMSNorm
from .rope import Rope


class Block(nn.Module):
    def __init__(self, cfg: DecoderConfig, attn: Attention, mlp_hidden: int):
        super().__init__()
        Norm = (lambda: RMSNorm(cfg.hidden_size, cfg.norm_eps)) if cfg.family == "llama" else \
            (lambda: nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps))
        self.norm1, self.attn, self.norm2 = Norm(), attn, Norm()
        self.mlp = GatedMLP(cfg.hidden_size, mlp_hidden, cfg.mlp_activation) if cfg.family == "llama" else \
            GeluMLP(cfg.hidden_size, mlp_hidden)
        # Gemma 3 norms what attention and the MLP add to the residual stream, too
        self.post_attn_norm = Norm() if cfg.sandwich_norms else None
        self.post_mlp_norm = Norm() if cfg.sandwich_norms else None

    def forward(self, x, rope_new, rope_all, mask, past, sink_slots=None):
        """x (B, T, D), past: the layer's cache tensors (Attention.cache_kinds) -> x, the presents."""
        a, presents = self.attn(self.norm1(x), rope_new, rope_all, mask, past, sink_slots)
        x = x + (a if self.post_attn_norm is None else self.post_attn_norm(a))
        m = self.mlp(self.norm2(x))
        return x + (m if self.post_mlp_norm is None else self.post_mlp_norm(m)), presents


def causal_padding_mask(attention_mask: torch.Tensor, T: int, dtype, window: int | None = None,
                        kept=None) -> torch.Tensor:
    """Additive mask (B, 1, T, S): query i (absolute slot S-T+i) sees key j if j <= S-T+i and j is not padding;
    with a window, also j > S-T+i - window (HF's sliding window: itself and window - 1 before). kept: a windowed
    layer's cache holds only the last `kept` slots, so the mask is (B, 1, T, kept), the mask's last columns.
    Slots and positions differ by the left padding only, so a window of slots is a window of positions.

    A finite minimum, not -inf, so fully padded query rows give a harmless uniform softmax instead of NaN."""
    S = attention_mask.shape[1]
    keys = torch.arange(S, device=attention_mask.device)                       # (S,)
    queries = torch.arange(T, device=attention_mask.device) + (S - T)          # (T,)
    allowed = keys[None, :] <= queries[:, None]                                # (T, S)
    if window:
        allowed = allowed & (keys[None, :] > queries[:, None] - window)
    allowed = allowed[None, None] & (attention_mask[:, None, None, :] > 0)     # (B, 1, T, S)
    if kept is not None:
        allowed = allowed[..., S - kept:]                                       # (B, 1, T, kept)
    return torch.zeros((), dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)


def last_slots(rope_all, sink_slots, S: int, kept):
    """rope_all (cos, sin) (B, 1, S, d) and sink_slots (B, S) cut to a windowed layer's last `kept` slots."""
    if rope_all is not None:
        rope_all = tuple(t[:, :, S - kept:] for t in rope_all)
    return rope_all, None if sink_slots is None else sink_slots[:, S - kept:]


def last_positions(x: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """The last n positions of x (B, T, D); n <= 0 keeps all T. n stays a graph input (the tracer would
    freeze a tensor used as a slice bound or arange start, hence the comparison), so the LM head multiplies
    n rows, not T: at a 4k-token prefill that is most of its cost."""
    positions = torch.arange(x.shape[1], device=x.device)                       # (T,)
    start = torch.where(n > 0, x.shape[1] - n, torch.zeros_like(n))             # ()
    rows = torch.nonzero(positions >= start).squeeze(1)                          # (n,)
    return x.index_select(1, rows)                                               # (B, n, D)


def lm_head(x, logits_to_keep, norm, logits) -> torch.Tensor:
    """x (B, T, D) -> logits(norm(x)) (B, n, V) of the last n = logits_to_keep positions (all when None or 0)."""
    if logits_to_keep is not None:
        x = last_positions(x, logits_to_keep)                                       # (B, n, D)
    return logits(norm(x))                                                           # (B, n, V)


def first_slots(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, S) bool: each sequence's first valid cache slot, where the sink sits (after any left padding)."""
    return (attention_mask.cumsum(-1) == 1) & (attention_mask > 0)


@dataclass
class Step:
    """One forward's shared inputs of the blocks (Decoder.step)."""
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    T: int
    dtype: torch.dtype
    layer: tuple            # (rope_new, rope_all, mask, sink_slots) of the global layers
    local: tuple            # (rope_new, rope_all) of the local RoPE, or Nones
    windowed: dict = field(default_factory=dict)   # window -> the layer tuple of that window's layers


class Decoder(nn.Module):
    def __init__(self, cfg: DecoderConfig, blocks: list[Block], rope: Rope | None, local_rope: Rope | None = None):
        super().__init__()
        self.cfg = cfg
        self.embeddings = Embeddings(cfg.vocab_size, cfg.hidden_size, cfg.tie_embeddings)
        self.pos_embed = nn.Embedding(cfg.max_positions, cfg.hidden_size) if cfg.family == "gpt2" else None
        self.rope = rope
        self.local_rope = local_rope    # the sliding-window layers' own RoPE (Gemma 3's local base), or None
        self.blocks = nn.ModuleList(blocks)    # empty while model/stream.py builds them one at a time
        self.norm = RMSNorm(cfg.hidden_size, cfg.norm_eps) if cfg.family == "llama" else \
            nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps)
        self.fused = False

    def use_fused_attention(self) -> "Decoder":
        """Every layer through onnxruntime's GroupQueryAttention: the shared-buffer cache variant."""
        self.keep_window_tokens()       # the op's buffer holds every token; it masks the window itself
        for b in self.blocks:
            b.attn.use_fused()
        self.fused = True
        if self.rope is not None and not self.rope.long:   # the op's own RoPE tables (model/fused.py)
            cos, sin = self.rope.tables(self.cfg.max_positions)
            self.register_buffer("rope_cos_table", cos)                              # (P, d/2)
            self.register_buffer("rope_sin_table", sin)                              # (P, d/2)
        if self.local_rope is not None:  # the windowed layers' (Gemma 3's local base)
            cos, sin = self.local_rope.tables(self.cfg.max_positions)
            self.register_buffer("local_rope_cos_table", cos)                        # (P, d/2)
            self.register_buffer("local_rope_sin_table", sin)                        # (P, d/2)
        return self

    def keep_window_tokens(self) -> "Decoder":
        """Sliding-window layers keep every token (masked to their window) instead of the window alone: the
        cache onnxruntime-genai and the fused op's shared buffer take (WINDOW_CACHE=full)."""
        for b in self.blocks:
            b.attn.window_bounded = False
        return self

    def forward(self, input_ids, attention_mask, position_ids, *past, logits_to_keep=None):
        """input_ids (B, T), attention_mask (B, S), position_ids (B, T), past: per layer its key and value
        (B, kvh, P, size), then its float windows if any (Attention.cache_kinds).

        logits_to_keep: int64 scalar tensor n; n > 0 returns the logits of the last n positions only
        (generation needs one), 0 or None all T (perplexity needs them).
        """
        T = input_ids.shape[1]
        x = self.embed(input_ids, position_ids)                                      # (B, T, D)
        step = self.step(attention_mask, position_ids, T, x.dtype)
        presents, start = [], 0
        for i, block in enumerate(self.blocks):
            n = len(block.attn.cache_kinds())
            x, layer_presents = self.run_block(block, i, x, step, past[start:start + n])
            presents += layer_presents
            start += n
        return (self.head(x, logits_to_keep), *presents)

    def head(self, x, logits_to_keep=None) -> torch.Tensor:
        """The last block's output (B, T, D) -> logits (B, n, V) of the last n = logits_to_keep positions."""
        return lm_head(x, logits_to_keep, self.norm, self.embeddings.logits)

    def embed(self, input_ids, position_ids) -> torch.Tensor:
        """(B, T) token ids -> (B, T, D) the first block's input."""
        x = self.embeddings.embed(input_ids)                                         # (B, T, D)
        if self.cfg.embed_scale is not None:
            x = x * torch.tensor(self.cfg.embed_scale, dtype=x.dtype)
        if self.pos_embed is not None:
            x = x + self.pos_embed(position_ids)
        return x

    def step(self, attention_mask, position_ids, T: int, dtype) -> "Step":
        """What every block of one forward shares: masks, RoPE angles, sink slots."""
        if self.fused:   # GroupQueryAttention masks itself from the sequence lengths (no left padding)
            mask = sequence_lengths(attention_mask)                                  # (B,), ()
        else:
            mask = causal_padding_mask(attention_mask, T, dtype)                     # (B, 1, T, S)
        rope_new = rope_all = None
        if self.rope is not None:
            rope_new = self.rope(position_ids)
            if self.fused:                 # fused uncompressed layers rotate inside the op, from tables
                rope_all = (*self._rope_tables(attention_mask, position_ids), position_ids)
            elif self.needs_all_positions:  # pre-rope layers rotate every cached key: positions from the mask
                rope_all = self.rope((attention_mask.cumsum(-1) - 1).clamp(min=0))
        sink_slots = first_slots(attention_mask) if self.quantized else None              # (B, S)
        local_new = local_all = None
        if self.local_rope is not None:
            local_new = self.local_rope(position_ids)
            if self.needs_all_positions:
                local_all = self.local_rope((attention_mask.cumsum(-1) - 1).clamp(min=0))
        return Step(attention_mask, position_ids, T, dtype, (rope_new, rope_all, mask, sink_slots),
                    (local_new, local_all))

    def run_block(self, block, i: int, x, step: "Step", past):
        """Block i (built by this decoder, or one at a time by model/stream.py) on x (B, T, D) and its cache
        tensors `past` (key, value, float windows) -> x, the presents in the same order."""
        self._tap_hidden(block, x)
        layer = step.layer
        window = self.cfg.window(i)
        if window:
            if window not in step.windowed:     # layers of one window hold as many slots: one mask for all
                step.windowed[window] = self._windowed(step, window, past[0].shape[2] + step.T,
                                                       block.attn.window_bounded)
            layer = step.windowed[window]
        return block(x, layer[0], layer[1], layer[2], past, layer[3])

    def _windowed(self, step: "Step", window: int, kept, bounded: bool):
        """(rope_new, rope_all, mask, sink_slots) of the layers of one window. The fused op masks the window
        itself and rotates from the local tables; else a bounded cache holds the last `kept` slots only, so the
        mask and the slots' positions are cut to them."""
        rope_new, rope_all, mask, sink_slots = step.layer
        if self.local_rope is not None:
            rope_new = step.local[0]
            rope_all = (self.local_rope_cos_table, self.local_rope_sin_table, step.position_ids) if self.fused \
                else step.local[1]
        if self.fused:
            return rope_new, rope_all, mask, sink_slots
        mask_of = lambda kept_slots: causal_padding_mask(step.attention_mask, step.T, step.dtype, window, kept_slots)
        if not bounded:
            return rope_new, rope_all, mask_of(None), sink_slots
        rope_all, sink_slots = last_slots(rope_all, sink_slots, step.attention_mask.shape[1], kept)
        return rope_new, rope_all, mask_of(kept), sink_slots

    def _rope_tables(self, attention_mask, position_ids):
        """The op's cos/sin tables: baked into the graph, or for LongRoPE computed each call for the positions
        0..S-1 (S = the mask's length) from the set this call's positions choose."""
        if not self.rope.long:
            return self.rope_cos_table, self.rope_sin_table
        return self.rope.tables(attention_mask.shape[1], position_ids)

    @staticmethod
    def _tap_hidden(block, x):
        if block.attn.tap is not None:
            block.attn.tap("hidden", x)

    def empty_past(self, batch: int, dtype=torch.float32) -> list[torch.Tensor]:
        """The cache of a fresh sequence: every layer's tensors (key, value, float windows) with 0 tokens."""
        return [t for b in self.blocks for t in b.attn.empty_past(batch, dtype)]

    @property
    def needs_all_positions(self) -> bool:
        """Pre-RoPE layers rotate every cached key, so they need the positions of all slots."""
        return any(b.attn.key_mode == "pre-rope" for b in self.blocks)

    @property
    def quantized(self) -> bool:
        return any(b.attn.key_quant is not None or b.attn.value_quant is not None for b in self.blocks)
