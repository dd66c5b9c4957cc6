"""Rotary position embedding (RoPE), HF's half-split convention: pairs (i, i + r/2) rotate by position x inv_freq_i.

    rotate(x, m) = x cos(m w) + rotate_half(x) sin(m w),   rotate_half([a, b]) = [-b, a]

on the first r = 2 len(inv_freq) numbers of each head; a partial rotary (r < head_dim, Phi-4-mini) passes the
rest through. `Rope` computes cos/sin in the graph from position ids (no max-length table baked into the model)
and, for onnxruntime's fused attention, the (positions, r/2) tables it takes.

LongRoPE (Phi-3): two sets of frequencies, the short one while the sequence is within the model's original
length and the long one beyond it. Like HF, the choice is made per call from the largest position: a prompt that
crosses the length uses the long set everywhere, and a cached key keeps the set it was rotated with.

Gemma 3 has two: its sliding-window layers rotate with their own base (`local_rope_of`).

Entry point: `rope_of(hf)` -> Rope or None, `local_rope_of(hf)`, `layer_rope(...)`; `apply_rope`.
"""
from __future__ import annotations

import torch
from torch import nn


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, nh, T, d); cos/sin (B, 1, T, r), r <= d. HF's convention (halves, not interleaved pairs)."""
    r = cos.shape[-1]
    if r == x.shape[-1]:
        return x * cos + rotate_half(x) * sin
    rot, rest = x[..., :r], x[..., r:]
    return torch.cat((rot * cos + rotate_half(rot) * sin, rest), dim=-1)


class Rope(nn.Module):
    """cos/sin computed in the graph from positions. long_inv_freq/original_length: LongRoPE's second set."""

    def __init__(self, inv_freq: torch.Tensor, scaling: float, long_inv_freq: torch.Tensor | None = None,
                 original_length: int | None = None):
        super().__init__()
        self.register_buffer("inv_freq", inv_freq.float().clone())
        self.long = long_inv_freq is not None
        if self.long:
            self.register_buffer("long_inv_freq", long_inv_freq.float().clone())
            self.original_length = int(original_length)
        self.scaling = float(scaling)

    def frequencies(self, positions: torch.Tensor) -> torch.Tensor:
        """inv_freq (r/2,) for a call whose largest position is positions.max(): LongRoPE's choice."""
        if not self.long:
            return self.inv_freq
        return torch.where(positions.max() + 1 > self.original_length, self.long_inv_freq, self.inv_freq)

    def frequencies_for_length(self, length: int) -> torch.Tensor:
        """inv_freq for sequences of this length (calibration windows: the set their keys were rotated with)."""
        return self.long_inv_freq if self.long and length > self.original_length else self.inv_freq

    def tables(self, max_positions: int, positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (max_positions, r/2) for positions 0..max_positions-1: the layout GroupQueryAttention takes.
        Computed in float32 exactly as forward() computes them, so both variants rotate by the same angles.
        LongRoPE needs the call's positions to choose its set (the tables are then computed in the graph)."""
        inv_freq = self.inv_freq if positions is None else self.frequencies(positions)
        freqs = torch.arange(max_positions).float()[:, None] * inv_freq                     # (P, r/2)
        return freqs.cos() * self.scaling, freqs.sin() * self.scaling

    def forward(self, positions: torch.Tensor):
        """positions (B, T) int64 -> cos, sin (B, 1, T, r)."""
        freqs = positions[..., None].float() * self.frequencies(positions)         # (B, T, r/2)
        emb = torch.cat((freqs, freqs), dim=-1)[:, None]                            # (B, 1, T, r)
        return emb.cos() * self.scaling, emb.sin() * self.scaling


def _per_layer_type(rot, layer_type: str) -> Rope:
    """One of a rotary embedding's per-layer-type sets (Gemma 3: full_attention, sliding_attention)."""
    return Rope(getattr(rot, f"{layer_type}_inv_freq"), getattr(rot, f"{layer_type}_attention_scaling"))


def local_rope_of(hf) -> Rope | None:
    """The sliding-window layers' RoPE where it differs from the global layers' (Gemma 3), else None."""
    rot = getattr(getattr(hf, "model", None), "rotary_emb", None)
    if "sliding_attention" not in getattr(rot, "layer_types", ()):
        return None
    return _per_layer_type(rot, "sliding_attention")


def layer_rope(cfg, layer: int, rope: Rope | None, local_rope: Rope | None) -> Rope | None:
    """The RoPE layer `layer` rotates with: none (GPT-2, NoPE layers), the local one (a windowed layer of a
    model that has one), or the global one."""
    if not cfg.rope_on(layer):
        return None
    return local_rope if local_rope is not None and cfg.window(layer) else rope


def rope_of(hf) -> Rope | None:
    """The HF model's RoPE as a Rope (None for GPT-2). HF's inv_freq buffer is overwritten by LongRoPE's last
    call, so LongRoPE's two sets are computed again from the config here."""
    if hf.config.model_type == "gpt2":
        return None
    rot = hf.model.rotary_emb
    if "full_attention" in getattr(rot, "layer_types", ()):
        return _per_layer_type(rot, "full_attention")
    scaling = getattr(rot, "attention_scaling", 1.0)
    if getattr(rot, "rope_type", "default") != "longrope":
        return Rope(rot.inv_freq, scaling)
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    original = hf.config.rope_parameters["original_max_position_embeddings"]
    short, _ = ROPE_INIT_FUNCTIONS["longrope"](hf.config, "cpu")
    long, _ = ROPE_INIT_FUNCTIONS["longrope"](hf.config, "cpu", seq_len=original + 1)
    return Rope(short, scaling, long, original)
