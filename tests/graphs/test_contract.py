"""The graph contract: shapes agree with metadata, and kv_bytes_per_token is what ONNX Runtime allocates."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from graphs.checks import check_contract
from graphs.contract import CacheLayout, CacheShape, kv_bytes_per_token
from graphs.metadata import ExportError, load_metadata
from validate.ort_model import OrtModel


@pytest.mark.parametrize("arch,k", [("llama", "full"), ("llama", 8), ("gpt2", 9)])
def test_kv_bytes_estimate_equals_present_tensor_bytes(arch, k, tiny_export):
    export = tiny_export(arch, k)
    meta = load_metadata(export)
    model = OrtModel(export, meta)
    bytes_at = {}
    for T in (5, 12):
        ids = np.full((1, T), 5)
        _, present = model(ids, np.ones_like(ids), np.arange(T)[None], model.empty_past(1))
        bytes_at[T] = sum(p.nbytes for p in present)
    assert bytes_at[12] - bytes_at[5] == 7 * meta.kv_bytes_per_token
    assert bytes_at[5] == 5 * kv_bytes_per_token(meta.layout)


def test_contract_check_names_the_mismatch(tiny_export):
    export = tiny_export("llama", 8)
    meta = load_metadata(export)
    model = onnx.load(f"{export}/model.onnx")
    check_contract(model, meta.layout)                                  # holds as exported
    wrong = CacheLayout((CacheShape(1, 7),) + meta.layout.keys[1:], meta.layout.values)
    with pytest.raises(ExportError, match=r"past_key_values\.0\.key has shape"):
        check_contract(model, wrong)


def test_ir_version_is_one_the_runtime_accepts(tiny_export):
    from graphs.passes import MAX_IR_VERSION
    model = onnx.load(f"{tiny_export('llama', 'full')}/model.onnx")
    assert model.ir_version <= MAX_IR_VERSION
