"""Per-layer ranks (exporter/ranks.py) and K=auto (exporter/auto.py)."""
from __future__ import annotations

import itertools
import json
import os

import pytest
import torch

from exporter.auto import AutoOptions, parse_percent
from exporter.errors import UserError
from exporter.ranks import allocate, residual_curve


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


def test_auto_budget_export_has_per_layer_ranks_and_passes_parity(tiny_export):
    import numpy as np
    from tests.conftest import load_ref
    from tests.test_parity import prompts
    from validate.ort_model import OrtModel
    from validate.parity import check_parity
    out = tiny_export("llama", "auto", auto=AutoOptions(budget_bytes=40 * 4, probe_tokens=256, heldout_tokens=2048))
    _, _, ref, meta = load_ref(out)
    dims = [r or 32 for r in meta.ranks["key"] + meta.ranks["value"]]
    assert sum(dims) <= 40 and all(d % 8 == 0 for d in dims)
    assert meta.kv_bytes_per_token == 4 * sum(dims)
    ort = OrtModel(out, meta)
    result = check_parity(ref, ort, prompts(meta.sink["token_id"]), meta.pad_token_id)
    assert result.passed, result.to_json()
    ids = np.array([prompts(meta.sink["token_id"], (20,))[0]], np.int64)
    T = ids.shape[1]
    _, present = ort(ids, np.ones_like(ids), np.arange(T)[None], ort.empty_past(1))
    assert sum(p.nbytes for p in present) == T * meta.kv_bytes_per_token         # what the graph returns
    info = json.load(open(os.path.join(out, "projectors.json")))["auto"]
    assert info["choice"]["dims"] == sum(dims) and info["uniform_pca_reference"] is not None


def test_auto_quality_budget_is_met_on_heldout_with_no_more_dims_than_uniform_pca(tiny_export):
    out = tiny_export("llama", "auto", auto=AutoOptions(max_ppl_increase=5.0, probe_tokens=256,
                                                        heldout_tokens=4096))
    info = json.load(open(os.path.join(out, "projectors.json")))["auto"]
    assert info["choice"]["ppl_increase"] <= info["choice"]["ppl_bound"] <= 5.0
    ref = info["uniform_pca_reference"]
    if ref is not None:
        assert info["choice"]["dims"] <= ref["dims"]


def test_margin_adds_standard_errors_of_the_per_window_increase():
    import math
    from exporter.auto import increase_with_margin
    base = [(100.0, 50), (200.0, 100), (150.0, 50)]
    coded = [(101.0, 50), (206.0, 100), (151.0, 50)]            # per token +0.02, +0.06, +0.02
    inc, bound = increase_with_margin(base, coded, 0.0)
    assert inc == bound == pytest.approx(100 * math.expm1(8.0 / 200))      # token-weighted, not window-weighted
    d = [0.02, 0.06, 0.02]
    se = (sum((x - sum(d) / 3) ** 2 for x in d) / 2 / 3) ** 0.5
    assert increase_with_margin(base, coded, 2.0)[1] == pytest.approx(100 * math.expm1(0.04 + 2 * se))


def test_heldout_windows_are_spread_over_the_file_after_the_calibration_tokens(tmp_path):
    from exporter.auto import spread_windows

    class Tok:   # one token per word
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [int(w) for w in text.split()]}
    f = tmp_path / "t.txt"
    f.write_text(" ".join(str(i) for i in range(10 * 2048 + 5)))
    ws = spread_windows(Tok(), str(f), 2048, 3 * 2048, sink=7)
    starts = [w[1] for w in ws]
    assert [w[0] for w in ws] == [7] * 3 and all(len(w) == 2049 for w in ws)
    assert starts == [2048, 5 * 2048, 9 * 2048]                 # first after calibration, last full window
    with pytest.raises(UserError, match="too short"):
        spread_windows(Tok(), str(f), 2048, 10 * 2048, sink=7)


def test_auto_and_training_fit_a_model_with_few_positions(tiny_export):
    """Tiny GPT-2 has 512 learned positions: held-out windows of 2048 and training windows of 512 plus the sink
    must shrink to fit rather than index past the position table."""
    from exporter.train import TrainOptions
    out = tiny_export("gpt2", "auto", auto=AutoOptions(budget_bytes=100 * 4, probe_tokens=256, heldout_tokens=2048))
    info = json.load(open(os.path.join(out, "projectors.json")))["auto"]
    assert info["choice"]["dims"] <= 100
    out = tiny_export("gpt2", 16, method="trained", train=TrainOptions(max_steps=2, eval_every=2))
    assert json.load(open(os.path.join(out, "projectors.json")))["training"]["window"] == 511
