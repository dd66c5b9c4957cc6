"""graphs/kernels: our CodesAttention kernel against a numpy reference of the int8 cache's arithmetic (odd head
sizes and lengths, groups wider than one pass, windows, first prompts, a shared buffer written in place, rows
of different lengths) and against onnxruntime's own GroupQueryAttention where that op takes the case."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from graphs import kernels

TOL = 1e-5     # max |ours - reference| on outputs of size ~1: float32 sums in another order


@pytest.fixture(scope="module", autouse=True)
def library():
    assert kernels.library_path() is not None, kernels.BUILD_HINT     # `make setup` builds it: a failure, not a skip


def group_query_node(heads, kv_heads, d, window=0) -> onnx.ModelProto:
    """One int8 GroupQueryAttention node as our exports write it (PER_CHANNEL steps at inputs 12 and 13)."""
    vi = helper.make_tensor_value_info
    inputs = [vi("q", TensorProto.FLOAT, ["B", "T", heads * d]), vi("k", TensorProto.FLOAT, ["B", "T", kv_heads * d]),
              vi("v", TensorProto.FLOAT, ["B", "T", kv_heads * d]),
              vi("past_k", TensorProto.INT8, ["B", kv_heads, "P", d]),
              vi("past_v", TensorProto.INT8, ["B", kv_heads, "P", d]), vi("seqlens_k", TensorProto.INT32, ["B"]),
              vi("total", TensorProto.INT32, []), vi("k_scale", TensorProto.FLOAT, [kv_heads * d]),
              vi("v_scale", TensorProto.FLOAT, [kv_heads * d])]
    attrs = dict(num_heads=heads, kv_num_heads=kv_heads, k_quant_type="PER_CHANNEL", v_quant_type="PER_CHANNEL",
                 kv_cache_bit_width=8, scale=0.0, **({"local_window_size": window} if window else {}))
    node = helper.make_node("GroupQueryAttention", [i.name for i in inputs[:7]] + [""] * 5 + ["k_scale", "v_scale"],
                            ["out", "present_k", "present_v"], domain="com.microsoft", **attrs)
    outputs = [vi("out", TensorProto.FLOAT, None), vi("present_k", TensorProto.INT8, None),
               vi("present_v", TensorProto.INT8, None)]
    model = helper.make_model(helper.make_graph([node], "attention", inputs, outputs),
                              opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    return model


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    assert kernels.register(options)
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def codes_session(heads, kv_heads, d, window=0):
    return session(kernels.use_codes_attention(group_query_node(heads, kv_heads, d, window)))


def quantize(x, step):
    return np.clip(np.rint(x * (np.float32(1) / step)), -128, 127).astype(np.int8)


def reference(q, k, v, past_k, past_v, past_lengths, k_step, v_step, heads, window=0):
    """Per sequence b: new codes written at past_lengths[b]..; query t sees keys 0..past_lengths[b] + t (the last
    `window` of them); scores over dequantized codes in float64. Returns out and the present caches."""
    B, T, _ = q.shape
    G, d = past_k.shape[1], past_k.shape[3]
    present_k, present_v = past_k.copy(), past_v.copy()
    out = np.zeros((B, T, heads, d))
    for b in range(B):
        p0 = past_lengths[b]
        for g in range(G):
            ks, vs = k_step[g * d:(g + 1) * d], v_step[g * d:(g + 1) * d]
            present_k[b, g, p0:p0 + T] = quantize(k[b, :, g * d:(g + 1) * d], ks)
            present_v[b, g, p0:p0 + T] = quantize(v[b, :, g * d:(g + 1) * d], vs)
            keys, values = present_k[b, g].astype(np.float64) * ks, present_v[b, g].astype(np.float64) * vs
            for h in range(g * heads // G, (g + 1) * heads // G):
                for t in range(T):
                    lo = max(0, p0 + t - window + 1) if window else 0
                    s = keys[lo:p0 + t + 1] @ q[b, t, h * d:(h + 1) * d] / np.sqrt(d)
                    p = np.exp(s - s.max())
                    out[b, t, h] = (p / p.sum()) @ values[lo:p0 + t + 1]
    return out.reshape(B, T, heads * d), present_k, present_v


def case(rng, B, T, P, heads, kv_heads, d):
    f = lambda *shape: rng.standard_normal(shape).astype(np.float32)      # noqa: E731
    codes = lambda: rng.integers(-128, 128, (B, kv_heads, P, d)).astype(np.int8)  # noqa: E731
    steps = lambda: (rng.random(kv_heads * d) * 0.05 + 0.01).astype(np.float32)  # noqa: E731
    return dict(q=f(B, T, heads * d), k=f(B, T, kv_heads * d), v=f(B, T, kv_heads * d), past_k=codes(),
                past_v=codes(), k_scale=steps(), v_scale=steps())


# (batch, new tokens, past, heads, kv heads, head size, window)
CASES = [(2, 1, 37, 9, 3, 64, 0), (1, 5, 0, 4, 2, 12, 0), (3, 3, 20, 6, 1, 16, 0), (2, 1, 50, 10, 2, 24, 8),
         (1, 17, 33, 8, 8, 8, 0), (2, 40, 0, 9, 3, 64, 0), (1, 1, 0, 5, 1, 20, 0), (2, 7, 9, 12, 2, 32, 3)]


@pytest.mark.parametrize("B,T,P,heads,kv_heads,d,window", CASES)
def test_concatenating_call_matches_the_reference(B, T, P, heads, kv_heads, d, window):
    """past (B, G, P, d) and total P + T: present is a new (B, G, P + T, d) tensor holding past and the new codes."""
    x = case(np.random.default_rng(B * 1000 + T * 100 + P), B, T, P, heads, kv_heads, d)
    feeds = dict(x, seqlens_k=np.full(B, P + T - 1, np.int32), total=np.array(P + T, np.int32))
    out, present_k, present_v = codes_session(heads, kv_heads, d, window).run(None, feeds)
    grow = lambda c: np.concatenate([c, np.zeros((B, kv_heads, T, d), np.int8)], 2)  # noqa: E731
    ref_out, ref_k, ref_v = reference(x["q"], x["k"], x["v"], grow(x["past_k"]), grow(x["past_v"]), [P] * B,
                                      x["k_scale"], x["v_scale"], heads, window)
    assert np.abs(out - ref_out).max() < TOL
    assert (present_k == ref_k).all() and (present_v == ref_v).all()


def test_one_buffer_bound_as_past_and_present_is_written_in_place_with_a_length_per_row():
    """A decode step of rows at different lengths in one max-length buffer (how our runtime binds it)."""
    B, heads, kv_heads, d, S = 3, 6, 2, 16, 40
    lengths = [5, 17, 31]                                     # tokens each row holds before the step
    rng = np.random.default_rng(7)
    x = case(rng, B, 1, S, heads, kv_heads, d)
    s = codes_session(heads, kv_heads, d)
    bind = s.io_binding()
    bind.bind_output("out")
    buffers = {n: ort.OrtValue.ortvalue_from_numpy(x[f"past_{n}"].copy()) for n in ("k", "v")}
    for n in ("k", "v"):
        bind.bind_ortvalue_input(f"past_{n}", buffers[n])
        bind.bind_ortvalue_output(f"present_{n}", buffers[n])
    for name in ("q", "k", "v", "k_scale", "v_scale"):
        bind.bind_cpu_input(name, x[name])
    bind.bind_cpu_input("seqlens_k", np.array(lengths, np.int32))                # after the step, minus one
    bind.bind_cpu_input("total", np.array(max(lengths) + 1, np.int32))
    s.run_with_iobinding(bind)
    ref_out, ref_k, ref_v = reference(x["q"], x["k"], x["v"], x["past_k"], x["past_v"], lengths, x["k_scale"],
                                      x["v_scale"], heads)
    assert np.abs(bind.get_outputs()[0].numpy() - ref_out).max() < TOL
    assert (buffers["k"].numpy() == ref_k).all() and (buffers["v"].numpy() == ref_v).all()


def test_a_first_prompt_of_right_padded_rows_starts_every_row_at_zero():
    """total == T: nothing in the past, whatever seqlens_k says of each row's valid tokens."""
    B, T, heads, kv_heads, d = 2, 6, 4, 2, 8
    x = case(np.random.default_rng(3), B, T, 0, heads, kv_heads, d)
    feeds = dict(x, seqlens_k=np.array([5, 2], np.int32), total=np.array(T, np.int32))
    out, present_k, _ = codes_session(heads, kv_heads, d).run(None, feeds)
    empty = np.zeros((B, kv_heads, T, d), np.int8)
    ref_out, ref_k, _ = reference(x["q"], x["k"], x["v"], empty, empty, [0, 0], x["k_scale"], x["v_scale"], heads)
    assert np.abs(out - ref_out).max() < TOL and (present_k == ref_k).all()


@pytest.mark.parametrize("B,T,P,heads,kv_heads,d,window", [c for c in CASES if c[5] % 8 == 0 and (c[0] == 1 or
                                                                                               c[1] == 1 or c[2] == 0)])
def test_same_result_as_onnxruntimes_group_query_attention(B, T, P, heads, kv_heads, d, window):
    """Where onnxruntime's op takes the case (head size a multiple of 8; chunks of several tokens at batch 1)."""
    x = case(np.random.default_rng(11), B, T, P, heads, kv_heads, d)
    feeds = dict(x, seqlens_k=np.full(B, P + T - 1, np.int32), total=np.array(P + T, np.int32))
    ours = codes_session(heads, kv_heads, d, window).run(None, feeds)
    theirs = session(group_query_node(heads, kv_heads, d, window)).run(None, feeds)
    assert np.abs(ours[0] - theirs[0]).max() < TOL
    assert all((a == b).all() for a, b in zip(ours[1:], theirs[1:]))


def test_cache_positions_outside_the_buffer_are_an_error_not_a_write():
    x = case(np.random.default_rng(0), 1, 1, 4, 2, 1, 8)
    feeds = dict(x, seqlens_k=np.array([9], np.int32), total=np.array(5, np.int32))   # token 10 of a 4-slot buffer
    with pytest.raises(Exception, match="outside the cache"):
        codes_session(2, 1, 8).run(None, feeds)


def test_the_pass_renames_int8_nodes_and_refuses_a_graph_without_one():
    model = kernels.use_codes_attention(group_query_node(4, 2, 8))
    node = model.graph.node[0]
    assert (node.domain, node.op_type, len(node.input)) == (kernels.DOMAIN, kernels.CODES_ATTENTION, 9)
    assert kernels.uses_kernels(model) and not any(o.domain == "com.microsoft" for o in model.opset_import)
    with pytest.raises(ValueError, match="no int8 GroupQueryAttention"):
        kernels.use_codes_attention(model)
