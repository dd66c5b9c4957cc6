"""export/pieces.py and job/streamed.py: a model exported one layer at a time (STREAM=1) computes what the
whole-model export computes, with its weights in model.onnx.data; what it cannot take yet is refused."""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest

from exporter.errors import UserError
from exporter.options import AutoOptions
from graphs.metadata import load_metadata
from runtime import Generator
from tests.helpers import prompts
from validate.ort_model import OrtModel


@pytest.mark.parametrize("arch", ("llama", "gpt2", "qwen3", "gemma3"))
def test_a_streamed_export_computes_what_the_whole_model_export_computes(arch, tiny_export):
    streamed, whole = tiny_export(arch, "full", stream=True), tiny_export(arch, "full")
    meta, whole_meta = load_metadata(streamed), load_metadata(whole)
    assert meta.layout == whole_meta.layout and meta.model["fingerprint"] == whole_meta.model["fingerprint"]
    assert "streamed" in meta.extra
    model = onnx.load(os.path.join(streamed, "model.onnx"), load_external_data=False)
    big = [t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert big and all(t.external_data[0].value == "model.onnx.data" for t in big)
    ours, theirs = OrtModel(streamed, meta), OrtModel(whole, whole_meta)
    ids = np.array(prompts(meta.sink["token_id"], lengths=(20, 20))).astype(np.int64)         # (2, 21)
    T = 20                                                      # a prefill of 20 tokens, then one decode step
    a, past_a = ours(ids[:, :T], np.ones((2, T)), np.arange(T)[None].repeat(2, 0), ours.empty_past(2))
    b, past_b = theirs(ids[:, :T], np.ones((2, T)), np.arange(T)[None].repeat(2, 0), theirs.empty_past(2))
    assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max()
    a, _ = ours(ids[:, T:], np.ones((2, T + 1)), np.full((2, 1), T), past_a)
    b, _ = theirs(ids[:, T:], np.ones((2, T + 1)), np.full((2, 1), T), past_b)
    assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max()


def test_runtime_generates_the_same_tokens_from_a_streamed_export(tiny_export):
    streamed, whole = tiny_export("llama", "full", stream=True), tiny_export("llama", "full")
    batch = [p[1:] for p in prompts(load_metadata(whole).sink["token_id"])]
    tokens = [Generator(e, provider="cpu").generate(batch, max_new_tokens=10, stop_token_ids=[]).tokens
              for e in (streamed, whole)]
    assert tokens[0] == tokens[1]


def test_tied_embeddings_are_stored_once(tiny_export):
    """gpt2 ties its head to the embeddings: the embed and head pieces share one tensor in model.onnx.data."""
    streamed = tiny_export("gpt2", "full", stream=True)
    model = onnx.load(os.path.join(streamed, "model.onnx"), load_external_data=False)
    meta = load_metadata(streamed)
    tables = [t for t in model.graph.initializer if meta.model["vocab_size"] in t.dims]
    assert len(tables) == 1


@pytest.mark.parametrize("kw,match", [(dict(k="auto", auto=AutoOptions(budget_bytes=64)), "K=auto asked"),
                                      (dict(k="8", method="trained"), "METHOD=trained asked"),
                                      (dict(kv_dtype="int8", cache="shared-buffer"), "KV_DTYPE=int8"),
                                      (dict(cache="shared-buffer"), "CACHE=shared-buffer asked"),
                                      (dict(dtype="float16"), "DTYPE=float16 asked"),
                                      (dict(default_export=True), "the default export asked")])
def test_what_needs_the_whole_model_is_refused_when_streamed(kw, match, tiny_model_dir, tmp_path):
    from exporter.job.run import run_export
    from exporter.options import ExportOptions
    with pytest.raises(UserError, match=match):
        run_export(ExportOptions(**{"model": tiny_model_dir("llama"), "k": "full", "stream": True,
                                    "out": str(tmp_path / "x"), "build_dir": str(tmp_path), **kw}))
    assert not (tmp_path / "x").exists()


def test_big_checkpoints_stream_by_themselves(tiny_model_dir, monkeypatch):
    from exporter.job import streamed
    from exporter.model.stream import checkpoint_bytes
    from exporter.options import ExportOptions
    path = tiny_model_dir("llama")
    size = checkpoint_bytes(path)
    assert size > 0
    monkeypatch.setattr(streamed, "STREAM_ABOVE_BYTES", size - 1)
    assert streamed.streams(ExportOptions(model=path))
    assert not streamed.streams(ExportOptions(model=path, stream=False))
    monkeypatch.setattr(streamed, "STREAM_ABOVE_BYTES", size)
    assert not streamed.streams(ExportOptions(model=path))


@pytest.mark.parametrize("arch", ("llama", "gemma3"))
def test_layer_parity_and_the_end_to_end_check_pass_and_catch_a_damaged_layer(arch, tiny_export, tmp_path):
    """validate/layers.py: each layer's nodes against its PyTorch block, then the whole graph on a prompt; a
    weight of layer 1 changed in model.onnx.data fails layer 1 (and only it) and the end-to-end check."""
    import shutil
    from validate.layers import check_layers
    export = tiny_export(arch, "full", stream=True)
    results, end_to_end = check_layers(export, progress=False)
    assert [r.passed for r in results] == [True] * len(results) and end_to_end.passed
    assert end_to_end.logits <= 1e-4 and end_to_end.greedy and end_to_end.kl_cost is None
    damaged = str(tmp_path / "damaged")
    shutil.copytree(export, damaged)
    model = onnx.load(os.path.join(damaged, "model.onnx"), load_external_data=False)
    weight = next(t for t in model.graph.initializer if t.name.startswith("layer1/")
                  and t.data_location == onnx.TensorProto.EXTERNAL)
    offset = int(next(e.value for e in weight.external_data if e.key == "offset"))
    with open(os.path.join(damaged, "model.onnx.data"), "r+b") as f:
        f.seek(offset)
        values = np.frombuffer(f.read(64), np.float32) * 3 + 1
        f.seek(offset)
        f.write(values.astype(np.float32).tobytes())
    results, end_to_end = check_layers(damaged, progress=False)
    assert [r.passed for r in results] == [True, False] and end_to_end.logits > 1e-4 and not end_to_end.passed


def test_layer_parity_refuses_a_whole_model_export(tiny_export):
    from graphs.metadata import ExportError
    from validate.layers import check_layers
    with pytest.raises(ExportError, match="not exported layer by layer"):
        check_layers(tiny_export("llama", "full"), progress=False)
