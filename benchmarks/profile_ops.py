"""Where time goes: onnxruntime's profiler over decode steps at a given context length, or over the prefill.

    python -m benchmarks.profile_ops EXPORT [--context 4096] [--steps 8] [--top 12] [--prefill]

The prompt (WikiText-2 test, sink first) is prefilled without profiling, then `steps` one-token decode steps
run with profiling on; with --prefill the prefill itself (in the runtime's chunks) is profiled instead.
Prints the top operator types and nodes by total kernel time.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile


def profile(export: str, context: int, steps: int, of_prefill: bool = False) -> list[dict]:
    """The profiler's node events ('cat' == 'Node') of `steps` decode steps after a `context`-token prefill,
    or of that prefill."""
    import onnxruntime as ort
    from runtime import Generator
    from runtime.forward import DecoderStep
    from .prompted import greedy_steps, prefill
    gen = Generator(export, provider="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(tmp, "profile")
        options.log_severity_level = 3
        session = ort.InferenceSession(os.path.join(export, "model.onnx"), options, providers=["CPUExecutionProvider"])
        if of_prefill:
            gen.session, gen.step = session, DecoderStep(session, gen.device)
            prefill(gen, context, steps)
        else:
            logits, mask, cache = prefill(gen, context, steps)    # on the unprofiled session
            greedy_steps(DecoderStep(session, gen.device), logits, mask, cache, steps)
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
    p.add_argument("--prefill", action="store_true", help="profile the prefill of the prompt instead")
    a = p.parse_args(argv)
    what = f"the prefill of a {a.context}-token prompt" if a.prefill else \
        f"{a.steps} decode steps after a {a.context}-token prompt"
    print(f"{a.export}: {what}\n")
    print(summarize(profile(a.export, a.context, a.steps, a.prefill), a.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
