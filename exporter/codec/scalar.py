"""The scalar quantizer every latent component goes through: uniform mid-rise, 2^b levels, step s.

    code = clamp(floor(c / s), -L/2, L/2 - 1) + L/2        L = 2^b
    c^   = (code - L/2 + 1/2) s

On a unit Gaussian the best step (Max, 1960) and the error it leaves are `gaussian_step(b)` and
`gaussian_mse(b)`, found numerically; a component of standard deviation sigma uses sigma x gaussian_step(b)
(static scales) unless a fitted scale replaces sigma (quant/scales.py). Token scales name a per-token,
per-group scale with one byte e: 2^(e/8 - 16) (`scale_table`).

Entry point: `gaussian_step(bits)`, `gaussian_mse(bits)`, `rounded(c, step, levels)`, `scale_table()`.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch

SCALE_TABLE_BITS = 8                 # token scales: one byte, 2^(e/8 - 16) for e = 0..255
SCALE_STEPS_PER_OCTAVE = 8


def _gaussian_mse(bits: int, step: float) -> float:
    """Mean squared error of the mid-rise quantizer with 2^bits levels and this step on a unit Gaussian."""
    x = np.linspace(-12, 12, 240_001)
    w = np.exp(-x * x / 2)
    w /= w.sum()
    half = 2 ** bits / 2
    k = np.clip(np.floor(x / step), -half, half - 1)
    return float((w * (x - (k + 0.5) * step) ** 2).sum())


@functools.cache
def gaussian_step(bits: int) -> float:
    """The step of the uniform mid-rise quantizer with 2^bits levels that minimises the mean squared error on
    a unit Gaussian (Max, 1960: 1.596 at 1 bit, 0.996 at 2, 0.586 at 3, 0.335 at 4); numerically."""
    lo, hi = 1e-4, 4.0                                      # golden section: the error is unimodal in the step
    g = (math.sqrt(5) - 1) / 2
    for _ in range(80):
        a, b = hi - g * (hi - lo), lo + g * (hi - lo)
        lo, hi = (lo, b) if _gaussian_mse(bits, a) < _gaussian_mse(bits, b) else (a, hi)
    return (lo + hi) / 2


@functools.cache
def gaussian_mse(bits: int) -> float:
    """The error that quantizer leaves of a unit variance: 1 at 0 bits (dropped), 0.363 at 1, 0.119 at 2,
    0.0374 at 3, 0.0115 at 4 (Max, 1960); about 4^-bits x 1.4 at high rates, and more at low ones."""
    return 1.0 if bits == 0 else _gaussian_mse(bits, gaussian_step(bits))


def rounded(c: torch.Tensor, step, levels) -> torch.Tensor:
    """c^ of the formula above: c rounded to the quantizer's level (steps and level counts broadcast with c)."""
    half = levels / 2
    return (torch.clamp(torch.floor(c / step), -half, half - 1) + 0.5) * step


def scale_table() -> torch.Tensor:
    """The 256 token scales a scale byte can name: 2^(e/8 - 16), e = 0..255 (float32)."""
    e = torch.arange(2 ** SCALE_TABLE_BITS, dtype=torch.float64)
    return torch.exp2(e / SCALE_STEPS_PER_OCTAVE - 2 ** SCALE_TABLE_BITS / 2 / SCALE_STEPS_PER_OCTAVE).float()


