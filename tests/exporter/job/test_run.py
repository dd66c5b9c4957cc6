"""Projector math and files: PCA on known spectra, the sink kept exact, save/load, refusals, determinism."""
from __future__ import annotations

import hashlib
import os

import pytest

from exporter.errors import UserError


def test_projectors_from_another_model_are_refused_at_export(tiny_export, tmp_path):
    from exporter.options import ExportOptions
    from exporter.job.run import run_export
    from tests.helpers import CALIB_TOKENS
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
    from exporter.options import ExportOptions
    from exporter.job.run import run_export
    digests = []
    for i in range(2):
        out = run_export(ExportOptions(model=tiny_model_dir("llama"), k="8", calib_tokens=4096, window=256,
                                       out=str(tmp_path / f"e{i}"), build_dir=str(tmp_path)))
        digests.append([hashlib.sha256(open(os.path.join(out, f), "rb").read()).hexdigest()
                        for f in ("model.onnx", "projectors.safetensors")])
    assert digests[0] == digests[1]
