"""Per-layer, per-tensor ranks under a budget of cache dims: spend dims where they buy the most quality.

Model of the loss: compressing tensor t (a layer's keys or values) to rank r costs about s_t * e_t(r), where
e_t(r) is the error the output-aware code leaves (the sum of the dropped eigenvalues of the whitened
covariance, projectors/metric.py) and s_t converts that error into KL of the next-token distribution. s_t comes from
  'measured'  one probe per tensor: KL on held-out text with only t compressed, at half its dims
  'metric'    s_t = 1 / e_t(0): every tensor's relative error counts alike (free, no probes)
The losses add up across tensors (to first order), and each e_t is convex in r (eigenvalues sorted), so greedy
allocation by loss saved per dim is optimal for the model. Ranks move in steps of `granularity` (ORT's fused
GroupQueryAttention needs sizes that are multiples of 8); `tie` keeps a layer's key and value ranks equal.

Entry points: `residual_curve`, `allocate`.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass

import torch

from ..projectors.metric import whitening

KINDS = ("key", "value")


def residual_curve(cov: torch.Tensor, metric: torch.Tensor | None) -> torch.Tensor:
    """e(r) for r = 0..dim: the weighted error left by the best rank-r code, (dim+1,) float64."""
    if metric is not None:
        L_t, _ = whitening(metric)
        cov = L_t @ cov @ L_t.T
    ev = torch.linalg.eigvalsh(cov).flip(0).clamp(min=0)                   # descending
    tail = ev.flip(0).cumsum(0).flip(0)                                     # tail[r] = sum_{j >= r} ev_j
    return torch.cat([tail, torch.zeros(1, dtype=tail.dtype)])


@dataclass
class Allocation:
    ranks: dict                       # (layer, kind) -> rank, or None for uncompressed
    dims: int                         # cache dims per token, all layers
    predicted_kl: float

    def per_layer(self, kind: str, layers: int) -> list:
        return [self.ranks[(i, kind)] for i in range(layers)]


def allocate(curves: dict, sensitivity: dict, budget_dims: int, dim: int, granularity: int = 8,
             tie: bool = False) -> Allocation:
    """Greedy: start every tensor at `granularity` dims, then add granules where s * e falls most per dim,
    until the budget (total dims over tensors) is spent. curves/sensitivity: (layer, kind) -> e(r) / s."""
    units = sorted({(i,) if tie else (i, k) for (i, k) in curves})
    members = lambda u: [(u[0], k) for k in KINDS if (u[0], k) in curves] if tie else [u]
    rank = {t: granularity for t in curves}
    cost = lambda t, r: sensitivity[t] * curves[t][min(r, dim)].item()
    used = sum(rank.values())
    if used > budget_dims:
        raise ValueError(f"budget {budget_dims} dims is below the minimum {used}")

    def gain(u):
        ts = members(u)
        if rank[ts[0]] >= dim:
            return None
        step = min(granularity, dim - rank[ts[0]])
        saved = sum(cost(t, rank[t]) - cost(t, rank[t] + step) for t in ts)
        return -saved / (step * len(ts)), step

    heap = []
    for u in units:
        g = gain(u)
        if g is not None:
            heapq.heappush(heap, (g[0], u, g[1]))
    while heap:
        _, u, step = heapq.heappop(heap)
        ts = members(u)
        if used + step * len(ts) > budget_dims:
            continue                    # a cheaper unit (smaller step or untied) may still fit
        for t in ts:
            rank[t] += step
        used += step * len(ts)
        g = gain(u)
        if g is not None:
            heapq.heappush(heap, (g[0], u, g[1]))
    predicted = sum(cost(t, r) for t, r in rank.items())
    return Allocation({t: (None if r >= dim else r) for t, r in rank.items()}, used, predicted)
