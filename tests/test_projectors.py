"""Projector math and files: PCA on known spectra, the sink kept exact, save/load, refusals, determinism."""
from __future__ import annotations

import hashlib
import os

import pytest
import torch

from exporter.errors import UserError
from exporter.projectors import Codec, Projectors, load_projectors, principal_basis


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


def _projectors(n_layers=2, dim=8, r=3):
    g = torch.Generator().manual_seed(0)
    q = lambda: torch.linalg.qr(torch.randn(dim, r, dtype=torch.float64, generator=g))[0]
    m = lambda: torch.randn(dim, dtype=torch.float64, generator=g)
    return Projectors("pre-rope", [Codec(q(), m()) for _ in range(n_layers)], [Codec(q(), m()), None],
                      {"model_fingerprint": "abc", "model": "toy"})


def test_round_trip_and_refusals(tmp_path):
    p = _projectors()
    stem = str(tmp_path / "proj")
    p.save(stem)
    back = load_projectors(stem, "abc")
    assert back.key_mode == "pre-rope" and back.ranks() == {"key": [3, 3], "value": [3, None]}
    for a, b in zip(p.keys + p.values, back.keys + back.values):
        assert (a is None and b is None) or all(torch.equal(getattr(a, f), getattr(b, f))
                                                for f in ("decode", "mean", "encode"))
    with pytest.raises(UserError, match="another model"):
        load_projectors(stem, "some-other-fingerprint")
    data = bytearray(open(stem + ".safetensors", "rb").read())
    data[-1] ^= 0xFF
    open(stem + ".safetensors", "wb").write(bytes(data))
    with pytest.raises(UserError, match="corrupt"):
        load_projectors(stem, "abc")
    with pytest.raises(UserError, match="missing projector file"):
        load_projectors(str(tmp_path / "nothing"))


def test_projectors_from_another_model_are_refused_at_export(tiny_export, tmp_path):
    from exporter.pipeline import ExportOptions, run_export
    from tests.conftest import CALIB_TOKENS
    llama = tiny_export("llama", 8, "pre-rope")
    other = tiny_export("qwen2", "full")
    from graphs.metadata import load_metadata
    with pytest.raises(UserError, match="another model"):
        run_export(ExportOptions(model=load_metadata(other).model["source"], k="8",
                                 projectors=os.path.join(llama, "projectors"), calib_tokens=CALIB_TOKENS,
                                 out=str(tmp_path / "x"), build_dir=str(tmp_path)))
    assert not os.path.exists(tmp_path / "x")


def test_export_is_deterministic(tiny_model_dir, tmp_path):
    """Same inputs and seed: byte-identical ONNX and projector files."""
    from exporter.pipeline import ExportOptions, run_export
    digests = []
    for i in range(2):
        out = run_export(ExportOptions(model=tiny_model_dir("llama"), k="8", calib_tokens=4096, window=256,
                                       out=str(tmp_path / f"e{i}"), build_dir=str(tmp_path)))
        digests.append([hashlib.sha256(open(os.path.join(out, f), "rb").read()).hexdigest()
                        for f in ("model.onnx", "projectors.safetensors")])
    assert digests[0] == digests[1]


def test_files_without_encode_load_as_orthonormal_pca(tmp_path):
    """Projector files written before oblique codes existed hold only basis and mean: encode = basis^T."""
    import json
    from safetensors.torch import load_file, save_file
    from exporter.projectors import sha256_file
    p = _projectors()
    stem = str(tmp_path / "old")
    p.save(stem)
    tensors = {k: v for k, v in load_file(stem + ".safetensors").items() if not k.endswith(".encode")}
    save_file(tensors, stem + ".safetensors", metadata={"format": "spectral-kv-projectors/1"})
    meta = json.load(open(stem + ".json"))
    meta["tensors_sha256"] = sha256_file(stem + ".safetensors")
    json.dump(meta, open(stem + ".json", "w"))
    back = load_projectors(stem, "abc")
    assert torch.equal(back.keys[0].encode, p.keys[0].decode.T)
