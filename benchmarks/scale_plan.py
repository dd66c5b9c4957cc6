"""Sizes that decide how a model bigger than the machine is calibrated and exported: per layer and in total.

    python -m benchmarks.scale_plan [--model DIR ...] [--tokens 16384] [--rate PARAM_TOKENS_PER_S]

For published shapes (below; no hub here, so they are written out) and any local HF directory given, one row each:
  weights       float32 bytes of the whole model, and of its largest decoder layer (what layer streaming holds)
  statistics    the export's calibration statistics (calib/statistics.kv_accumulators: per layer, float64 second
                moments of keys before and after RoPE, values, what attention makes of the values per query head,
                and the queries before and after RoPE as H per-head (d, d) blocks, all the key metric reads);
                next to it, the size with whole (H*d)^2 query moments, as they were kept before
  KV bytes      per token, all layers: float16, the int8 cache, and a 4x code
A second table plans calibration and export per model: the parameters a token passes through (a mixture of
experts runs top-k routed + shared experts of each MoE layer), what one layers-mode worker holds (the largest
layer in float32 twice, HF's and the block's, as docs/scale.md measured, + every window's hidden states + that
layer's statistics), the calibration's wall time on this machine at --rate (parameter-tokens per second; the
default is the measured layer-streamed run of TinyLlama's shapes in docs/scale.md: 2,048 tokens through its 22
layers in 60.6 s), and the ONNX weights file in float32 and float16 (the cache setting does not
change it: projectors are a few MB). Formulas only: nothing is loaded but the config.
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
    # GLM-4.5 (355B total, 32B active): 3 dense layers, then 89 of 160 routed experts (top 8) + 1 shared; its one
    # multi-token-prediction layer is left out (an export would drop it).
    "GLM-4.5-355B-A32B": dict(num_hidden_layers=92, hidden_size=5120, intermediate_size=12288,
                              num_attention_heads=96, num_key_value_heads=8, head_dim=128, vocab_size=151552,
                              tie_word_embeddings=False, first_k_dense_replace=3, n_routed_experts=160,
                              n_shared_experts=1, num_experts_per_tok=8, moe_intermediate_size=1536),
}
# The measured run behind the default --rate (docs/scale.md, `python -m benchmarks.streamed_calibration --model
# <TinyLlama-shaped dir> --tokens 2048`, streamed): 2,048 tokens through TinyLlama's 22 layers in 60.6 s.
MEASURED_RUN = {"model": "TinyLlama-1.1B", "tokens": 2048, "seconds": 60.6}
GIB = 2 ** 30


def layer_params(c: dict) -> tuple[int, int, int, int]:
    """(parameters of a dense layer, of a MoE layer (0 if none), the MoE layer's parameters a token runs through,
    MoE layers): q, k, v, o + SwiGLU (or the experts and router) + two norms."""
    D, F, H, G = (c[k] for k in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads"))
    d = c.get("head_dim") or D // H
    attn = D * H * d + 2 * D * G * d + H * d * D + 2 * D
    experts = c.get("n_routed_experts", 0)
    if not experts:
        return attn + 3 * D * F, 0, 0, 0
    expert = 3 * D * c["moe_intermediate_size"]
    shared = c.get("n_shared_experts", 0)
    moe = attn + (experts + shared) * expert + D * experts
    active = attn + (c["num_experts_per_tok"] + shared) * expert + D * experts
    return attn + 3 * D * F, moe, active, c["num_hidden_layers"] - c.get("first_k_dense_replace", 0)


def sizes(c: dict) -> dict:
    L, D, H, G = (c[k] for k in ("num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads"))
    d = c.get("head_dim") or D // H
    dense, moe, moe_active, moe_layers = layer_params(c)
    layer = 4 * max(dense, moe)                                    # the largest layer, float32
    embed = c["vocab_size"] * D * (1 if c.get("tie_word_embeddings") else 2)
    params = (L - moe_layers) * dense + moe_layers * moe + embed
    total = 4 * params
    kv = G * d
    moment = lambda n: 8 * (n * n + n)                             # float64 outer sum + sum
    per_layer_stats = 3 * moment(kv) + 2 * moment(H * d) + moment(kv + 1)   # value_mix: per head, (G*d+1)
    blocks = 3 * moment(kv) + 2 * 8 * (H * d * d + H * d) + moment(kv + 1)  # queries as H diagonal blocks
    return {"layers": L, "weights_gib": total / GIB, "layer_gib": layer / GIB, "stats_gib": L * per_layer_stats / GIB,
            "stats_blocks_gib": L * blocks / GIB, "kv_fp16": 2 * L * kv * 2, "kv_int8": 2 * L * kv,
            "kv_4x": 2 * L * kv * 2 // 4, "params": params, "layer_stats_gib": blocks / GIB,
            "active_layer_params": (L - moe_layers) * dense + moe_layers * moe_active, "hidden": D}


def measured_rate() -> float:
    """Layer parameter-tokens per second of MEASURED_RUN."""
    c = PUBLISHED[MEASURED_RUN["model"]]
    return c["num_hidden_layers"] * layer_params(c)[0] * MEASURED_RUN["tokens"] / MEASURED_RUN["seconds"]


def plan(s: dict, tokens: int, rate: float) -> dict:
    """Calibration of `tokens` tokens layer by layer, and the export's weights file."""
    hidden_gib = tokens * s["hidden"] * 4 / GIB                    # every window's hidden states, float32
    return {"worker_gib": 2 * s["layer_gib"] + hidden_gib + s["layer_stats_gib"], "hidden_gib": hidden_gib,
            "hours": s["active_layer_params"] * tokens / rate / 3600,
            "onnx_fp32_gib": 4 * s["params"] / GIB, "onnx_fp16_gib": 2 * s["params"] / GIB}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scale_plan", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", default=[], help="a local HF directory (its config.json)")
    p.add_argument("--tokens", type=int, default=16384, help="calibration tokens of the plan (the export's default)")
    p.add_argument("--rate", type=float, default=measured_rate(),
                   help="layer parameter-tokens per second of a streamed calibration (default: measured here)")
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
    print(f"\nThe plan: {a.tokens:,} calibration tokens, layer by layer, at {a.rate:.3g} parameter-tokens/s "
          f"(this machine's measured rate unless --rate says otherwise)\n")
    print("| model | parameters (B) | a token passes (B) | one worker holds (GiB) | of it hidden states (GiB) | "
          "calibration here (h) | ONNX weights fp32 (GiB) | fp16 (GiB) |")
    print("|" + " --- |" * 8)
    for name, c in configs.items():
        s = sizes(c)
        p_ = plan(s, a.tokens, a.rate)
        print(f"| {name} | {s['params'] / 1e9:.2f} | {s['active_layer_params'] / 1e9:.2f} | {p_['worker_gib']:.2f} | "
              f"{p_['hidden_gib']:.2f} | {p_['hours']:.2f} | {p_['onnx_fp32_gib']:.1f} | {p_['onnx_fp16_gib']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
