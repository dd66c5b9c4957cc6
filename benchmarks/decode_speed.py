"""Our runtime's speed under its knobs: one fresh process per measurement, median and range of 3.

    python -m benchmarks.decode_speed [--prompt-tokens 128] [--new-tokens 64] [--optimization all]
        [--threads 0] [--prefill-chunk 256] EXPORT [EXPORT ...]

--optimization, --threads and --prefill-chunk take comma-separated lists; every combination is measured, so
this is how the runtime's defaults (graph optimisation level, intra-op threads, prefill chunk) are chosen.
The prompt is the first tokens of WikiText-2 test (the sink included in the count); greedy; CPU provider.
Prints a markdown table: prefill (= time to first token) seconds, decode tokens/s, peak RSS of the process.
The peers are measured by benchmarks.runtime_bench (make bench-runtime).
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys

CHILD = r"""
import json, sys
from runtime import Generator
from benchmarks.prompted import peak_rss_gib, prompt_ids
export, n_prompt, n_new, opt, threads, chunk = sys.argv[1:7]
gen = Generator(export, provider="cpu", optimization=opt, intra_op_threads=int(threads), prefill_chunk=int(chunk))
r = gen.generate([prompt_ids(gen, int(n_prompt))], max_new_tokens=int(n_new), stop_token_ids=[])
print(json.dumps({"prefill_s": r.timings.prefill_s, "decode_tok_s": r.timings.decode_tokens_per_s,
                  "peak_rss_gib": peak_rss_gib(), "kv_bytes_per_token": gen.metadata.kv_bytes_per_token}))
"""
FIGURES = ("prefill_s", "decode_tok_s", "peak_rss_gib")


def measure(export: str, prompt_tokens: int, new_tokens: int, optimization: str = "all", threads: int = 0,
            chunk: int = 256, runs: int = 3) -> dict:
    """Median and (min, max) of each figure over `runs` fresh processes."""
    results = []
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", CHILD, export, str(prompt_tokens), str(new_tokens),
                              optimization, str(threads), str(chunk)], capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"measuring {export} failed:\n{out.stderr[-2000:]}")
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    pick = lambda k: [r[k] for r in results]
    return {"kv_bytes_per_token": results[0]["kv_bytes_per_token"],
            **{k: statistics.median(pick(k)) for k in FIGURES},
            **{k + "_range": (min(pick(k)), max(pick(k))) for k in FIGURES}}


def _cell(r: dict, key: str, fmt: str) -> str:
    lo, hi = r[key + "_range"]
    return f"{r[key]:{fmt}} ({lo:{fmt}}–{hi:{fmt}})"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.decode_speed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("exports", nargs="+")
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--optimization", default="all", help="comma list of disable,basic,extended,all")
    p.add_argument("--threads", default="0", help="comma list of intra-op thread counts (0 = onnxruntime's)")
    p.add_argument("--prefill-chunk", default="256", help="comma list of prefill chunk sizes (0 = whole prompt)")
    p.add_argument("--runs", type=int, default=3)
    a = p.parse_args(argv)
    print(f"Prompt {a.prompt_tokens} tokens, {a.new_tokens} new tokens, median (range) of {a.runs} processes.\n")
    print("| export | KV B/token | optimization | threads | prefill chunk | prefill s | decode tok/s | peak RSS GiB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for e, opt, threads, chunk in itertools.product(a.exports, a.optimization.split(","),
                                                    a.threads.split(","), a.prefill_chunk.split(",")):
        r = measure(e, a.prompt_tokens, a.new_tokens, opt, int(threads), int(chunk), a.runs)
        print(f"| {e} | {r['kv_bytes_per_token']} | {opt} | {threads} | {chunk} | {_cell(r, 'prefill_s', '.3f')} | "
              f"{_cell(r, 'decode_tok_s', '.1f')} | {_cell(r, 'peak_rss_gib', '.2f')} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
