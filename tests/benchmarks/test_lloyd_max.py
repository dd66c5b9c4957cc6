"""The Lloyd-Max stand-in of benchmarks/ideal_coder.py: started from the codec's uniform levels it is the codec's
quantizer; fitted, it never leaves more squared error on the latents it was fitted on, and less on skewed ones."""
import torch

from benchmarks.ideal_coder import LloydMaxChannel, lloyd_max
from exporter.codec.quantizer import LatentQuantizer


def _quantizer(bits):
    return LatentQuantizer(bits, [1.0] * len(bits))


def test_unfitted_levels_are_the_codecs_quantizer():
    quant = _quantizer([1, 2, 3, 4])
    x = torch.randn(4096, 4, generator=torch.Generator().manual_seed(0)) * 1.3
    thresholds, levels, fraction = lloyd_max(quant, x, iterations=0)
    c = x[None, None]                                                   # (1, 1, N, r)
    assert torch.equal(LloydMaxChannel(quant, thresholds, levels).encode(c), quant.decode(quant.encode(c)))
    assert fraction == 1.0


def test_fitted_levels_lose_less_on_skewed_latents():
    g = torch.Generator().manual_seed(1)
    skewed = -torch.log(torch.rand(8192, 3, generator=g)) - 1.0          # exponential: mean 0, long right tail
    quant = _quantizer([1, 2, 3])
    thresholds, levels, fraction = lloyd_max(quant, skewed)
    assert fraction < 0.9
    again = lloyd_max(quant, skewed)
    assert torch.equal(again[1], levels) and torch.equal(again[0], thresholds)
    gaussian = torch.randn(8192, 3, generator=g)
    assert lloyd_max(quant, gaussian)[2] <= 1.0
    # the fitted channel rounds every latent to one of its component's 2^b levels, in order
    out = LloydMaxChannel(quant, thresholds, levels).encode(skewed[None, None])[0, 0]
    for j, b in enumerate([1, 2, 3]):
        assert set(out[:, j].unique().tolist()) <= set(levels[j, :2 ** b].tolist())
        assert torch.all(levels[j, 1:2 ** b] >= levels[j, :2 ** b - 1])
