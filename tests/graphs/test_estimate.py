"""The KV memory estimator (graphs/estimate.py): its per-layer and total figures are the bytes of the present.*
tensors an exported ONNX model returns, and it reproduces a model's true figures from its config."""
from __future__ import annotations

import numpy as np
import pytest

from graphs import estimate as E
from graphs.contract import CacheShape, kv_bytes_per_token
from graphs.metadata import load_metadata
from validate.ort_model import OrtModel


def _run(export: str, batch: int, tokens: int):
    """present.* tensors after a prefill of `batch` sequences: the sink, then `tokens` text tokens."""
    meta = load_metadata(export)
    model = OrtModel(export, meta)
    sink = meta.sink["token_id"]
    row = ([] if sink is None else [sink]) + [3 + (i % 50) for i in range(tokens)]
    ids = np.array([row] * batch, np.int64)
    pos = np.tile(np.arange(ids.shape[1]), (batch, 1))
    _, present = model(ids, np.ones_like(ids), pos, model.empty_past(batch))
    return meta, present


@pytest.mark.parametrize("arch,k", [("llama", "full"), ("llama", 8), ("gpt2", 9)])
def test_estimate_equals_present_tensor_bytes(arch, k, tiny_export):
    export = tiny_export(arch, k)
    for batch, tokens in ((1, 5), (2, 13)):
        meta, present = _run(export, batch, tokens)
        m = meta.model
        layout = E.layout_for_ranks(m["num_layers"], m["num_kv_heads"], m["head_dim"], meta.ranks["key"],
                                    meta.ranks["value"])
        assert layout == meta.layout                       # the estimator builds the layout the export has
        sink = meta.sink["token_id"] is not None
        assert sum(p.nbytes for p in present) == E.total_bytes(layout, tokens, batch, sink=sink)
        slots = E.cached_tokens(tokens, sink) * batch
        got = [(present[2 * i].nbytes, present[2 * i + 1].nbytes) for i in range(layout.num_layers)]
        assert got == [(b.key * slots, b.value * slots) for b in E.per_layer(layout)]


def test_per_layer_figures_sum_to_the_contract_and_fp16_halves_them():
    layout = E.layout_for_ranks(3, 2, 16, [None, 5, 7], [4, None, 7])
    assert layout.keys[1] == CacheShape(1, 5) and layout.values[1] == CacheShape(2, 16)
    rows = E.per_layer(layout)
    assert [(r.key, r.value) for r in rows] == [(128, 16), (20, 128), (28, 28)]
    assert sum(r.total for r in rows) == kv_bytes_per_token(layout)
    half = E.with_dtype(layout, "float16")
    assert [r.total * 2 for r in E.per_layer(half)] == [r.total for r in rows]
    with pytest.raises(ValueError, match="2 ranks for 3 layers"):
        E.layout_for_ranks(3, 2, 16, [1, 2])


def test_totals_over_lengths_and_batches_and_the_sink_slot():
    layout = E.layout_for_ranks(2, 1, 8)                   # 2 layers x (8 + 8) x 4 B = 128 B per token
    rows = E.table({"a": layout}, seq_lengths=(512, 1024), batch_sizes=(1, 4))
    assert [(r["batch"], r["tokens"], r["bytes"]["a"]) for r in rows] == \
        [(1, 512, 513 * 128), (1, 1024, 1025 * 128), (4, 512, 4 * 513 * 128), (4, 1024, 4 * 1025 * 128)]
    assert E.total_bytes(layout, 512, sink=False) == 512 * 128


def test_gpt2_true_figures_from_its_config(capsys):
    """GPT-2: 12 layers, 12 KV heads of 64 (768 wide): 73,728 B per token in fp32, linear in tokens."""
    full = E.layout_for_ranks(12, 12, 64)
    assert kv_bytes_per_token(full) == 12 * 2 * 768 * 4
    assert E.total_bytes(full, 2048, sink=False) == 4 * E.total_bytes(full, 512, sink=False)
    k9 = E.layout_for_ranks(12, 12, 64, 9, 9)
    assert kv_bytes_per_token(full) / kv_bytes_per_token(k9) == pytest.approx(768 / 9)
    assert E.main(["--layers", "12", "--kv-heads", "12", "--head-dim", "64", "--k", "9", "--seq", "512",
                   "--batch", "1", "--no-sink"]) == 0
    out = capsys.readouterr().out
    assert "73,728" in out and "36 MiB" in out and "85.33x" in out
