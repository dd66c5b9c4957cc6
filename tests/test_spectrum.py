"""Spectrum math on matrices with known spectra, the robust statistics on data with planted outlier dimensions and
tokens, the perplexity engine of the analysis against the reference decoder, and the CLI end to end."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

from exporter import spectrum as S
from exporter.calibrate import Covariance

F64 = torch.float64


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _rotation(n, seed=1):
    return torch.linalg.qr(torch.randn(n, n, dtype=F64, generator=_gen(seed)))[0]


# --- Df and k on known spectra ------------------------------------------------------------------------------

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


# --- robust statistics on planted outliers ------------------------------------------------------------------

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


# --- weights ------------------------------------------------------------------------------------------------

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


# --- the perplexity engine: HF with edited attention weights == the reference decoder ------------------------

def _projectors(cfg, rank, skip_layer=None, seed=5):
    from exporter.projectors import Codec, Projectors
    g = _gen(seed)
    make = lambda: Codec(torch.linalg.qr(torch.randn(cfg.kv_dim, rank, dtype=F64, generator=g))[0],
                         torch.randn(cfg.kv_dim, dtype=F64, generator=g) * 0.3)
    keys = [None if i == skip_layer else make() for i in range(cfg.num_layers)]
    values = [make() for _ in range(cfg.num_layers)]
    return Projectors("pre-rope" if cfg.has_rope else "post-rope", keys, values, {})


def _logits(lm, ids):
    out, _ = lm(ids, np.ones_like(ids), np.arange(ids.shape[1])[None], lm.empty_past(1))
    return out


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_hf_engine_equals_the_reference_decoder(arch, tiny_model_dir):
    from exporter import analyze as A
    from exporter.config import from_hf
    from exporter.fold import build_decoder
    from exporter.load import load
    hf = load(tiny_model_dir(arch)).model
    cfg = from_hf(hf.config)
    ids = np.array([np.random.default_rng(0).integers(3, 300, 60)], np.int64)
    hf_lm = A.TorchLM(A.hf_forward(hf))
    before = _logits(hf_lm, ids)
    proj = _projectors(cfg, 5, skip_layer=0)
    with A.edited_attention(hf, cfg, A.pca_edits(hf, cfg, proj)):
        edited = _logits(hf_lm, ids)
    ref = _logits(A.TorchLM(A.decoder_forward(build_decoder(hf, proj))), ids)
    assert np.abs(edited - ref).max() <= 1e-4 * np.abs(ref).max()
    assert np.abs(edited - before).max() > 1e-2 * np.abs(before).max()       # the edit did something
    ranks = [{"q": 3, "k": 2, "v": 4, "o": 5} for _ in range(cfg.num_layers)]
    edits = A.truncation_edits(hf, cfg, ranks)
    with A.edited_attention(hf, cfg, edits):
        truncated = _logits(hf_lm, ids)
        ref_t = _logits(A.TorchLM(A.decoder_forward(build_decoder(hf))), ids)
    assert np.abs(truncated - ref_t).max() <= 1e-4 * np.abs(ref_t).max()
    assert np.array_equal(_logits(hf_lm, ids), before)                       # every weight restored


# --- the CLI ------------------------------------------------------------------------------------------------

def test_analyze_cli_writes_json_report_and_plots(tiny_model_dir, tmp_path, capsys):
    from exporter import analyze as A
    out = str(tmp_path / "analysis")
    args = ["--model", tiny_model_dir("llama"), "--out", out, "--calib-tokens", "2048", "--window", "128",
            "--skip-quality", "--seq", "512,1024", "--batch", "1", "--no-cache"]
    assert A.main(args) == 0
    r = json.load(open(os.path.join(out, "spectrum.json")))
    assert set(r["activations"]) == set(A.TAPS) and len(r["activations"]["value"]) == 2
    layer = r["activations"]["key_pre"][1]
    assert set(layer["variants"]) == set(A.VARIANTS) and len(layer["heads"]["raw"]) == 2
    assert r["weights"][0]["q"]["shape"] == [64, 64]
    assert r["memory"]["bytes_per_token"]["original float32"] == 2 * 2 * 32 * 4
    for name in r["plots"]:
        assert open(os.path.join(out, name), "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert "## 1. Effective dimension" in open(os.path.join(out, "report.md")).read()
    assert "bytes per token" in capsys.readouterr().out
    assert not os.path.exists(out + ".tmp")
    assert A.main(["--model", tiny_model_dir("llama"), "--out", out, "--whole", "everything"]) == 2
    assert "error: --whole 'everything' is unknown" in capsys.readouterr().err
