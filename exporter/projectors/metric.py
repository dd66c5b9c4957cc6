"""Output-aware projectors: PCA in a metric that says which errors the model feels.

Plain PCA minimises E||x - x^||^2, every direction alike. Attention feels a key error e only through scores,
q . e, and a value error only through the output projection, W_o e. Both are quadratic forms,
E[e^T M e] = tr(M E[e e^T]), so the best rank-r code in that metric is PCA after whitening by M = L L^T:

    y = L^T x,  U = top-r eigenvectors of L^T C L,  encode = U^T L^T,  decode = L^-T U

(the error left is the sum of the dropped eigenvalues of L^T C L; tests check it). Metrics:
  keys, post-RoPE   M_g = sum of E[q q^T] over the query heads of KV group g (rotated queries)
  keys, pre-RoPE    the same, averaged over the RoPE rotation between query and key positions, since the score
                    is q^T R(n-m) k and the cache stores k before rotation
  values            M_g = sum over the group's query heads of W_o,h^T W_o,h, and in place of the values'
                    covariance that of what attention makes of them: head h outputs sum_j a_j v^_j, so a value
                    code P errs by (I - P) sum_j a_j (v_j - mean) there; the sink (j = 0) is coded exactly, so
                    its term drops out. The covariance averages over query heads (one code serves them all).
Per KV group blocks sit on the diagonal: one shared code spans all groups, so M is (G*d, G*d).

Entry point: `output_metrics(hf, cfg, stats, key_mode)`, `weighted_basis`, `whitening`.
"""
from __future__ import annotations

from functools import cache

import torch

from ..calib.capture import key_tap
from ..calib.statistics import Statistics
from ..model.config import DecoderConfig
from ..model.rope import layer_rope, local_rope_of, rope_of
from ..model.weights import attention_weights
from .basis import principal_basis

FLOOR = 1e-6    # metric eigenvalues below FLOOR * largest are raised to it: the inverse must stay finite


def whitening(metric: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(L^T, L^-T) with L L^T = metric, small eigenvalues floored."""
    s, V = torch.linalg.eigh(metric)                                        # ascending
    s = s.clamp(min=FLOOR * s.max().item())
    return s.sqrt()[:, None] * V.T, V / s.sqrt()[None, :]                   # diag(sqrt s) V^T, V diag(1/sqrt s)


def weighted_basis(cov: torch.Tensor, metric: torch.Tensor, rank: int, sink: torch.Tensor | None = None):
    """(encode (r, dim), decode (dim, r)) minimising E[(x - x^)^T M (x - x^)] for x of covariance `cov`
    (centered); with a (centered) sink vector, the sink is coded exactly, as in principal_basis."""
    L_t, L_inv_t = whitening(metric)
    U = principal_basis(L_t @ cov @ L_t.T, rank, None if sink is None else L_t @ sink)   # (dim, r)
    return (U.T @ L_t).contiguous(), (L_inv_t @ U).contiguous()


def group_sums(per_head: torch.Tensor, kv_heads: int) -> list[torch.Tensor]:
    """per_head (H, d, d) -> G blocks: the sum over each KV group's query heads."""
    H = per_head.shape[0]
    return [per_head[g * (H // kv_heads):(g + 1) * (H // kv_heads)].sum(0) for g in range(kv_heads)]


def head_blocks(second_moment: torch.Tensor, heads: int) -> torch.Tensor:
    """The diagonal (d, d) blocks of an (H*d, H*d) matrix: one per head, (H, d, d)."""
    d = second_moment.shape[0] // heads
    return torch.stack([second_moment[h * d:(h + 1) * d, h * d:(h + 1) * d] for h in range(heads)])


def rope_matrices(inv_freq: torch.Tensor, offsets: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """R(delta) (n, d, d) with apply_rope(x, delta) == R(delta) @ x (halves convention, model/rope.apply_rope).
    A partial rotary (2 len(inv_freq) < dim) leaves the last numbers of the head as they are."""
    ang = offsets.double()[:, None] * inv_freq.double()[None, :]          # (n, r/2)
    c, s = ang.cos(), ang.sin()
    half = inv_freq.shape[0]
    dim = dim or 2 * half
    R = torch.eye(dim, dtype=torch.float64).repeat(len(offsets), 1, 1)    # (n, d, d)
    i = torch.arange(half)
    R[:, i, i] = c
    R[:, i + half, i + half] = c
    R[:, i, i + half] = -s                  # out_i = x_i cos - x_{i+half} sin
    R[:, i + half, i] = s                   # out_{i+half} = x_{i+half} cos + x_i sin
    return R


def rotation_averaged(moment: torch.Tensor, inv_freq: torch.Tensor, window: int) -> torch.Tensor:
    """E over causal (query, key) pairs of a window of R(n-m)^T M R(n-m): pairs at distance t number
    window - t, so offsets are weighted that way."""
    t = torch.arange(window)
    weights = (window - t).double()
    R = rope_matrices(inv_freq, -t, moment.shape[0])                        # key before query: n - m = -t
    avg = torch.einsum("n,nji,jk,nkl->il", weights, R, moment, R) / weights.sum()
    return (avg + avg.T) / 2


def key_metric(query_moment: torch.Tensor, cfg, inv_freq: torch.Tensor | None, window: int) -> torch.Tensor:
    """(G*d, G*d) metric for keys from the uncentered second moment of the queries the keys meet, whole
    (H*d, H*d) or its per-head blocks (H, d, d) (what calib/statistics keeps): rotated queries for post-RoPE
    codes (inv_freq None), un-rotated ones for pre-RoPE codes."""
    per_head = query_moment if query_moment.dim() == 3 else head_blocks(query_moment, cfg.num_heads)
    blocks = group_sums(per_head, cfg.num_kv_heads)
    if inv_freq is not None:
        blocks = [rotation_averaged(b, inv_freq, window) for b in blocks]
    return torch.block_diag(*blocks)


def attention_output_covariance(mix, mean: torch.Tensor) -> torch.Tensor:
    """E[z z^T] of z = u - w mean over (token, head) rows, from the uncentered second moment of [u, w]
    (calib/capture's 'value_mix' tap: u = sum_j>0 a_j v_j, w = sum_j>0 a_j)."""
    m = mix.covariance(centered=False)                                      # (dim+1, dim+1)
    uu, uw, ww = m[:-1, :-1], m[:-1, -1], m[-1, -1]
    return uu - torch.outer(uw, mean) - torch.outer(mean, uw) + ww * torch.outer(mean, mean)


def value_metric(w_o: torch.Tensor, cfg) -> torch.Tensor:
    """(G*d, G*d) metric for values: sum over each group's query heads of W_o,h^T W_o,h; w_o (D, H*d)."""
    H, d = cfg.num_heads, cfg.head_dim
    per_head = w_o.view(-1, H, d).permute(1, 2, 0)                          # (H, d, D)
    return torch.block_diag(*group_sums(per_head @ per_head.transpose(1, 2), cfg.num_kv_heads))


def output_metrics(hf, cfg: DecoderConfig, stats: Statistics, key_mode: str, weights_of=None):
    """metric(layer, 'key' | 'value') -> (covariance, metric), both (kv_dim, kv_dim): the error the output-aware
    code minimises is tr(metric (I - P) covariance (I - P)^T), what the layer's attention output feels.
    weights_of(i) -> layer i's attention weights (default: read from hf; a LayerStream's load one layer)."""
    weights_of = weights_of or (lambda i: attention_weights(hf, cfg, i))
    accs, calibration = stats.accumulators, stats.calibration
    pre = key_tap(cfg, key_mode) == "key_pre"
    ropes = (rope_of(hf), local_rope_of(hf)) if pre else None

    @cache      # searches (ranks/auto.py) fit many times from the same statistics
    def metric(i: int, kind: str):
        if kind == "value":
            cov = attention_output_covariance(accs[(i, "value_mix")], accs[(i, "value")].mean)
            return cov, value_metric(weights_of(i)["o"], cfg)
        queries = accs[(i, "query_pre" if pre else "query_post")].covariance(centered=False)
        rope = layer_rope(cfg, i, *ropes) if pre else None                  # NoPE layers: no rotation to average
        # the frequencies the calibration windows' keys were rotated with (LongRoPE: by the window's length)
        rotation = rope.frequencies_for_length(calibration["window"]) if rope is not None else None
        return accs[(i, key_tap(cfg, key_mode))].covariance(), key_metric(queries, cfg, rotation,
                                                                          calibration["window"])
    return metric


def output_whitening(metric):
    """(layer, kind) -> (W, W^-1) of an output-aware metric function: the coordinates training works in."""
    return lambda i, kind: whitening(metric(i, kind)[1])
