"""The int8 cache onnxruntime's fused attention writes: its arithmetic, the rotation, the fitted steps."""
from __future__ import annotations

import torch

from exporter.codec.cache_quant import dequantize, fit_scales, quantize, rotation_matrix


def test_codes_follow_onnxruntime_arithmetic():
    scale = torch.tensor([1.0, 0.5])
    x = torch.tensor([[0.5, 0.75], [1.5, -1.25], [2.5, 70.0], [-300.0, -0.25]])
    codes = quantize(x, scale)
    assert codes.dtype == torch.int8
    assert codes.tolist() == [[0, 2], [2, -2], [2, 127], [-128, 0]]     # half to even, then saturated
    assert torch.equal(dequantize(codes, scale), codes.float() * scale)


def test_rotations_are_orthogonal_and_fixed():
    for d in (64, 48):                                     # a Hadamard matrix, and a seeded random one
        r = rotation_matrix(d)
        assert torch.allclose(r @ r.T, torch.eye(d, dtype=torch.float64), atol=1e-12)
        assert torch.equal(r, rotation_matrix(d))
    h = rotation_matrix(4)
    assert torch.allclose(h.abs(), torch.full((4, 4), 0.5, dtype=torch.float64))


def test_a_hadamard_rotation_spreads_an_outlier_dimension():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4096, 64, generator=g)
    x[:, 3] *= 30                                          # one massive dimension
    err = lambda z: (dequantize(quantize(z, fit_scales(z)), fit_scales(z)) - z).pow(2).mean().item()
    r = rotation_matrix(64).float()
    assert err(x @ r.T) < err(x)                           # equal error measured in the same (orthogonal) metric


def test_fitted_steps_clip_heavy_tails_for_a_finer_step():
    torch.manual_seed(0)
    x = torch.distributions.StudentT(2.0).sample((20000, 4))                 # heavy tails
    s = fit_scales(x)
    absmax = x.abs().amax(0) / 127
    assert (s < absmax).all()
    err = lambda step: (dequantize(quantize(x, step), step) - x).pow(2).mean()
    assert err(s) < err(absmax)
