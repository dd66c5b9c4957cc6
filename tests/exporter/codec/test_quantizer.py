"""Quantized latents (exporter/quant.py, exporter/quantize.py): the quantizer's math, packing, bit allocation,
and ONNX Runtime against the PyTorch reference with the same quantizer on every architecture."""
from __future__ import annotations

import math
import random

import pytest
import torch

from exporter.codec.packing import Packing, packed_bytes, planes
from exporter.codec.quantizer import LatentQuantizer
from exporter.codec.scalar import gaussian_mse, gaussian_step


def test_gaussian_steps_match_max_1960():
    """Max (1960), optimum uniform quantizer steps and their errors for a unit Gaussian, 2..256 levels."""
    for bits, step in zip(range(1, 9), (1.596, 0.9957, 0.5860, 0.3352, 0.1881, 0.1041, 0.0569, 0.0308)):
        assert gaussian_step(bits) == pytest.approx(step, rel=2e-3)
    for bits, mse in zip(range(1, 5), (0.3634, 0.1188, 0.03744, 0.01154)):
        assert gaussian_mse(bits) == pytest.approx(mse, rel=3e-3)
    assert gaussian_mse(0) == 1.0


def test_planes_are_the_binary_digits():
    assert planes(7) == [(0, 1), (1, 2), (3, 4)]
    assert planes(8) == [(0, 8)] and planes(5) == [(0, 1), (1, 4)]
    assert all(sum(w for _, w in planes(b)) == b for b in range(1, 9))


def test_packing_is_tight_and_counted_alike():
    rng = random.Random(0)
    for _ in range(500):
        widths = [rng.randint(1, 8) for _ in range(rng.randint(1, 60))]
        n = Packing(widths).nbytes
        assert n == packed_bytes(widths) == math.ceil(sum(widths) / 8)


@pytest.mark.parametrize("scales", ["static", "token"])
def test_codes_round_trip_through_bytes(scales):
    """decode(encode(c)) is the mid-rise quantizer's output, computed here directly from its definition."""
    g = torch.Generator().manual_seed(0)
    bits = [8, 7, 5, 3, 2, 1, 1, 4, 6] * 9
    sigma = (torch.rand(len(bits), generator=g) + 0.5).tolist()
    q = LatentQuantizer(bits, sigma, scales, group=32)
    c = torch.randn(2, 1, 7, len(bits), generator=g) * torch.tensor(sigma) * 2       # some beyond static range
    codes = q.encode(c)
    assert codes.dtype == torch.uint8 and codes.shape == (2, 1, 7, q.nbytes)
    levels = torch.tensor([2.0 ** b for b in bits])
    if scales == "static":
        step = torch.tensor([gaussian_step(b) for b in bits]) * torch.tensor(sigma)
    else:
        u = (c / torch.tensor(sigma)).abs()
        m = torch.stack([u[..., j:j + 32].amax(-1) for j in range(0, len(bits), 32)], -1)   # (2, 1, 7, 3)
        s = q.table[torch.searchsorted(q.table, m.contiguous())]                           # smallest >= m
        assert (s >= m).all()
        step = 2 * s[..., torch.arange(len(bits)) // 32] * torch.tensor(sigma) / levels
    k = torch.clamp(torch.floor(c / step), -levels / 2, levels / 2 - 1)
    torch.testing.assert_close(q.decode(codes), (k + 0.5) * step, rtol=1e-6, atol=1e-6)
    if scales == "token":       # nothing clipped: every error within half a step
        assert ((q.decode(codes) - c).abs() <= step / 2 * (1 + 1e-5)).all()


def test_sink_slot_gets_its_exact_latent():
    sink = torch.tensor([50.0, -40.0, 3.0])
    q = LatentQuantizer([2, 2, 2], [1.0, 1.0, 1.0], "static", sink=sink)
    c = torch.zeros(1, 1, 4, 3)
    c[0, 0, 1] = sink                                      # the sink, left-padded by one slot
    slots = torch.tensor([[False, True, False, False]])
    out = q.decode(q.encode(c), slots)
    assert torch.equal(out[0, 0, 1], sink)
    assert out[0, 0, 0].abs().max() < 1                    # others quantized as usual
