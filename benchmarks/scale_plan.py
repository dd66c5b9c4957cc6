"""Sizes that decide how a model bigger than the machine is calibrated and exported: per layer and in total.

    python -m benchmarks.scale_plan [--model DIR ...]

For published shapes (below; no hub here, so they are written out) and any local HF directory given, one row each:
  weights       float32 bytes of the whole model, and of its largest decoder layer (what layer streaming holds)
  statistics    the export's calibration statistics (calib/statistics.kv_accumulators: per layer, float64 second
                moments of keys before and after RoPE, values, what attention makes of the values per query head,
                and the queries before and after RoPE as H per-head (d, d) blocks, all the key metric reads);
                next to it, the size with whole (H*d)^2 query moments, as they were kept before
  KV bytes      per token, all layers: float16, the int8 cache, and a 4x code
Formulas only: nothing is loaded but the config.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

# Published configs (the HF config.json of each), the fields these sizes need.
PUBLISHED = {
    "SmolLM2-135M": dict(num_hidden_layers=30, hidden_size=576, intermediate_size=1536, num_attention_heads=9,
                         num_key_value_heads=3, head_dim=64, vocab_size=49152, tie_word_embeddings=True),
    "TinyLlama-1.1B": dict(num_hidden_layers=22, hidden_size=2048, intermediate_size=5632, num_attention_heads=32,
                           num_key_value_heads=4, head_dim=64, vocab_size=32000, tie_word_embeddings=False),
    "Llama-2-7B": dict(num_hidden_layers=32, hidden_size=4096, intermediate_size=11008, num_attention_heads=32,
                       num_key_value_heads=32, head_dim=128, vocab_size=32000, tie_word_embeddings=False),
    "Llama-3.1-70B": dict(num_hidden_layers=80, hidden_size=8192, intermediate_size=28672, num_attention_heads=64,
                          num_key_value_heads=8, head_dim=128, vocab_size=128256, tie_word_embeddings=False),
}
GIB = 2 ** 30


def sizes(c: dict) -> dict:
    L, D, F, H, G = (c[k] for k in ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
                                    "num_key_value_heads"))
    d = c.get("head_dim") or D // H
    attn = D * H * d + 2 * D * G * d + H * d * D                   # q, k, v, o
    layer = 4 * (attn + 3 * D * F + 2 * D)                         # + SwiGLU + two norms, float32
    embed = c["vocab_size"] * D * (1 if c.get("tie_word_embeddings") else 2)
    total = L * layer + 4 * embed
    kv = G * d
    moment = lambda n: 8 * (n * n + n)                             # float64 outer sum + sum
    per_layer_stats = 3 * moment(kv) + 2 * moment(H * d) + moment(kv + 1)   # value_mix: per head, (G*d+1)
    blocks = 3 * moment(kv) + 2 * 8 * (H * d * d + H * d) + moment(kv + 1)  # queries as H diagonal blocks
    return {"layers": L, "weights_gib": total / GIB, "layer_gib": layer / GIB, "stats_gib": L * per_layer_stats / GIB,
            "stats_blocks_gib": L * blocks / GIB, "kv_fp16": 2 * L * kv * 2, "kv_int8": 2 * L * kv,
            "kv_4x": 2 * L * kv * 2 // 4}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scale_plan", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", default=[], help="a local HF directory (its config.json)")
    a = p.parse_args(argv)
    configs = dict(PUBLISHED)
    for m in a.model:
        with open(os.path.join(m, "config.json")) as f:
            configs[os.path.basename(os.path.normpath(m))] = json.load(f)
    print("| model | layers | weights fp32 (GiB) | largest layer (GiB) | statistics (GiB) | with whole query "
          "moments (GiB) | KV B/token fp16 | int8 | 4x |")
    print("|" + " --- |" * 9)
    for name, c in configs.items():
        s = sizes(c)
        print(f"| {name} | {s['layers']} | {s['weights_gib']:.2f} | {s['layer_gib']:.3f} | {s['stats_blocks_gib']:.2f} | "
              f"{s['stats_gib']:.2f} | {s['kv_fp16']:,} | {s['kv_int8']:,} | {s['kv_4x']:,} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
