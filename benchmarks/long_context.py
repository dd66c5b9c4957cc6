"""Long context: decode cost per step and memory against context length, per export (key mode, cache variant).

    python -m benchmarks.long_context EXPORT [EXPORT ...] [--contexts 1024,4096,8128] [--new-tokens 32]

One fresh process per (export, context): prefill the first `context` tokens of WikiText-2 test (sink first, in
the runtime's chunks), then `new-tokens` greedy steps. Reports decode ms/step, the cache bytes the runtime
holds (KVCache.nbytes) next to the estimator's kv_bytes_per_token x tokens, and the process's peak RSS, so
the per-token growth of memory can be compared with the estimate. The per-step attention cost is the slope
of ms/step over context; pre-RoPE exports rebuild and rotate every cached key each step, which shows there.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, sys, time
from runtime import Generator
from benchmarks.prompted import greedy_steps, peak_rss_gib, prefill
export, n_ctx, n_new = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
gen = Generator(export, provider="cpu")
t0 = time.perf_counter()
logits, mask, cache = prefill(gen, n_ctx, n_new)
prefill_s = time.perf_counter() - t0
t0 = time.perf_counter()
greedy_steps(gen.step, logits, mask, cache, n_new)
step_ms = (time.perf_counter() - t0) / n_new * 1e3
print(json.dumps({"prefill_s": prefill_s, "step_ms": step_ms, "cache_bytes": cache.nbytes, "tokens": cache.length,
                  "capacity": cache.capacity, "estimate_bytes": gen.metadata.kv_bytes_per_token * (cache.capacity or cache.length),
                  "kv_bytes_per_token": gen.metadata.kv_bytes_per_token, "peak_rss_gib": peak_rss_gib(),
                  "cache_update": gen.metadata.cache_update, "key_mode": gen.metadata.key_mode}))
"""


def measure(export: str, context: int, new_tokens: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, export, str(context), str(new_tokens)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{export} at {context} tokens failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.long_context", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("exports", nargs="+")
    p.add_argument("--contexts", default="1024,4096,8128")
    p.add_argument("--new-tokens", type=int, default=32)
    a = p.parse_args(argv)
    contexts = [int(c) for c in a.contexts.split(",")]
    print(f"{a.new_tokens} greedy steps after each context; one process per cell, one run each.\n")
    print("| export | key mode | cache | context | prefill s | decode ms/step | cache MiB (estimate) | peak RSS GiB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for e in a.exports:
        rows = []
        for c in contexts:
            r = measure(e, c, a.new_tokens)
            rows.append(r)
            print(f"| {e} | {r['key_mode']} | {r['cache_update']} | {c} | {r['prefill_s']:.2f} | {r['step_ms']:.1f} | "
                  f"{r['cache_bytes'] / 2**20:.1f} ({r['estimate_bytes'] / 2**20:.1f}) | {r['peak_rss_gib']:.2f} |",
                  flush=True)
        if len(rows) > 1:
            slope = (rows[-1]["step_ms"] - rows[0]["step_ms"]) / (contexts[-1] - contexts[0]) * 1000
            rss = (rows[-1]["peak_rss_gib"] - rows[0]["peak_rss_gib"]) * 2**30 / (contexts[-1] - contexts[0])
            print(f"| {e} | slope | | per 1k tokens | | {slope:+.1f} ms | {rows[0]['kv_bytes_per_token'] * 1000 / 2**20:.1f} "
                  f"MiB estimate | {rss * 1000 / 2**20:+.1f} MiB measured |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
