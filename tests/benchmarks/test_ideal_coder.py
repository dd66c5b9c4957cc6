"""The real codes benchmarks/ideal_coder.py puts in place of the codec's quantizer. Lloyd-Max: started from the
codec's uniform levels it is the codec's quantizer; fitted, it never leaves more squared error on the latents it
was fitted on, and less on skewed ones. Outliers: the codec's codes, but the worst-coded share of tokens exact."""
import torch

from benchmarks.ideal_coder import LloydMaxChannel, OutlierChannel, lloyd_max, token_error
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


def test_outliers_keep_the_worst_coded_tokens_exact():
    quant = _quantizer([1, 2, 2, 3])
    c = torch.randn(1, 1, 4000, 4, generator=torch.Generator().manual_seed(2))
    coded = quant.decode(quant.encode(c))
    errors = token_error(quant, c, coded).flatten()
    threshold = float(torch.quantile(errors, 0.95))
    out = OutlierChannel(quant, threshold).encode(c)
    exact = (out == c).all(-1).flatten()
    assert torch.equal(exact, errors > threshold) and abs(exact.float().mean() - 0.05) < 0.01
    assert torch.equal(out[0, 0][~exact], coded[0, 0][~exact])
