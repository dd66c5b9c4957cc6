"""Same inputs and seed, same bytes, on any thread count: model.onnx, projectors.safetensors and export.json of
the default export, QUANT=spectral, METHOD=trained and both (trained through the quantizer), made by fresh processes with 1 and with 2 threads.

Each process has its own working directory, so neither reuses the other's calibration statistics: every float
reduction (covariances, probe KLs, scale fits, training steps) runs at both thread counts."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest

from tests.helpers import CALIB_TOKENS, REPO

SETTINGS = {
    "default": [],                                          # K=full, the int8 cache (options.DEFAULT_EXPORT)
    "spectral": ["--k", "full", "--quant", "spectral", "--quant-ratio", "4"],
    "trained": ["--k", "8", "--method", "trained", "--train-steps", "4"],
    "trained-spectral": ["--k", "full", "--method", "trained", "--quant", "spectral", "--quant-ratio", "4",
                         "--train-steps", "4"],
}
FILES = ("model.onnx", "projectors.safetensors", "export.json")


def export_bytes(model: str, args: list[str], threads: int, cwd: str) -> dict[str, str]:
    """sha256 of each of FILES that the export at this thread count wrote."""
    env = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    os.makedirs(cwd)
    done = subprocess.run([sys.executable, "-m", "exporter", "--model", model, *args, "--calib-tokens",
                           str(CALIB_TOKENS), "--window", "256", "--out", "out"],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = os.path.join(cwd, "out")
    return {name: hashlib.sha256(open(os.path.join(out, name), "rb").read()).hexdigest()
            for name in FILES if os.path.exists(os.path.join(out, name))}


@pytest.mark.parametrize("setting", SETTINGS)
def test_one_and_two_threads_write_the_same_bytes(setting, tiny_model_dir, tmp_path):
    model = tiny_model_dir("llama")
    one = export_bytes(model, SETTINGS[setting], 1, str(tmp_path / "t1"))
    two = export_bytes(model, SETTINGS[setting], 2, str(tmp_path / "t2"))
    assert set(one) == set(FILES), f"missing files: {set(FILES) - set(one)}"
    assert one == two
