"""graphs/passes.py: each pass on a small hand-built graph whose right answer is known."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from graphs.passes import make_input_optional, to_float16, topological_sort


def _chain_model(shuffle: bool) -> onnx.ModelProto:
    """y = ((x + 1) * 2) - 3, nodes in graph order or reversed."""
    c = [helper.make_node("Constant", [], [f"c{i}"], value=helper.make_tensor(f"v{i}", TensorProto.FLOAT, [],
                                                                              [v])) for i, v in enumerate((1, 2, 3))]
    ops = [helper.make_node("Add", ["x", "c0"], ["a"], name="add"), helper.make_node("Mul", ["a", "c1"], ["m"], name="mul"),
           helper.make_node("Sub", ["m", "c2"], ["y"], name="sub")]
    nodes = c + ops
    graph = helper.make_graph(nodes[::-1] if shuffle else nodes, "chain",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_topological_sort_orders_producers_first_and_keeps_sorted_graphs():
    sorted_names = [n.output[0] for n in _chain_model(False).graph.node]
    assert [n.output[0] for n in topological_sort(_chain_model(False)).graph.node] == sorted_names
    fixed = topological_sort(_chain_model(True))
    onnx.checker.check_model(fixed)
    seen = {"x"}
    for n in fixed.graph.node:
        assert set(n.input) <= seen
        seen.update(n.output)


def test_make_input_optional_gives_a_default_the_caller_may_override():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    n = helper.make_tensor_value_info("n", TensorProto.FLOAT, [])
    graph = helper.make_graph([helper.make_node("Mul", ["x", "n"], ["y"])], "g", [x, n],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = make_input_optional(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), "n",
                                np.array(3.0, np.float32))
    model.ir_version = 8
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert [i.name for i in s.get_inputs()] == ["x"]
    x1 = np.ones(2, np.float32)
    assert s.run(None, {"x": x1})[0].tolist() == [3, 3]
    assert s.run(None, {"x": x1, "n": np.array(5.0, np.float32)})[0].tolist() == [5, 5]
    with pytest.raises(ValueError, match="no input"):
        make_input_optional(model, "absent", np.array(0))


def test_to_float16_keeps_named_io_and_sensitive_scopes_in_float32():
    model = _chain_model(False)
    model.graph.node[4].name = "/decoder/norm/Mul"         # a sensitive scope: must stay float32
    half = to_float16(model, keep_float32_io=("y",))
    types = {v.name: v.type.tensor_type.elem_type for v in list(half.graph.input) + list(half.graph.output)}
    assert types == {"x": TensorProto.FLOAT16, "y": TensorProto.FLOAT}
    mul = next(n for n in half.graph.node if n.name == "/decoder/norm/Mul")
    casts = {n.output[0]: n for n in half.graph.node if n.op_type == "Cast"}
    assert any(i in casts and casts[i].attribute[0].i == TensorProto.FLOAT for i in mul.input)
    onnx.checker.check_model(half)
    s = ort.InferenceSession(half.SerializeToString(), providers=["CPUExecutionProvider"])
    y = s.run(None, {"x": np.array([0.5, 2.0], np.float16)})[0]
    assert y.dtype == np.float32 and np.allclose(y, [0.0, 3.0])


def test_to_float16_keeps_chains_of_float32_nodes_out_of_float16_range():
    """x**2 of a 300-sized activation (90,000) would overflow float16 between two kept nodes."""
    two = helper.make_node("Constant", [], ["two"], value=helper.make_tensor("t", TensorProto.FLOAT, [], [2.0]))
    nodes = [two, helper.make_node("Pow", ["x", "two"], ["sq"], name="/blocks.0/norm1/Pow"),
             helper.make_node("ReduceMean", ["sq"], ["y"], name="/blocks.0/norm1/ReduceMean", keepdims=1)]
    graph = helper.make_graph(nodes, "norm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])])
    half = to_float16(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), ("y",))
    s = ort.InferenceSession(half.SerializeToString(), providers=["CPUExecutionProvider"])
    y = s.run(None, {"x": np.array([[300.0, 300.0]], np.float16)})[0]
    assert np.isfinite(y).all() and np.allclose(y, 90000.0)
