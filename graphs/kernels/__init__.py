"""Our onnxruntime kernels: attention that reads the int8 cache's codes (spectral_kv.CodesAttention, CPU).

onnxruntime's GroupQueryAttention reads an int8 cache too, but dequantizes every cached row once for each query
head of its group; `codes_attention.cc` reads each row once per KV head, folds the key steps into the query and
sums values in code space (its header says how). Same inputs, attributes and semantics as the int8
GroupQueryAttention nodes of our exports, so `use_codes_attention` only renames them and drops the inputs the
kernel does not take (rotary tables, which int8 exports leave empty).

The library is built by `make setup` (build/kernels/libspectral_kv.so, with the system C++ compiler against
onnxruntime's C API headers) and registered on every session our runtime opens; onnxruntime-genai loads it
through genai_config's `custom_ops_library`. The CUDA provider has no such kernel: an export with it runs on CPU.

Entry points: `library_path()`, `register(options)`, `use_codes_attention(model)`, `uses_kernels(model)`.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:        # the runtime imports this module and never onnx: the graph passes import it themselves
    import onnx

DOMAIN = "spectral_kv"
CODES_ATTENTION = "CodesAttention"
LIBRARY_ENV = "SPECTRAL_KV_KERNELS"          # overrides where the library is looked for
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LIBRARY = os.path.join(_ROOT, "build", "kernels", "libspectral_kv.so")
BUILD_HINT = "build our kernels with `make setup` (a C++ compiler and onnxruntime's headers)"

# GroupQueryAttention's inputs the kernel takes, in its order: q, k, v, past k, past v, seqlens_k, total length,
# then k_scale and v_scale (GroupQueryAttention's inputs 12 and 13)
_KEPT_INPUTS = (0, 1, 2, 3, 4, 5, 6, 12, 13)
_KEPT_ATTRIBUTES = ("num_heads", "kv_num_heads", "scale", "local_window_size")


def library_path() -> str | None:
    """The built kernel library, or None when it has not been built."""
    path = os.environ.get(LIBRARY_ENV) or LIBRARY
    return path if os.path.isfile(path) else None


def uses_kernels(model: onnx.ModelProto) -> bool:
    """Whether the graph has nodes of our domain (then a session needs the library)."""
    return any(op.domain == DOMAIN for op in model.opset_import)


def register(options) -> bool:
    """Register the library on onnxruntime SessionOptions when it is built; True when registered."""
    path = library_path()
    if path is None:
        return False
    options.register_custom_ops_library(path)
    return True


def _attribute(node: onnx.NodeProto, name: str):
    import onnx
    return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name), None)


def is_int8_group_query(node: onnx.NodeProto) -> bool:
    """A GroupQueryAttention node with a static per-channel int8 cache and no rotary inside: what the kernel takes."""
    return (node.op_type == "GroupQueryAttention" and _attribute(node, "kv_cache_bit_width") == 8
            and not _attribute(node, "do_rotary") and len(node.input) == 14
            and all(_attribute(node, k) in (b"PER_CHANNEL", "PER_CHANNEL") for k in ("k_quant_type", "v_quant_type")))


def use_codes_attention(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every int8 GroupQueryAttention node becomes spectral_kv.CodesAttention (same semantics); refuses a graph
    that has none."""
    nodes = [n for n in model.graph.node if is_int8_group_query(n)]
    if not nodes:
        raise ValueError("the graph has no int8 GroupQueryAttention node for CodesAttention to replace")
    for node in nodes:
        inputs = [node.input[i] for i in _KEPT_INPUTS]
        attributes = [a for a in node.attribute if a.name in _KEPT_ATTRIBUTES]
        node.op_type, node.domain = CODES_ATTENTION, DOMAIN
        del node.input[:], node.attribute[:]
        node.input.extend(inputs)
        node.attribute.extend(attributes)
    if not uses_kernels(model):
        import onnx
        model.opset_import.append(onnx.helper.make_opsetid(DOMAIN, 1))
    if not any(n.domain == "com.microsoft" for n in model.graph.node):
        kept = [op for op in model.opset_import if op.domain != "com.microsoft"]
        del model.opset_import[:]
        model.opset_import.extend(kept)
    return model
