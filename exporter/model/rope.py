"""Rotary position embedding (RoPE), HF's half-split convention: pairs (i, i + d/2) rotate by position x inv_freq_i.

    rotate(x, m) = x cos(m w) + rotate_half(x) sin(m w),   rotate_half([a, b]) = [-b, a]

`Rope` computes cos/sin in the graph from position ids (no max-length table baked into the model) and, for
onnxruntime's fused attention, the (positions, d/2) tables it takes.

Entry point: `Rope`, `apply_rope`.
"""
from __future__ import annotations

import torch
from torch import nn


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, nh, T, d); cos/sin (B, 1, T, d). HF Llama's convention (halves, not interleaved pairs)."""
    return x * cos + rotate_half(x) * sin


class Rope(nn.Module):
    """cos/sin tables computed in the graph from positions (no max-length table baked into the model)."""

    def __init__(self, inv_freq: torch.Tensor, scaling: float):
        super().__init__()
        self.register_buffer("inv_freq", inv_freq.float().clone())
        self.scaling = float(scaling)

    def tables(self, max_positions: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (max_positions, d/2) for positions 0..max_positions-1: the layout GroupQueryAttention takes.
        Computed in float32 exactly as forward() computes them, so both variants rotate by the same angles."""
        freqs = torch.arange(max_positions).float()[:, None] * self.inv_freq                # (P, d/2)
        return freqs.cos() * self.scaling, freqs.sin() * self.scaling

    def forward(self, positions: torch.Tensor):
        """positions (B, T) int64 -> cos, sin (B, 1, T, d)."""
        freqs = positions[..., None].float() * self.inv_freq                       # (B, T, d/2)
        emb = torch.cat((freqs, freqs), dim=-1)[:, None]                            # (B, 1, T, d)
        return emb.cos() * self.scaling, emb.sin() * self.scaling
