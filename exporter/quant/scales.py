"""Each latent component's statistics for the quantizer: its scale and weight, and static steps fitted to samples.

    sigma_j = sqrt(encode_j^T C encode_j)       the component's standard deviation under the covariance C
    gain_j  = decode_j^T M decode_j             what a unit of squared error in it costs in the metric M

Keys and values are heavier-tailed than a Gaussian, so Max's Gaussian step clips them: `scale_search` tries step
multiples on calibration samples and keeps, per component and width, the one with the least squared error.

Entry points: `latent_statistics`, `scale_search`.
"""
from __future__ import annotations

import torch

from ..codec.linear import Codec
from ..codec.scalar import gaussian_step, rounded

SCALE_MULTIPLIERS = torch.logspace(-0.5, 3, 36, base=2, dtype=torch.float64)   # 0.71 .. 8 x the std


def latent_statistics(codec: Codec, cov: torch.Tensor, metric: torch.Tensor | None):
    """(sigma (r,), gain (r,)) of a codec's latents: their standard deviations under a covariance (dim, dim),
    and what a unit of squared error in each costs in the metric (decode_j^T M decode_j; M = I without one)."""
    var = torch.einsum("rd,de,re->r", codec.encode, cov, codec.encode).clamp_min(0)       # (r,)
    gain = (codec.decode * (metric @ codec.decode)).sum(0) if metric is not None else \
        codec.decode.pow(2).sum(0)                                                         # (r,)
    return var.sqrt(), gain


def scale_search(z: torch.Tensor, sigma: torch.Tensor, bits: list[int]):
    """For each bit width in `bits` and each component of the samples z (N, r): the least squared error of a
    static quantizer over step multiples gaussian_step(b) x sigma x SCALE_MULTIPLIERS, and the scale
    (sigma x the best multiplier) that gives it. Returns errors, scales, both (len(bits), r)."""
    errors, scales = [], []
    for b in bits:
        best = torch.full_like(sigma, float("inf"))
        scale = sigma.clone()
        for m in SCALE_MULTIPLIERS:
            step = gaussian_step(b) * sigma * m
            err = (rounded(z, step, 2.0 ** b) - z).pow(2).mean(0)                   # (r,)
            better = err < best
            best, scale = torch.where(better, err, best), torch.where(better, sigma * m, scale)
        errors.append(best)
        scales.append(scale)
    return torch.stack(errors), torch.stack(scales)
