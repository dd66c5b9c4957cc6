"""Passes on the exported ONNX model: the bits that make it loadable everywhere and reproducible."""
from __future__ import annotations

import onnx

# The newest IR version the pinned onnxruntime accepts; newer onnx releases may write newer ones it refuses.
MAX_IR_VERSION = 10


def clamp_ir_version(model: onnx.ModelProto, max_ir: int = MAX_IR_VERSION) -> onnx.ModelProto:
    """Lower the IR version to what the runtimes accept (our graphs use nothing newer than IR 8 needs)."""
    if model.ir_version > max_ir:
        model.ir_version = max_ir
    return model


def set_metadata_props(model: onnx.ModelProto, props: dict[str, str]) -> onnx.ModelProto:
    """Replace the model's metadata_props with sorted key/value pairs (sorted so bytes are reproducible)."""
    del model.metadata_props[:]
    for k in sorted(props):
        entry = model.metadata_props.add()
        entry.key, entry.value = k, str(props[k])
    return model


def strip_doc_strings(model: onnx.ModelProto) -> onnx.ModelProto:
    """Exporters put source locations in doc strings; they vary between machines, so drop them."""
    model.doc_string = ""
    for node in model.graph.node:
        node.doc_string = ""
    return model
