"""Per-layer ranks (exporter/ranks.py) and K=auto (exporter/auto.py)."""
from __future__ import annotations

import itertools

import pytest
import torch

from exporter.errors import UserError
from exporter.options import AutoOptions, parse_percent
from exporter.ranks.allocate import allocate, residual_curve


def test_residual_curve_is_the_dropped_eigenvalues():
    ev = torch.tensor([5.0, 3.0, 1.0, 0.5], dtype=torch.float64)
    q = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))[0]
    curve = residual_curve(q @ torch.diag(ev) @ q.T, None)
    assert torch.allclose(curve, torch.tensor([9.5, 4.5, 1.5, 0.5, 0.0], dtype=torch.float64))


def _curves(n_layers: int, dim: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i in range(n_layers):
        for k in ("key", "value"):
            ev = torch.rand(dim, generator=g, dtype=torch.float64).sort(descending=True).values ** (1 + 3 * i)
            out[(i, k)] = torch.cat([ev.flip(0).cumsum(0).flip(0), torch.zeros(1, dtype=torch.float64)])
    return out


def test_greedy_allocation_is_the_brute_force_optimum():
    dim, g = 8, 2
    curves = _curves(2, dim)
    sens = {t: 1.0 + t[0] for t in curves}
    for budget in (8, 12, 16, 22):
        got = allocate(curves, sens, budget, dim, g)
        best = None
        for ranks in itertools.product(range(g, dim + 1, g), repeat=4):
            if sum(ranks) <= budget:
                cost = sum(sens[t] * curves[t][r].item() for t, r in zip(sorted(curves), ranks))
                best = cost if best is None else min(best, cost)
        assert got.dims <= budget
        assert got.predicted_kl == pytest.approx(best)


def test_allocation_granularity_and_tied_ranks():
    curves = _curves(3, 32)
    sens = {t: 1.0 for t in curves}
    a = allocate(curves, sens, 100, 32, 8, tie=True)
    for i in range(3):
        assert a.ranks[(i, "key")] == a.ranks[(i, "value")]
    assert all(r is None or r % 8 == 0 for r in a.ranks.values()) and a.dims <= 100
    full = allocate(curves, sens, 6 * 32, 32, 8)
    assert all(r is None for r in full.ranks.values())                   # the whole budget: uncompressed


def test_bad_budgets_are_refused(tiny_export):
    with pytest.raises(UserError, match="percentage"):
        parse_percent("two")
    with pytest.raises(UserError, match="exactly one"):
        tiny_export("llama", "auto", auto=AutoOptions())
    with pytest.raises(UserError, match="below the least"):
        tiny_export("llama", "auto", auto=AutoOptions(budget_bytes=10))
