"""Checks an exported graph against its metadata: the contract holds, ONNX is well-formed."""
from __future__ import annotations

import onnx

from . import contract as C
from .metadata import ExportError


def _dims(value_info) -> list:
    """Static ints or symbolic names of a graph input/output."""
    return [d.dim_value if d.HasField("dim_value") else d.dim_param
            for d in value_info.type.tensor_type.shape.dim]


def check_contract(model: onnx.ModelProto, layout: C.CacheLayout) -> None:
    """Every past/present KV tensor has the rank, kv_heads, head_size and element type its layer's metadata
    says, and the batch/sequence axes are dynamic. Raises ExportError naming the first mismatch."""
    inputs = {i.name: i for i in model.graph.input}
    outputs = {o.name: o for o in model.graph.output}
    for name in (C.INPUT_IDS, C.ATTENTION_MASK, C.POSITION_IDS):
        if name not in inputs:
            raise ExportError(f"graph lacks input {name!r}")
    if C.LOGITS not in outputs:
        raise ExportError("graph lacks output 'logits'")
    for layer, kind, past, present in layout.names():
        want = layout.shape(layer, kind)
        for table, name in ((inputs, past), (outputs, present)):
            if name not in table:
                raise ExportError(f"graph lacks {name!r}")
            dims = _dims(table[name])
            if len(dims) != 4 or dims[1] != want.kv_heads or dims[3] != want.head_size:
                raise ExportError(f"{name} has shape {dims}, metadata says "
                                  f"[batch, {want.kv_heads}, seq, {want.head_size}]")
            elem = onnx.helper.tensor_dtype_to_np_dtype(table[name].type.tensor_type.elem_type).name
            if elem != layout.dtype_of(want):
                raise ExportError(f"{name} holds {elem}, metadata says {layout.dtype_of(want)}")
            if isinstance(dims[0], int) or isinstance(dims[2], int):
                raise ExportError(f"{name} has static batch/sequence axes {dims}; they must be dynamic")
    n_kv_inputs = sum(1 for n in inputs if n.startswith("past_key_values."))
    expected = len(list(layout.names()))         # key and value per layer, and any float windows
    if n_kv_inputs != expected:
        raise ExportError(f"graph has {n_kv_inputs} past inputs, metadata says {expected}")


def check_model(path: str) -> None:
    """ONNX checker and strict shape inference on a saved model (path form handles external data)."""
    onnx.checker.check_model(path, full_check=True)
