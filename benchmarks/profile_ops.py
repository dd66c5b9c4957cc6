"""Where decode time goes: onnxruntime's profiler over decode steps at a given context length.

    python -m benchmarks.profile_ops EXPORT [--context 4096] [--steps 8] [--top 12]

The prompt (WikiText-2 test, sink first) is prefilled without profiling, then `steps` one-token decode steps
run with profiling on; prints the top operator types and nodes by total time in those steps.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile

import numpy as np


def profile(export: str, context: int, steps: int) -> list[dict]:
    """The profiler's node events ('cat' == 'Node') of `steps` decode steps after a `context`-token prefill."""
    import onnxruntime as ort
    from runtime import Generator
    from runtime.forward import DecoderStep
    from exporter.text import DEFAULT_EVAL
    gen = Generator(export, provider="cpu")
    ids = gen.tokenizer.encode(open(DEFAULT_EVAL, encoding="utf-8").read()[:400_000], add_special_tokens=False).ids
    prompt = gen.encode([ids[:context - 1]])
    cache = gen.new_cache(prompt, steps)               # the export's protocol: growing or a shared buffer
    mask = np.ones((1, len(prompt[0])), np.int64)
    logits = gen.prefill(np.array(prompt), mask, cache)
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(tmp, "decode")
        options.log_severity_level = 3
        session = ort.InferenceSession(os.path.join(export, "model.onnx"), options, providers=["CPUExecutionProvider"])
        step = DecoderStep(session, gen.device)
        for _ in range(steps):
            mask = np.concatenate([mask, np.ones((1, 1), np.int64)], axis=1)
            logits = step(logits.argmax(-1)[:, None], mask, cache)
        with open(session.end_profiling()) as f:
            events = json.load(f)
    return [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]


def summarize(events: list[dict], top: int) -> str:
    total = sum(e["dur"] for e in events)
    by_op, by_node = collections.Counter(), collections.Counter()
    for e in events:
        by_op[e["args"]["op_name"]] += e["dur"]
        by_node[e["name"].removesuffix("_kernel_time")] += e["dur"]
    lines = [f"total kernel time {total / 1e3:.1f} ms", "", "| op type | ms | share |", "| --- | --- | --- |"]
    lines += [f"| {op} | {d / 1e3:.1f} | {100 * d / total:.1f} % |" for op, d in by_op.most_common(top)]
    lines += ["", "| node | ms | share |", "| --- | --- | --- |"]
    lines += [f"| {n} | {d / 1e3:.1f} | {100 * d / total:.1f} % |" for n, d in by_node.most_common(top)]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile_ops", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("export")
    p.add_argument("--context", type=int, default=4096)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--top", type=int, default=12)
    a = p.parse_args(argv)
    print(f"{a.export}: {a.steps} decode steps after a {a.context}-token prompt\n")
    print(summarize(profile(a.export, a.context, a.steps), a.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
