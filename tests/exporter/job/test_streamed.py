"""job/streamed.py with calibration: a model read one layer at a time fits the same statistics, projectors, bits
and sensitivity probes as the whole-model export, byte for byte, and its model.onnx computes the same logits and
cache codes; layer-wise parity (validate/layers.py) passes on it."""
from __future__ import annotations

import filecmp
import json
import os

import numpy as np
import pytest

from exporter.options import ExportOptions, QuantOptions
from graphs.metadata import load_metadata
from tests.helpers import CALIB_TOKENS, prompts
from validate.ort_model import OrtModel

SETTINGS = {
    "spectral 8x": dict(k="full", quant=QuantOptions("spectral", 8.0)),
    "output-aware K=8": dict(k="8", method="output-aware"),
    "spectral 4x + float window": dict(k="full", quant=QuantOptions("spectral", 4.0, float_window=6,
                                                                   window_context=256)),
}


def _export(model: str, root, stream: bool, **kw) -> str:
    """An export into a build directory of its own: nothing (statistics included) is shared between the two."""
    from exporter.job.run import run_export
    tag = "streamed" if stream else "whole"
    return run_export(ExportOptions(model=model, calib_tokens=CALIB_TOKENS, window=256, out=str(root / tag),
                                    build_dir=str(root / f"build-{tag}"), stream=stream, **kw))


@pytest.mark.parametrize("arch,setting", [("llama", "spectral 8x"), ("gpt2", "spectral 8x"),
                                          ("gemma3", "output-aware K=8"), ("qwen2", "spectral 4x + float window")])
def test_a_streamed_calibrated_export_is_the_whole_model_export(arch, setting, tiny_model_dir, tmp_path):
    from validate.layers import check_layers
    model = tiny_model_dir(arch)
    whole, streamed = (_export(model, tmp_path, stream, **SETTINGS[setting]) for stream in (False, True))
    calib = sorted(os.listdir(tmp_path / "build-whole" / "calib"))
    assert calib and calib == sorted(os.listdir(tmp_path / "build-streamed" / "calib"))
    for name in calib:                                           # the statistics, computed apart
        assert filecmp.cmp(tmp_path / "build-whole" / "calib" / name, tmp_path / "build-streamed" / "calib" / name,
                           shallow=False), name
    for name in ("projectors.safetensors", "projectors.json"):   # codes, bits, scales and probed exchange rates
        assert filecmp.cmp(os.path.join(whole, name), os.path.join(streamed, name), shallow=False), name
    if "quant" in SETTINGS[setting]:
        with open(os.path.join(streamed, "projectors.json")) as f:
            assert json.load(f)["quant"]["sensitivity"]        # the probes ran, layer by layer
    meta = load_metadata(streamed)
    assert meta.layout == load_metadata(whole).layout and "streamed" in meta.extra
    ours, theirs = OrtModel(streamed, meta), OrtModel(whole, load_metadata(whole))
    ids = np.array(prompts(meta.sink["token_id"], lengths=(30, 30))).astype(np.int64)    # (2, 31)
    feed = (ids, np.ones(ids.shape), np.arange(ids.shape[1])[None].repeat(2, 0))
    (a, past_a), (b, past_b) = ours(*feed, ours.empty_past(2)), theirs(*feed, theirs.empty_past(2))
    assert np.array_equal(a, b) and all(np.array_equal(p, q) for p, q in zip(past_a, past_b))
    results, end_to_end = check_layers(streamed, progress=False)
    assert all(r.passed for r in results) and end_to_end.passed
    assert (end_to_end.kl_cost is not None) == ("quant" in SETTINGS[setting])    # codes: held to the KL bound
