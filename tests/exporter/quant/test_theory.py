"""Transform-coding math (exporter/bits.py) against closed forms and brute force."""
from __future__ import annotations

import itertools
import math

import pytest

from exporter.errors import UserError
from exporter.quant.theory import allocate_bits, quantized_mse, rate_distortion_bound, water_level


def test_equal_variances_follow_the_closed_form():
    # n components of variance s at R bits per vector: D = n s 2^(-2R/n)
    n, s = 8, 3.0
    for R in (1.0, 8.0, 20.0):
        assert rate_distortion_bound([s] * n, R) == pytest.approx(n * s * 2 ** (-2 * R / n), rel=1e-9)
    assert rate_distortion_bound([s] * n, 0) == n * s


def test_water_filling_leaves_weak_components_alone():
    lam = [16.0, 4.0, 1.0, 0.01]
    theta = water_level(lam, 2.0)
    rates = [max(0.0, 0.5 * math.log2(x / theta)) for x in lam]
    assert sum(rates) == pytest.approx(2.0, rel=1e-9)
    assert rates[3] == 0.0 and rates[0] > rates[1] > rates[2] >= 0
    D = rate_distortion_bound(lam, 2.0)
    assert D == pytest.approx(sum(min(theta, x) for x in lam))
    assert rate_distortion_bound(lam, 3.0) < D < rate_distortion_bound(lam, 1.0)   # more bits, less error


def test_greedy_bits_equal_brute_force():
    lam = [9.0, 5.0, 2.0, 0.7, 0.1]
    for total in range(0, 12):
        got = allocate_bits(lam, total, max_bits=4)
        assert sum(got) <= total and max(got) <= 4
        cost = lambda bs: sum(quantized_mse(x, b) for x, b in zip(lam, bs))
        best = min(cost(bs) for bs in itertools.product(range(5), repeat=len(lam)) if sum(bs) <= total)
        assert cost(got) == pytest.approx(best)


def test_integer_bits_never_beat_the_bound_model():
    # the allocation's error model (l 4^-b) lies above the Gaussian bound at the same total bits
    lam = [10.0, 3.0, 1.0, 0.3]
    for total in (2, 5, 9):
        got = allocate_bits(lam, total)
        assert sum(quantized_mse(x, b) for x, b in zip(lam, got)) >= rate_distortion_bound(lam, total) - 1e-12


def test_bad_input_is_refused():
    with pytest.raises(UserError, match="eigenvalues"):
        rate_distortion_bound([], 1.0)
    with pytest.raises(UserError, match="eigenvalues"):
        allocate_bits([1.0, -1.0], 3)
    with pytest.raises(UserError, match="bits"):
        water_level([1.0], -1)
    assert allocate_bits([0.0, 0.0], 5) == [0, 0]
    assert rate_distortion_bound([0.0, 0.0], 3.0) == 0.0


def test_simulated_klt_code_keeps_the_sink_drops_unfunded_components_and_counts_its_bytes():
    import torch
    from benchmarks.klt_quant import KLTCode, spectrum
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(8, 8, generator=g, dtype=torch.float64) * torch.tensor([4.0, 2, 1, 1, .5, .1, .01, .001])
    x = (torch.randn(1, 70, 8, generator=g, dtype=torch.float64) @ mix.T).float()     # (B, T, C)
    cov = torch.cov(x[0].double().T)
    spec, mean = spectrum(cov), x[0].double().mean(0)
    fine, coarse = KLTCode(spec, mean, 8.0), KLTCode(spec, mean, 1.0)
    assert sum(fine.bits) == 64 and sum(coarse.bits) == 8
    yf, yc = fine(x), coarse(x)
    assert torch.equal(yf[:, 0], x[:, 0]) and torch.equal(yc[:, 0], x[:, 0])         # the sink is exact
    err = lambda y: (y - x)[:, 1:].pow(2).mean().item()
    assert err(yf) < 1e-3 * err(yc)
    assert coarse.bits[-1] == 0 and coarse.bytes_per_token() == 1 + sum(b > 0 for b in coarse.bits) * 4 / 32
