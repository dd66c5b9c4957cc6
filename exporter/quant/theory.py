"""Bits by the spectrum, in theory: transform coding of KL-transformed (PCA) keys and values.

After the per-layer KLT (PCA) the components are uncorrelated with variances l_i (the eigenvalues). For a
Gaussian source that is all the coder needs to know:

  the limit      reverse water-filling: at total distortion D, component i keeps d_i = min(theta, l_i) and
                 costs 0.5 log2(l_i / d_i) bits; no code of that rate does better in mean squared error
                 (Cover & Thomas, Elements of Information Theory, 10.3.3). `rate_distortion_bound`.
  the practice   integer bits per component for a byte budget: a uniform quantizer at b bits leaves about
                 l_i 4^-b (each bit quarters the error), so greedy marginal allocation — the next bit to the
                 component it helps most — is optimal for that model (the model is convex in b; tested
                 against brute force). `allocate_bits`.

Pure math on eigenvalue lists: no model, no torch.

Entry point: `rate_distortion_bound`, `water_level`, `allocate_bits`.
"""
from __future__ import annotations

import heapq
import math

from ..errors import UserError


def _check(eigenvalues) -> list[float]:
    lam = [float(x) for x in eigenvalues]
    if not lam or any(x < 0 or math.isnan(x) for x in lam):
        raise UserError("eigenvalues must be a non-empty list of variances >= 0")
    return lam


def water_level(eigenvalues, bits: float) -> float:
    """theta with sum_i max(0, 0.5 log2(l_i / theta)) == bits (bisection on log theta); bits per vector."""
    lam = [x for x in _check(eigenvalues) if x > 0]
    if bits < 0:
        raise UserError(f"bits must be >= 0, got {bits}")
    if not lam:
        return 0.0                                  # nothing varies: no error at any rate
    rate = lambda t: sum(max(0.0, 0.5 * math.log2(x / t)) for x in lam)
    hi = lo = max(lam)                              # rate(hi) == 0
    while rate(lo) < bits:                          # each quartering adds a bit per component: a lower bracket
        lo /= 4
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if rate(mid) > bits else (lo, mid)
    return math.sqrt(lo * hi)


def rate_distortion_bound(eigenvalues, bits: float) -> float:
    """The least mean squared error per vector of any code spending `bits` per vector on a Gaussian source
    with these component variances: sum_i min(theta, l_i) at the water level for that rate."""
    lam = _check(eigenvalues)
    if bits == 0:
        return sum(lam)
    theta = water_level(lam, bits)
    return sum(min(theta, x) for x in lam)


def quantized_mse(variance: float, bits: int) -> float:
    """The allocation's error model for one component: variance x 4^-bits (0 bits: dropped)."""
    return variance * 4.0 ** -bits


def allocate_bits(eigenvalues, total_bits: int, max_bits: int = 8) -> list[int]:
    """Integer bits per component, summing to at most total_bits, each at most max_bits, minimising
    sum_i quantized_mse(l_i, b_i): greedily, the next bit to the component whose error it cuts most."""
    lam = _check(eigenvalues)
    if total_bits < 0 or max_bits < 1:
        raise UserError(f"total_bits must be >= 0 and max_bits >= 1, got {total_bits}, {max_bits}")
    bits = [0] * len(lam)
    heap = [(-(quantized_mse(x, 0) - quantized_mse(x, 1)), i) for i, x in enumerate(lam)]   # stable: index ties
    heapq.heapify(heap)
    for _ in range(min(total_bits, max_bits * len(lam))):
        gain, i = heapq.heappop(heap)
        if gain == 0:
            break                                     # only zero-variance components left
        bits[i] += 1
        if bits[i] < max_bits:
            b = bits[i]
            heapq.heappush(heap, (-(quantized_mse(lam[i], b) - quantized_mse(lam[i], b + 1)), i))
    return bits
