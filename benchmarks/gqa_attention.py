"""The attention of a decode step alone: onnxruntime's GroupQueryAttention over a float cache against the same op
over an int8 cache (what KV_DTYPE=int8 exports run) and, on CPU, our kernel over the same int8 codes
(spectral_kv.CodesAttention, KV_KERNEL=codes), at a batch x context.

    python -m benchmarks.gqa_attention --batch 8 --context 4096 [--provider cpu|cuda] [--dtype float32|float16]

SmolLM2-135M's attention shapes (30 layers of 9 query heads and 3 KV heads of 64), one graph of 30 chained GQA
nodes, each layer's cache one buffer bound as past and present (written in place), IO binding. Needs only
numpy, onnx and onnxruntime (or onnxruntime-gpu), so it runs on a GPU machine without the rest of the project:
the GPU check of the runtime issue is `--provider cuda --dtype float16 --batch 16 --context 32768`.
Prints ms per step for each cache type and the ratio. Our kernel's row needs the library `make setup` builds.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

from graphs import kernels

HEADS, KV_HEADS, HEAD, LAYERS = 9, 3, 64, 30
FLOATS = {"float32": (TensorProto.FLOAT, np.float32), "float16": (TensorProto.FLOAT16, np.float16)}


def graph(cache: str, dtype: str) -> bytes:
    """30 GQA nodes; cache 'float' (the model's dtype), 'int8' (static per-channel scales) or 'codes' (int8, our
    kernel)."""
    ft = FLOATS[dtype][0]
    ct = ft if cache == "float" else TensorProto.INT8
    vi = helper.make_tensor_value_info
    inputs = [vi("q", ft, ["B", 1, HEADS * HEAD]), vi("k", ft, ["B", 1, KV_HEADS * HEAD]),
              vi("v", ft, ["B", 1, KV_HEADS * HEAD]), vi("seqlens_k", TensorProto.INT32, ["B"]),
              vi("total", TensorProto.INT32, [])]
    outputs, nodes, x = [], [], "q"
    for layer in range(LAYERS):
        inputs += [vi(f"past_k{layer}", ct, ["B", KV_HEADS, "M", HEAD]),
                   vi(f"past_v{layer}", ct, ["B", KV_HEADS, "M", HEAD])]
        outputs += [vi(f"present_k{layer}", ct, None), vi(f"present_v{layer}", ct, None)]
        ins = [x, "k", "v", f"past_k{layer}", f"past_v{layer}", "seqlens_k", "total"]
        attrs = dict(num_heads=HEADS, kv_num_heads=KV_HEADS)
        if cache != "float":
            ins += [""] * 5 + ["k_scale", "v_scale"]
            attrs.update(k_quant_type="PER_CHANNEL", v_quant_type="PER_CHANNEL", kv_cache_bit_width=8)
        nodes.append(helper.make_node("GroupQueryAttention", ins, [f"o{layer}", f"present_k{layer}",
                                                                    f"present_v{layer}"],
                                      domain="com.microsoft", **attrs))
        x = f"o{layer}"
    scales = [helper.make_tensor(n, TensorProto.FLOAT, [KV_HEADS * HEAD], np.full(KV_HEADS * HEAD, 0.05))
              for n in ("k_scale", "v_scale")] if cache != "float" else []
    g = helper.make_graph(nodes, "attention", inputs, [vi(x, ft, None)] + outputs, scales)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    if cache == "codes":
        kernels.use_codes_attention(model)
    return model.SerializeToString()


def step_ms(cache: str, dtype: str, batch: int, context: int, provider: str, steps: int) -> tuple[float, float]:
    """(median ms per decode step, cache MiB)."""
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if provider == "cuda" else ["CPUExecutionProvider"]
    if provider == "cuda" and hasattr(ort, "preload_dlls"):
        ort.preload_dlls()
    options = ort.SessionOptions()
    kernels.register(options)
    session = ort.InferenceSession(graph(cache, dtype), options, providers=providers)
    device = "cuda" if provider == "cuda" else "cpu"
    np_float = FLOATS[dtype][1]
    np_cache = np_float if cache == "float" else np.int8
    rng = np.random.default_rng(0)
    bind = session.io_binding()
    buffers = []
    for layer in range(LAYERS):
        for kind in ("k", "v"):
            shape = (batch, KV_HEADS, context + steps + 1, HEAD)
            buf = ort.OrtValue.ortvalue_from_shape_and_type(shape, np_cache, device, 0)
            if device == "cpu":                              # content does not change the speed; keep it finite
                buf.update_inplace((rng.standard_normal(shape) * 0.5).astype(np_cache) if cache == "float"
                                   else rng.integers(-100, 100, shape).astype(np.int8))
            buffers.append(buf)
            bind.bind_ortvalue_input(f"past_{kind}{layer}", buf)
            bind.bind_ortvalue_output(f"present_{kind}{layer}", buf)
    for name, width in (("q", HEADS), ("k", KV_HEADS), ("v", KV_HEADS)):
        bind.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(
            rng.standard_normal((batch, 1, width * HEAD)).astype(np_float), device, 0))
    bind.bind_output(f"o{LAYERS - 1}", device)
    times = []
    for step in range(steps):
        bind.bind_cpu_input("seqlens_k", np.full(batch, context + step, np.int32))
        bind.bind_cpu_input("total", np.array(context + step + 1, np.int32))
        start = time.perf_counter()
        session.run_with_iobinding(bind)
        bind.synchronize_outputs()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times[1:]), sum(b.tensor_size_in_bytes() for b in buffers) / 2 ** 20


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gqa_attention", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--context", type=int, default=4096)
    p.add_argument("--provider", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--dtype", default="float32", choices=tuple(FLOATS))
    p.add_argument("--steps", type=int, default=8)
    a = p.parse_args(argv)
    print(f"onnxruntime {ort.__version__}, {a.provider}, {a.dtype}, batch {a.batch} x context {a.context}, "
          f"{LAYERS} layers of GroupQueryAttention ({HEADS} heads, {KV_HEADS} KV heads of {HEAD})")
    base = None
    caches = ("float", "int8") + (("codes",) if a.provider == "cpu" and a.dtype == "float32" else ())
    if "codes" in caches and kernels.library_path() is None:
        print(f"  (our kernel's row skipped: {kernels.BUILD_HINT})")
        caches = caches[:2]
    for cache in caches:
        ms, mib = step_ms(cache, a.dtype, a.batch, a.context, a.provider, a.steps)
        base = base or ms
        print(f"  {a.dtype if cache == 'float' else cache:8s} cache {mib:9.0f} MiB: {ms:8.2f} ms/step  "
              f"({base / ms:.2f}x the float cache)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
