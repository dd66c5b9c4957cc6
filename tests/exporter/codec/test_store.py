"""Projector math and files: PCA on known spectra, the sink kept exact, save/load, refusals, determinism."""
from __future__ import annotations


import pytest
import torch

from exporter.codec.linear import Codec, Projectors
from exporter.codec.store import load_projectors, save_projectors
from exporter.errors import UserError


def _projectors(n_layers=2, dim=8, r=3):
    g = torch.Generator().manual_seed(0)
    q = lambda: torch.linalg.qr(torch.randn(dim, r, dtype=torch.float64, generator=g))[0]
    m = lambda: torch.randn(dim, dtype=torch.float64, generator=g)
    return Projectors("pre-rope", [Codec(q(), m()) for _ in range(n_layers)], [Codec(q(), m()), None],
                      {"model_fingerprint": "abc", "model": "toy"})


def test_round_trip_and_refusals(tmp_path):
    p = _projectors()
    stem = str(tmp_path / "proj")
    save_projectors(p, stem)
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


def test_files_without_encode_load_as_orthonormal_pca(tmp_path):
    """Projector files written before oblique codes existed hold only basis and mean: encode = basis^T."""
    import json
    from safetensors.torch import load_file, save_file
    from exporter.files import sha256_file
    p = _projectors()
    stem = str(tmp_path / "old")
    save_projectors(p, stem)
    tensors = {k: v for k, v in load_file(stem + ".safetensors").items() if not k.endswith(".encode")}
    save_file(tensors, stem + ".safetensors", metadata={"format": "spectral-kv-projectors/1"})
    meta = json.load(open(stem + ".json"))
    meta["tensors_sha256"] = sha256_file(stem + ".safetensors")
    json.dump(meta, open(stem + ".json", "w"))
    back = load_projectors(stem, "abc")
    assert torch.equal(back.keys[0].encode, p.keys[0].decode.T)
