"""Layer streaming (model/stream.py, calib/capture.capture_streamed): the statistics of a checkpoint read one
layer at a time are the whole-model capture's, bit for bit, on every family's quirks."""
from __future__ import annotations

import pytest
import torch

from exporter.calib.capture import capture, capture_streamed
from exporter.calib.statistics import kv_accumulators
from exporter.errors import UserError
from exporter.model.fold import build_decoder
from exporter.model.load import load
from exporter.model.stream import LayerStream


def _windows(n=3, length=70, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [[1] + torch.randint(3, 300, (length,), generator=g).tolist() for _ in range(n)]


@pytest.mark.parametrize("arch", ["llama", "qwen3", "phi3", "smollm3", "gemma3", "qwen2_window", "gpt2"])
def test_streamed_statistics_equal_the_whole_model_capture(arch, tiny_model_dir):
    path = tiny_model_dir(arch)
    stream = LayerStream(path)
    cfg = stream.cfg
    whole, streamed = kv_accumulators(cfg), kv_accumulators(cfg)
    sinks = capture(build_decoder(load(path).model), _windows(), whole, progress=False)
    streamed_sinks = capture_streamed(stream, _windows(), streamed, progress=False)
    assert sinks.keys() == streamed_sinks.keys() and all(torch.equal(sinks[k], streamed_sinks[k]) for k in sinks)
    for key in whole:
        a, b = whole[key], streamed[key]
        assert a.n == b.n and torch.equal(a.sum, b.sum) and torch.equal(a.outer, b.outer), key
    assert all(p.is_meta for p in stream.hf.parameters())          # every weight given back after its layer


def test_streaming_reads_safetensors_directories_only(tmp_path):
    with pytest.raises(UserError, match="local HF directory"):
        LayerStream(str(tmp_path / "nowhere"))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UserError):
        LayerStream(str(tmp_path))

