"""Passes on the exported ONNX model: the bits that make it loadable everywhere and reproducible."""
from __future__ import annotations

import heapq

import numpy as np
import onnx
from onnx import numpy_helper

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


def make_input_optional(model: onnx.ModelProto, name: str, default: np.ndarray) -> onnx.ModelProto:
    """Give graph input `name` an initializer of the same name: from IR 4 on that makes it optional with
    `default` as its value (onnxruntime lists it under overridable initializers, not inputs), so runtimes
    that do not know the input still run the graph."""
    if name not in {i.name for i in model.graph.input}:
        raise ValueError(f"graph has no input {name!r} to make optional")
    if any(t.name == name for t in model.graph.initializer):
        return model
    model.graph.initializer.append(numpy_helper.from_array(np.asarray(default), name))
    return model


SCALES_LAST = "spectral_kv_scales_last"      # GroupQueryAttention nodes whose k_scale, v_scale came last
SCALE_INPUTS = 12                             # where the op takes k_scale and v_scale (inputs 12 and 13)


def place_group_query_scales(model: onnx.ModelProto) -> onnx.ModelProto:
    """GroupQueryAttention takes k_scale and v_scale as inputs 12 and 13, after optional inputs the tracer cannot
    leave empty: the exporter emits them last with the SCALES_LAST mark, and this pass moves them into place
    (empty names for the optional inputs between) and drops the mark."""
    for node in model.graph.node:
        marks = [a for a in node.attribute if a.name == SCALES_LAST]
        if node.op_type != "GroupQueryAttention" or not marks:
            continue
        inputs = list(node.input)
        head, scales = inputs[:-2], inputs[-2:]
        del node.input[:]
        node.input.extend(head + [""] * (SCALE_INPUTS - len(head)) + scales)
        node.attribute.remove(marks[0])
    return model


# Kept in float32 by to_float16: nodes of these module scopes and these op types. RoPE angles reach
# position x inv_freq ~ 8k rad, where float16 steps by 4; RMSNorm/LayerNorm square activations that
# exceed float16's range on real LLMs; softmax sums many exponentials.
FLOAT32_SCOPES = ("/rope", "/norm")
FLOAT32_OPS = ("Softmax",)


def to_float16(model: onnx.ModelProto, keep_float32_io: tuple[str, ...]) -> onnx.ModelProto:
    """Weights, activations and the KV cache in float16 (onnxruntime's converter), except the numerically
    sensitive nodes above and the graph inputs/outputs named in keep_float32_io (e.g. logits)."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16
    sensitive = [n.name for n in model.graph.node if any(s in n.name for s in FLOAT32_SCOPES)]
    model = convert_float_to_float16(model, keep_io_types=list(keep_float32_io),
                                     op_block_list=list(DEFAULT_OP_BLOCK_LIST) + list(FLOAT32_OPS),
                                     node_block_list=sensitive, disable_shape_infer=False)
    drop_cast_round_trips(model)     # between two float32-kept nodes the converter casts to float16 and back
    return topological_sort(model)   # it also appends the casts of float32-kept weights at the end


def _cast_to(node: onnx.NodeProto) -> int | None:
    return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None


def drop_cast_round_trips(model: onnx.ModelProto) -> onnx.ModelProto:
    """x(float32) -> Cast(float16) -> Cast(float32) becomes x -> Cast(float32), a no-op onnxruntime removes;
    the float16 cast is then dropped if nothing else uses it. The round trip is not harmless: RMSNorm's x**2
    is kept float32 precisely because it exceeds float16's range."""
    typed = onnx.shape_inference.infer_shapes(model)
    elem = {v.name: v.type.tensor_type.elem_type for v in list(typed.graph.value_info) + list(typed.graph.input)}
    elem.update({t.name: t.data_type for t in model.graph.initializer})
    producer = {o: n for n in model.graph.node for o in n.output}
    for n in model.graph.node:
        first = producer.get(n.input[0]) if _cast_to(n) == onnx.TensorProto.FLOAT else None
        if (first is not None and _cast_to(first) == onnx.TensorProto.FLOAT16
                and elem.get(first.input[0]) == onnx.TensorProto.FLOAT):
            n.input[0] = first.input[0]
    return drop_unused_nodes(model)


def drop_unused_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Remove nodes none of whose outputs is used by another node or is a graph output."""
    while True:
        used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
        keep = [n for n in model.graph.node if any(o in used for o in n.output)]
        if len(keep) == len(model.graph.node):
            return model
        del model.graph.node[:]
        model.graph.node.extend(keep)


def topological_sort(model: onnx.ModelProto) -> onnx.ModelProto:
    """Reorder graph nodes so each comes after the producers of its inputs; among ready nodes the original
    order is kept, so an already sorted graph is unchanged (Kahn's algorithm)."""
    nodes = list(model.graph.node)
    producer = {out: i for i, n in enumerate(nodes) for out in n.output}
    waits_on = [{producer[x] for x in n.input if x in producer} for n in nodes]    # node -> producers
    users: dict[int, list[int]] = {}
    for i, deps in enumerate(waits_on):
        for d in deps:
            users.setdefault(d, []).append(i)
    ready = [i for i, deps in enumerate(waits_on) if not deps]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users.get(i, ()):
            waits_on[u].discard(i)
            if not waits_on[u]:
                heapq.heappush(ready, u)
    if len(order) != len(nodes):
        raise ValueError("graph has a cycle: it cannot be sorted")
    del model.graph.node[:]
    model.graph.node.extend(nodes[i] for i in order)
    return model
