"""Output-aware projectors on synthetic data with a known optimum (exporter/whiten.py)."""
from __future__ import annotations

import torch

from exporter.model.rope import apply_rope
from exporter.projectors.basis import principal_basis
from exporter.projectors.metric import key_metric, rope_matrices, rotation_averaged, value_metric, weighted_basis


def _spd(n: int, seed: int, spread: float = 3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=g))[0]
    return q @ torch.diag(torch.logspace(0, -spread, n, dtype=torch.float64)) @ q.T


def weighted_error(cov, metric, encode, decode) -> float:
    """E[(x - x^)^T M (x - x^)] for centered x of covariance cov and x^ = decode @ encode @ x."""
    resid = torch.eye(cov.shape[0], dtype=torch.float64) - decode @ encode
    return torch.trace(metric @ resid @ cov @ resid.T).item()


def test_identity_metric_is_plain_pca():
    cov = _spd(8, 0)
    enc, dec = weighted_basis(cov, torch.eye(8, dtype=torch.float64), 3)
    basis = principal_basis(cov, 3)
    assert torch.allclose(dec @ enc, basis @ basis.T, atol=1e-10)


def test_weighted_basis_reaches_the_known_optimum_and_beats_pca_in_its_metric():
    cov, metric, r = _spd(10, 1), _spd(10, 2, spread=2.0), 4
    enc, dec = weighted_basis(cov, metric, r)
    s, V = torch.linalg.eigh(metric)
    L_t = s.sqrt()[:, None] * V.T
    optimum = torch.linalg.eigvalsh(L_t @ cov @ L_t.T)[:-r].sum().item()      # the dropped eigenvalues
    got = weighted_error(cov, metric, enc, dec)
    assert abs(got - optimum) <= 1e-9 * max(optimum, 1e-30)
    basis = principal_basis(cov, r)
    assert got < weighted_error(cov, metric, basis.T, basis)
    g = torch.Generator().manual_seed(3)
    for _ in range(200):        # no other rank-r linear code does better
        a, b = torch.randn(r, 10, dtype=torch.float64, generator=g), torch.randn(10, r, dtype=torch.float64, generator=g)
        a = enc + 0.05 * a
        b = dec + 0.05 * b
        assert weighted_error(cov, metric, a, b) >= got - 1e-12


def test_weighted_basis_codes_the_sink_exactly():
    cov, metric = _spd(6, 4), _spd(6, 5)
    sink = torch.arange(6, dtype=torch.float64) - 2.0
    enc, dec = weighted_basis(cov, metric, 2, sink)
    assert torch.allclose(dec @ (enc @ sink), sink, atol=1e-9)


def test_rope_matrices_match_apply_rope():
    d = 8
    inv_freq = 1.0 / (10000 ** (torch.arange(0, d, 2).double() / d))
    x = torch.randn(1, 1, 3, d, dtype=torch.float64)
    pos = torch.tensor([0, 5, 17])
    ang = pos.double()[:, None] * inv_freq
    emb = torch.cat((ang, ang), -1)[None, None]
    want = apply_rope(x, emb.cos(), emb.sin())
    R = rope_matrices(inv_freq, pos)                                        # (3, d, d)
    assert torch.allclose(torch.einsum("tij,tj->ti", R, x[0, 0]), want[0, 0], atol=1e-12)


def test_rotation_averaged_metric_is_the_expected_score_error():
    """For a pre-RoPE key error e, a query of second moment M meets it rotated by the pair's distance:
    the average over causal pairs of (q^T R(n-m) e)^2 must equal e^T M_avg e."""
    d, window = 8, 12
    inv_freq = 1.0 / (100 ** (torch.arange(0, d, 2).double() / d))
    moment, e = _spd(d, 6), torch.randn(d, dtype=torch.float64)
    total, count = 0.0, 0
    for m in range(window):                 # query position
        for n in range(m + 1):              # key position
            R = rope_matrices(inv_freq, torch.tensor([n - m]))[0]
            total += (e @ R.T @ moment @ R @ e).item()
            count += 1
    want = total / count
    assert abs(e @ rotation_averaged(moment, inv_freq, window) @ e - want) < 1e-9 * abs(want)


class _Cfg:
    num_heads, num_kv_heads, head_dim, hidden_size = 4, 2, 3, 5


def test_value_metric_is_the_output_error_of_every_query_head():
    cfg = _Cfg()
    w_o = torch.randn(cfg.hidden_size, cfg.num_heads * cfg.head_dim, dtype=torch.float64)
    e = torch.randn(cfg.num_kv_heads * cfg.head_dim, dtype=torch.float64)
    d = cfg.head_dim
    # head h reads KV group h // 2; the output error is the sum over heads of W_o,h e_g(h)
    want = sum((w_o[:, h * d:(h + 1) * d] @ e[(h // 2) * d:(h // 2 + 1) * d]).pow(2).sum() for h in range(4))
    assert torch.allclose(e @ value_metric(w_o, cfg) @ e, want)


def test_key_metric_sums_the_query_heads_of_each_group():
    cfg = _Cfg()
    q = torch.randn(50, cfg.num_heads * cfg.head_dim, dtype=torch.float64)
    e = torch.randn(cfg.num_kv_heads * cfg.head_dim, dtype=torch.float64)
    d = cfg.head_dim
    want = sum((q[:, h * d:(h + 1) * d] @ e[(h // 2) * d:(h // 2 + 1) * d]).pow(2).mean() for h in range(4))
    assert torch.allclose(e @ key_metric(q.T @ q / 50, cfg, None, 16) @ e, want)


def test_attention_output_covariance_from_the_mix_tap():
    """The tap keeps [u, w] per (token, head); the covariance must be that of z = u - w mean, computed directly."""
    from exporter.calib.capture import Covariance
    from exporter.projectors.metric import attention_output_covariance
    g = torch.Generator().manual_seed(7)
    probs = torch.softmax(torch.randn(2, 6, 9, generator=g, dtype=torch.float64), -1)    # (H, T, S)
    values = torch.randn(9, 4, generator=g, dtype=torch.float64)                        # (S, dim)
    mean = values[1:].mean(0)
    p = probs[..., 1:]                                                                   # the sink left out
    u, w = p @ values[1:], p.sum(-1, keepdim=True)                                       # (H, T, dim), (H, T, 1)
    acc = Covariance(heads=2)
    acc.update(torch.cat([u, w], -1).transpose(0, 1).reshape(6, -1))                     # (T, H*(dim+1))
    z = (u - w * mean).reshape(-1, 4)
    assert torch.allclose(attention_output_covariance(acc, mean), z.T @ z / z.shape[0])
    # and z is exactly what a value code errs by at the attention output, when the sink is coded exactly
    P = torch.linalg.qr(torch.randn(4, 2, generator=g, dtype=torch.float64))[0]
    P = P @ P.T
    coded = mean + (values - mean) @ P.T
    coded[0] = values[0]
    err = probs @ coded - probs @ values                                                 # (H, T, dim)
    assert torch.allclose(err, -(u - w * mean) @ (torch.eye(4, dtype=torch.float64) - P).T)
