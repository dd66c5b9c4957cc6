"""Decode speed of our runtime on exports: one fresh process per measurement, median and range of 3.

    python -m benchmarks.decode_speed [--prompt-tokens 128] [--new-tokens 64] EXPORT [EXPORT ...]

The prompt is the first tokens of WikiText-2 test (the sink included in the count); greedy; CPU provider.
Prints a markdown table: prefill seconds and decode tokens/s per export, and the KV bytes per token.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CHILD = r"""
import json, sys
from tokenizers import Tokenizer
from runtime import Generator
from exporter.text import DEFAULT_EVAL
export, n_prompt, n_new = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
gen = Generator(export)
ids = gen.tokenizer.encode(open(DEFAULT_EVAL, encoding="utf-8").read()[:100000], add_special_tokens=False).ids
prompt = ids[:n_prompt - (gen.metadata.sink.get("token_id") is not None)]
r = gen.generate([prompt], max_new_tokens=n_new, stop_token_ids=[])
print(json.dumps({"prefill_s": r.timings.prefill_s, "decode_tok_s": r.timings.decode_tokens_per_s,
                  "kv_bytes_per_token": gen.metadata.kv_bytes_per_token}))
"""


def measure(export: str, prompt_tokens: int, new_tokens: int, runs: int = 3) -> dict:
    results = []
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", CHILD, export, str(prompt_tokens), str(new_tokens)],
                             capture_output=True, text=True, check=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    pick = lambda k: [r[k] for r in results]
    return {"export": export, "kv_bytes_per_token": results[0]["kv_bytes_per_token"],
            **{k: statistics.median(pick(k)) for k in ("prefill_s", "decode_tok_s")},
            **{k + "_range": (min(pick(k)), max(pick(k))) for k in ("prefill_s", "decode_tok_s")}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.decode_speed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("exports", nargs="+")
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=64)
    a = p.parse_args(argv)
    print(f"| export | KV B/token | prefill s ({a.prompt_tokens} tokens) | decode tok/s ({a.new_tokens} tokens) |")
    print("| --- | --- | --- | --- |")
    for e in a.exports:
        r = measure(e, a.prompt_tokens, a.new_tokens)
        print(f"| {e} | {r['kv_bytes_per_token']} | {r['prefill_s']:.3f} ({r['prefill_s_range'][0]:.3f}–"
              f"{r['prefill_s_range'][1]:.3f}) | {r['decode_tok_s']:.1f} ({r['decode_tok_s_range'][0]:.1f}–"
              f"{r['decode_tok_s_range'][1]:.1f}) |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
