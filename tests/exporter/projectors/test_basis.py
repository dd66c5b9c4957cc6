"""Projector math and files: PCA on known spectra, the sink kept exact, save/load, refusals, determinism."""
from __future__ import annotations


import torch

from exporter.projectors.basis import principal_basis


def test_principal_basis_finds_the_top_axes_of_a_known_spectrum():
    rot, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))
    eig = torch.tensor([9.0, 4.0, 1.0, 0.5, 0.1, 0.01], dtype=torch.float64)
    cov = rot @ torch.diag(eig) @ rot.T
    basis = principal_basis(cov, 2)
    assert basis.shape == (6, 2)
    assert torch.allclose(basis.T @ basis, torch.eye(2, dtype=torch.float64), atol=1e-12)
    # same subspace as the top two eigenvectors: the projector onto it is unique
    assert torch.allclose(basis @ basis.T, rot[:, :2] @ rot[:, :2].T, atol=1e-10)


def test_principal_basis_adds_the_sink_direction_and_keeps_the_rank():
    cov = torch.diag(torch.tensor([5.0, 3.0, 1.0, 0.1], dtype=torch.float64))
    sink = torch.tensor([0.2, 0.0, 0.0, 7.0], dtype=torch.float64)          # lives mostly off the top axes
    basis = principal_basis(cov, 2, sink)
    assert basis.shape == (4, 2)
    assert torch.allclose(basis.T @ basis, torch.eye(2, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(basis @ (basis.T @ sink), sink, atol=1e-12)        # the sink is coded exactly
    assert abs(basis[0, 0]) > 0.99                                           # the top PCA axis is kept


def test_principal_basis_is_deterministic_in_sign():
    cov = torch.diag(torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64))
    a, b = principal_basis(cov, 3), principal_basis(cov.clone(), 3)
    assert torch.equal(a, b)
    assert (a.max(0).values > 0).all()
