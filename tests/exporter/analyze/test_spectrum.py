"""Spectrum math on matrices with known spectra, the robust statistics on data with planted outlier dimensions and
tokens, the perplexity engine of the analysis against the reference decoder, and the CLI end to end."""
from __future__ import annotations

import math

import pytest
import torch

from exporter.analyze import spectrum as S
from exporter.calib.capture import Covariance


F64 = torch.float64


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _rotation(n, seed=1):
    return torch.linalg.qr(torch.randn(n, n, dtype=F64, generator=_gen(seed)))[0]


def test_participation_ratio_of_known_spectra():
    assert S.participation_ratio(torch.ones(20, dtype=F64)) == pytest.approx(20)
    assert S.participation_ratio(torch.tensor([3.0, 0, 0, 0], dtype=F64)) == pytest.approx(1)
    assert S.participation_ratio(torch.tensor([4.0, 1, 1, 1, 1], dtype=F64)) == pytest.approx(64 / 20)
    eig = torch.tensor([9.0, 4.0, 1.0, 0.5, 0.1, 0.01], dtype=F64)
    cov = _rotation(6) @ torch.diag(eig) @ _rotation(6).T                  # a rotated known spectrum
    assert torch.allclose(S.eigenvalues(cov), eig, atol=1e-12)
    assert S.participation_ratio(S.eigenvalues(cov)) == pytest.approx(float(eig.sum() ** 2 / (eig ** 2).sum()))


def test_rank_for_a_fraction_of_variance():
    eig = torch.tensor([5.0, 3.0, 1.0, 1.0], dtype=F64)                    # cumulative 0.5, 0.8, 0.9, 1.0
    assert [S.rank_for_fraction(eig, f) for f in (0.5, 0.8, 0.9, 0.95, 1.0)] == [1, 2, 3, 4, 4]
    assert [S.rank_for_fraction(eig, f) for f in (0.49, 0.81)] == [1, 3]
    flat = torch.ones(20, dtype=F64)
    assert [S.rank_for_fraction(flat, f) for f in (0.90, 0.95, 0.99)] == [18, 19, 20]
    s = S.summarize(eig, top=2)
    assert (s["dims"], s["k90"], s["k95"], s["k99"], s["top"]) == (4, 3, 4, 4, [5.0, 3.0])
    assert S.fraction_kept(eig, 2) == pytest.approx(0.8)


def test_relative_error_is_the_pca_reconstruction_error_on_the_data():
    x = torch.randn(3000, 12, dtype=F64, generator=_gen(2)) @ torch.diag(torch.linspace(3, 0.1, 12, dtype=F64))
    xc = x - x.mean(0)
    cov = xc.T @ xc / len(x)
    evals, evecs = torch.linalg.eigh(cov)
    top = evecs[:, -4:]                                                      # (12, 4) top-4 principal axes
    err = (xc - xc @ top @ top.T).norm() / xc.norm()
    assert S.relative_error(S.eigenvalues(cov), 4) == pytest.approx(float(err), rel=1e-9)


def test_a_planted_massive_dimension_makes_raw_df_one_and_standardisation_sees_through_it():
    x = torch.randn(4000, 64, dtype=F64, generator=_gen(3))
    x[:, 7] *= 100.0
    cov = x.T @ x / len(x)
    raw = S.summarize(S.eigenvalues(cov))
    assert raw["df"] < 1.1 and raw["k95"] == 1
    std = S.summarize(S.eigenvalues(S.correlation(cov)))
    assert std["df"] > 55 and std["k95"] > 55                               # an isotropic cloud again
    assert S.outlier_dims(cov.diagonal()) == [7]
    assert S.outlier_dims(torch.ones(64, dtype=F64)) == []


def _windows(n_windows=4, T=200, dim=32, planted=((1, 17), (1, 90), (3, 5)), scale=40.0):
    g = _gen(4)
    wins = [torch.randn(T, dim, dtype=F64, generator=g) + 0.5 for _ in range(n_windows)]
    for w, row in planted:
        wins[w][row] *= scale
    return wins


def test_planted_high_norm_tokens_are_found_named_and_excluded():
    planted = ((1, 17), (1, 90), (3, 5))
    wins = _windows(planted=planted)
    acc = S.TapStatistics()
    for w in wins:
        acc.update(w)
    assert [(w, p) for w, p, _ in acc.flagged] == [(w, r + 1) for w, r in planted]   # position = row + 1
    assert all(ratio > 20 for _, _, ratio in acc.flagged)
    clean = Covariance()
    for i, w in enumerate(wins):
        keep = torch.ones(len(w), dtype=torch.bool)
        keep[[r for wi, r in planted if wi == i]] = False
        clean.update(w[keep])
    sink = torch.full((32,), 300.0, dtype=F64)
    v = acc.variants(sink, len(wins))
    assert torch.allclose(v["no_sinks"], clean.covariance(), atol=1e-10)
    assert torch.allclose(v["no_pos0"], acc.covariance())
    every = torch.cat([sink.expand(len(wins), -1)] + wins)                   # the sink of every window, then all
    centered = every - every.mean(0)
    assert torch.allclose(v["raw"], centered.T @ centered / len(every), atol=1e-8)
    df = {k: S.participation_ratio(S.eigenvalues(c)) for k, c in v.items()}
    assert df["raw"] < 1.5 < 20 < df["no_sinks"]                             # sink and outliers vs the rest
    assert torch.allclose(v["standardized"].diagonal(), torch.ones(32, dtype=F64))


def test_gaussian_data_has_no_outliers():
    acc = S.TapStatistics()
    for w in _windows(planted=()):
        acc.update(w)
    assert acc.n_flagged == 0 and acc.flagged == []
    v = acc.variants(None, 0)
    assert torch.equal(v["no_sinks"], v["no_pos0"]) and torch.equal(v["raw"], v["no_pos0"])
    assert S.outlier_dims(v["raw"].diagonal()) == []


def test_tap_statistics_survive_the_cache_round_trip():
    acc = S.TapStatistics()
    for w in _windows():
        acc.update(w)
    back = S.TapStatistics.from_state(acc.state())
    assert (back.n, back.outliers.n, back.n_flagged, back.windows) == (acc.n, acc.outliers.n, acc.n_flagged, 4)
    assert back.flagged == acc.flagged and torch.equal(back.max_abs, acc.max_abs)
    for k, c in acc.variants(None, 0).items():
        assert torch.equal(back.variants(None, 0)[k], c)


def test_per_head_blocks_and_constant_dims():
    cov = torch.diag(torch.arange(1.0, 9.0, dtype=F64))
    heads = S.blocks(cov, 2)
    assert [h.diagonal().tolist() for h in heads] == [[1, 2, 3, 4], [5, 6, 7, 8]]
    cov[3, 3] = 0.0                                                           # a dead dimension
    assert S.correlation(cov).shape == (7, 7)


def test_truncation_error_and_energy_of_a_known_weight_spectrum():
    sigma = torch.tensor([8.0, 4.0, 2.0, 1.0, 0.5], dtype=F64)
    u, v = _rotation(7)[:, :5], _rotation(5, seed=2)
    w = u @ torch.diag(sigma) @ v.T                                         # (7, 5) with these singular values
    assert torch.allclose(torch.linalg.svdvals(w), sigma, atol=1e-12)
    w2 = S.truncate(w, 2)
    assert float((w - w2).norm()) == pytest.approx(math.sqrt(4 + 1 + 0.25))
    e = S.energy_summary(sigma, probe_ranks=(2,))
    assert e["energy_at"]["2"] == pytest.approx(80 / 85.25)
    assert e["k95"] == 3 and e["df"] == pytest.approx(85.25 ** 2 / float((sigma ** 4).sum()))
    assert e["df_sigma"] == pytest.approx(15.5 ** 2 / 85.25)
