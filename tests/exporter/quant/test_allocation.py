"""Quantized latents (exporter/quant.py, exporter/quantize.py): the quantizer's math, packing, bit allocation,
and ONNX Runtime against the PyTorch reference with the same quantizer on every architecture."""
from __future__ import annotations

import itertools

import pytest

from exporter.errors import UserError
from exporter.quant.allocation import CodedTensor, distortion, spectral_bits, uniform_bits


def _tensors(weights_per_tensor, scales="static"):
    return [CodedTensor.gaussian(list(w), scales) for w in weights_per_tensor]


def test_spectral_bits_fill_the_budget_by_weight():
    weights = [100.0, 10.0, 1.0, 0.01, 50.0, 5.0, 0.5, 0.0]
    one = _tensors([weights[:4]])
    spectral_bits(one, target=2, group=64)                 # one tensor: the least predicted error in 16 bits
    best = min((b for b in itertools.product(range(9), repeat=4) if sum(b) <= 16),
               key=lambda b: sum(distortion(w, x) for w, x in zip(weights, b)))
    assert tuple(one[0].bits) == best
    two = _tensors([weights[:4], weights[4:]])
    spectral_bits(two, target=3, group=64)                 # two: each rounds up to whole bytes
    assert sum(t.nbytes(64) for t in two) <= 3 and sum(map(sum, (t.bits for t in two))) >= 24 - 7
    assert two[1].bits[3] == 0                             # zero variance: no bits


def test_uniform_bits_are_equal_up_to_one_extra():
    tensors = _tensors([[3.0] * 10, [1.0] * 6], "token")
    uniform_bits(tensors, target=8, group=64)
    bits = tensors[0].bits + tensors[1].bits
    assert sum(t.nbytes(64) for t in tensors) <= 8
    assert max(bits) - min(bits) <= 1 and min(bits) >= 2
    assert tensors[0].bits[0] >= tensors[1].bits[0]       # extras go to the heavier components first
    with pytest.raises(UserError, match="lower K or QUANT_RATIO"):
        uniform_bits(_tensors([[1.0] * 64]), target=4, group=64)
