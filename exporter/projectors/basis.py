"""The principal basis of a covariance: its top eigenvectors, with the sink coded exactly and signs fixed.

    C = V diag(l) V^T, l descending  ->  basis = V[:, :r]   (the rank-r subspace of least squared error)

With the sink's (centered) vector s, the last column is the part of s the top r-1 directions miss, so s lies in
the span and is coded exactly at no extra rank. Signs are fixed (largest entry of each column positive) so the
same covariance always gives the same bytes.
"""
from __future__ import annotations

import torch


def principal_basis(cov: torch.Tensor, rank: int, sink: torch.Tensor | None = None) -> torch.Tensor:
    """Top eigenvectors of a covariance (dim, dim) as columns (dim, rank), signs fixed for determinism.

    With a sink vector (already centered), the last column is the part of the sink the top rank-1 directions
    miss, so the sink is coded exactly (its directions added to the basis, the rank unchanged)."""
    evals, evecs = torch.linalg.eigh(cov)                        # ascending
    order = torch.argsort(evals, descending=True, stable=True)
    evecs = evecs[:, order]
    signs = torch.sign(evecs.gather(0, evecs.abs().argmax(0, keepdim=True)))
    evecs = evecs * signs                                        # largest entry of each column positive
    if sink is None or rank >= cov.shape[0]:
        return evecs[:, :rank].contiguous()
    basis = evecs[:, :rank - 1]
    residual = sink - basis @ (basis.T @ sink)
    if residual.norm() <= 1e-9 * max(sink.norm().item(), 1e-30):
        return evecs[:, :rank].contiguous()                      # already inside the span
    return torch.cat([basis, (residual / residual.norm())[:, None]], dim=1).contiguous()
