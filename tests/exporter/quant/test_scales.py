"""Quantized latents (exporter/quant.py, exporter/quantize.py): the quantizer's math, packing, bit allocation,
and ONNX Runtime against the PyTorch reference with the same quantizer on every architecture."""
from __future__ import annotations


import pytest
import torch

from exporter.codec.scalar import gaussian_mse


def test_scale_search_finds_the_gaussian_optimum_and_widens_for_heavy_tails():
    from exporter.quant.scales import scale_search
    g = torch.Generator().manual_seed(0)
    z = torch.randn(200_000, 1, generator=g) * 2.0                          # Gaussian, sigma 2
    errors, scales = scale_search(z, torch.tensor([2.0]), [1, 2, 4])
    for row, bits in enumerate((1, 2, 4)):
        assert scales[row, 0].item() == pytest.approx(2.0, rel=0.1)
        assert errors[row, 0].item() == pytest.approx(4.0 * gaussian_mse(bits), rel=0.05)
    laplace = torch.distributions.Laplace(0.0, 2 ** -0.5).sample((200_000, 1))   # unit variance, heavy tails
    _, scales = scale_search(laplace, torch.tensor([1.0]), [4])
    assert scales[0, 0].item() > 1.2                                         # a wider step clips less
