"""A cache onnxruntime's fused attention quantizes and reads itself: int8 codes of rotated keys and values.

GroupQueryAttention (k_quant_type = v_quant_type = PER_CHANNEL, kv_cache_bit_width = 8) writes each new key and
value into its int8 cache and reads the codes back inside its kernel. Its arithmetic (MLAS qkv_quant):

    code = clamp(rint(x * (1/s)), -128, 127)        x^ = code * s        s: one static scale per (KV head, dim)

Static per-channel scales are crude where a few tokens are outliers: a channel's step must span its largest
value. So keys (after RoPE) and values are first rotated per KV head by an orthogonal R, x_rot = R x, which
spreads an outlier over all dims of its head (Hadamard; what it buys on SmolLM2: docs/runtime_speed.md,
`python -m benchmarks.kv_cache_quant`). Scores are unchanged, (R q) . (R k) = q . k, so the graph rotates
queries and keys after RoPE; for values R folds into v_proj and R^T into o_proj, free.

Entry points: `CacheQuant`, `rotation_matrix(d, kind)`, `quantize(x, scale)`, `dequantize(codes, scale)`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

ROTATIONS = ("hadamard", "none")


def code_range(bits: int = 8) -> tuple[int, int]:
    """The signed codes of `bits` bits: (-128, 127) for the op's int8 cache (4 bits: (-8, 7))."""
    return -2 ** (bits - 1), 2 ** (bits - 1) - 1


@dataclass
class CacheQuant:
    dtype: str                          # 'int8' (the cache element type onnxruntime's kernel reads)
    rotation: str                       # 'hadamard' | 'none': the rotation of each KV head's keys and values
    key_scales: list                    # per layer (G*d,) float32: the static step of each (KV head, dim)
    value_scales: list

    def rotation_matrix(self, d: int) -> torch.Tensor | None:
        return None if self.rotation == "none" else rotation_matrix(d, self.rotation)


def rotation_matrix(d: int, kind: str = "hadamard") -> torch.Tensor:
    """(d, d) float64 orthogonal: the normalised Sylvester-Hadamard matrix when d is a power of two, else a random
    orthogonal one from a fixed seed (QR of a Gaussian; the same bytes every time)."""
    if kind != "hadamard":
        raise ValueError(f"rotation {kind!r} is not one of {ROTATIONS}")
    if d & (d - 1) == 0:
        h = torch.ones(1, 1, dtype=torch.float64)
        while h.shape[0] < d:
            h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
        return h / math.sqrt(d)
    q, r = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    return q * torch.sign(torch.diagonal(r))[None, :]


def quantize(x: torch.Tensor, scale: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """x (..., C) float32 -> int8 codes with onnxruntime's arithmetic (reciprocal multiply, round half to even,
    saturate to `bits` bits)."""
    lo, hi = code_range(bits)
    return torch.clamp(torch.round(x * (1.0 / scale)), lo, hi).to(torch.int8)


def dequantize(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return codes.to(torch.float32) * scale


def fit_scales(x: torch.Tensor, bits: int = 8, multipliers: torch.Tensor | None = None) -> torch.Tensor:
    """Per channel of samples x (N, C), the scale among multiples of absmax / qmax with the least squared error
    after quantizing (a little clipping of the rarest values buys a finer step for all others); multipliers
    [1.0]: absmax alone."""
    x = x.float()
    amax = x.abs().amax(0).clamp_min(1e-8)                                           # (C,)
    multipliers = torch.linspace(0.3, 1.0, 36) if multipliers is None else multipliers
    best, scale = None, None
    for m in multipliers:
        s = amax * m / code_range(bits)[1]
        err = (dequantize(quantize(x, s, bits), s) - x).pow(2).mean(0)               # (C,)
        if best is None:
            best, scale = err, s
        else:
            better = err < best
            best, scale = torch.where(better, err, best), torch.where(better, s, scale)
    return scale
