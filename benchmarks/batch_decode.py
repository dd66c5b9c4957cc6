"""Decode throughput where the cache dominates: a batch x context grid, our exports and onnxruntime-genai's models.

    python -m benchmarks.batch_decode [--grid 8x4096,8x1024,1x4096,1x128] [--new-tokens 64] [--runs 1]
        [--ours build/<export>,...] [--genai build/bench/genai-smollm2-135m-fp32-cpu,...-int4-cpu]
        [--llama-cpp f16,q8_0,q4_0] [--hf-quantized fp8,quanto4]

Each cell is a fresh process per runtime: B prompts of N tokens each (B consecutive slices of WikiText-2 test,
the sink first, all of one length so shared-buffer exports take them), a real prefill, then NEW_TOKENS greedy
steps with no stop token. Figures: time to first token (the whole batch's prefill), decode tokens/s of the
batch (tokens of all sequences per second of decode steps), peak RSS of the process (VmHWM), and how many of
the batch's greedy tokens equal the first runtime's (the reference). Peers are measured in the same run; the
machine is shared, so a single run per cell is a rough figure and the median of --runs is reported.

--llama-cpp adds llama.cpp per KV cache type (benchmarks/llama_cpp_peer.batched: llama-batched-bench on SmolLM2's
F32 GGUF, the same weights as ours, flash attention on): its prompts are filler tokens, not WikiText (the cost of
attention does not depend on them) and it prints no tokens, so its agreement column is empty.

--hf-quantized adds HF transformers (PyTorch, fp32, sdpa) generating with its QuantizedCache (KIVI-style: the last
128 tokens in float, older ones quantized): `fp8` (per tensor, in transformers) or `quanto4` / `quanto2` (optimum-
quanto int4/int2 per group of 64, installed apart from .venv into build/venvs/quanto-site when asked for).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

OURS = r"""
import json, sys, time
from benchmarks.batch_decode import prompts
from benchmarks.runtime_bench.common import peak_rss_gib
from runtime import Generator
export, B, N, new = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
gen = Generator(export, provider="cpu")
sink = gen.metadata.sink.get("token_id")
batch = [p[1:] for p in prompts(gen.tokenizer, sink, B, N)]            # the runtime adds the sink itself
r = gen.generate(batch, max_new_tokens=new, stop_token_ids=[])
print(json.dumps({"ttft_s": r.timings.prefill_s, "decode_tok_s": r.timings.decode_tokens_per_s,
                  "peak_rss_gib": peak_rss_gib(), "tokens": r.tokens,
                  "kv_bytes_per_token": gen.metadata.kv_bytes_per_token}))
"""

GENAI = r"""
import json, os, sys, time
import numpy as np
import onnxruntime_genai as og
from tokenizers import Tokenizer
from benchmarks.batch_decode import prompts
from benchmarks.runtime_bench.common import peak_rss_gib
model_dir, B, N, new = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
config = og.Config(model_dir)
config.overlay(json.dumps({"model": {"eos_token_id": 16, "decoder": {"session_options": {
    "intra_op_num_threads": os.cpu_count() or 1}}}}))        # as benchmarks/runtime_bench/child_genai.py says why
model = og.Model(config)
tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
with open(os.path.join(model_dir, "genai_config.json")) as f:
    sink = json.load(f)["model"]["bos_token_id"]
ids = np.array(prompts(tok, sink, B, N), dtype=np.int32)                # (B, N), the sink first
params = og.GeneratorParams(model)
params.set_search_options(max_length=N + new, do_sample=False, batch_size=B)
t0 = time.perf_counter()
g = og.Generator(model, params)
g.append_tokens(ids)
g.generate_next_token()
tokens = [[int(t)] for t in g.get_next_tokens()]
t1 = time.perf_counter()
for _ in range(new - 1):
    g.generate_next_token()
    for row, t in zip(tokens, g.get_next_tokens()):
        row.append(int(t))
t2 = time.perf_counter()
d = json.load(open(os.path.join(model_dir, "genai_config.json")))["model"]["decoder"]
print(json.dumps({"ttft_s": t1 - t0, "decode_tok_s": B * (new - 1) / (t2 - t1), "peak_rss_gib": peak_rss_gib(),
                  "tokens": tokens,
                  "kv_bytes_per_token": 2 * d["num_hidden_layers"] * d["num_key_value_heads"] * d["head_size"] * 4}))
"""


HF_QUANTIZED = r"""
import json, os, sys, time
import torch
from transformers import AutoModelForCausalLM
from transformers.generation.streamers import BaseStreamer
from tokenizers import Tokenizer
from benchmarks.batch_decode import prompts
from benchmarks.runtime_bench.common import HF_DIR, peak_rss_gib
backend, B, N, new = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
model = AutoModelForCausalLM.from_pretrained(HF_DIR, dtype=torch.float32, attn_implementation="sdpa").eval()
model.generation_config.eos_token_id = None                           # exactly `new` tokens
tok = Tokenizer.from_file(os.path.join(HF_DIR, "tokenizer.json"))
ids = torch.tensor(prompts(tok, model.config.bos_token_id, B, N))     # (B, N), the sink first
stamps = []
class Stamps(BaseStreamer):
    def put(self, value):
        stamps.append(time.perf_counter())
    def end(self):
        pass
config = {"backend": "fp8"} if backend == "fp8" else {"backend": "quanto", "nbits": int(backend[len("quanto"):])}
with torch.inference_mode():
    t0 = time.perf_counter()
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new,
                         cache_implementation="quantized", cache_config=config, streamer=Stamps())
first, last = stamps[1], stamps[-1]                                   # stamps[0]: the prompt
print(json.dumps({"ttft_s": first - t0, "decode_tok_s": B * (new - 1) / (last - first),
                  "peak_rss_gib": peak_rss_gib(), "tokens": out[:, N:].tolist()}))
"""

QUANTO_SITE = "build/venvs/quanto-site"


def hf_quantized(backend: str, batch: int, n: int, new: int, runs: int) -> dict:
    """HF transformers with QuantizedCache(backend) in a child (optimum-quanto on its path for quanto*)."""
    env = dict(os.environ)
    if backend.startswith("quanto"):
        if not os.path.isdir(QUANTO_SITE):
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", QUANTO_SITE,
                            "optimum-quanto==0.2.7", "ninja"], check=True)
        env["PYTHONPATH"] = os.pathsep.join([os.path.abspath(QUANTO_SITE), env.get("PYTHONPATH", "")])
    return median_of([run_child(HF_QUANTIZED, [backend, batch, n, new], f"HF QuantizedCache {backend}", env)
                      for _ in range(runs)])


def prompts(tokenizer, sink: int, batch: int, n_tokens: int) -> list[list[int]]:
    """`batch` prompts of n_tokens each (sink first): consecutive slices of WikiText-2 test."""
    from exporter.options import DEFAULT_EVAL
    text = open(DEFAULT_EVAL, encoding="utf-8").read()[:8 * batch * n_tokens + 10_000]
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    step = n_tokens - 1
    if len(ids) < batch * step:
        raise SystemExit(f"{DEFAULT_EVAL} gave {len(ids)} tokens, {batch * step} wanted")
    return [[sink] + ids[i * step:(i + 1) * step] for i in range(batch)]


def run_child(code: str, args: list, what: str, env: dict | None = None) -> dict:
    """Run `code` in a fresh interpreter with args; the JSON line it prints last."""
    out = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"measuring {what} at {args[-3]}x{args[-2]} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def median_of(results: list[dict]) -> dict:
    """The median of each timing over the runs; tokens and bytes of the first (None where a runtime has none)."""
    med = lambda k: statistics.median(r[k] for r in results)
    return {"ttft_s": med("ttft_s"), "decode_tok_s": med("decode_tok_s"), "peak_rss_gib": med("peak_rss_gib"),
            "tokens": results[0].get("tokens"), "kv_bytes_per_token": results[0].get("kv_bytes_per_token"),
            "runs": len(results)}


def measure(code: str, target: str, batch: int, n: int, new: int, runs: int) -> dict:
    return median_of([run_child(code, [target, batch, n, new], target) for _ in range(runs)])


def llama_cpp(cache: str, batch: int, n: int, new: int, runs: int) -> dict:
    from benchmarks.llama_cpp_peer import batched
    return median_of([batched(cache, batch, n, new) for _ in range(runs)])


def kv_cell(bytes_per_token: int | None) -> str:
    return f"{bytes_per_token:,}" if bytes_per_token else "—"


def agreement(tokens: list[list[int]] | None, reference: list[list[int]]) -> str:
    if tokens is None:
        return "—"
    same = sum(a == b for row, ref in zip(tokens, reference) for a, b in zip(row, ref))
    return f"{same}/{sum(len(r) for r in reference)}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.batch_decode", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", default="8x4096,8x1024,1x4096,1x128", help="BATCHxCONTEXT cells, comma-separated")
    p.add_argument("--ours", default="build/smollm2-135m-kfull,build/smollm2-135m-kfull-shared,"
                                     "build/smollm2-135m-kfull-shared-kvint8,build/smollm2-135m-kfull-shared-kvint8-codes",
                   help="our export directories; the first is the reference for greedy agreement")
    p.add_argument("--genai", default="build/bench/genai-smollm2-135m-fp32-cpu,build/bench/genai-smollm2-135m-int4-cpu",
                   help="onnxruntime-genai builder model directories, comma-separated ('' to leave them out)")
    p.add_argument("--llama-cpp", default="", help="llama.cpp KV cache types, e.g. f16,q8_0,q4_0 (builds llama.cpp "
                   "into build/llama-cpp first when missing, about 10 min)")
    p.add_argument("--hf-quantized", default="", help="HF QuantizedCache backends: fp8, quanto4, quanto2 "
                   "(build/bench/hf-smollm2-135m must exist: make bench-runtime prepares it)")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--runs", type=int, default=1)
    a = p.parse_args(argv)
    # (label, measure(batch, context) -> result) per runtime, in table order
    child = lambda code, target: lambda b, n: measure(code, target, b, n, a.new_tokens, a.runs)
    targets = [(e, child(OURS, e)) for e in a.ours.split(",") if e] + \
        [(g, child(GENAI, g)) for g in a.genai.split(",") if g] + \
        [(f"llama.cpp F32 weights, {c} cache", lambda b, n, c=c: llama_cpp(c, b, n, a.new_tokens, a.runs))
         for c in a.llama_cpp.split(",") if c] + \
        [(f"HF transformers fp32, QuantizedCache {q}", lambda b, n, q=q: hf_quantized(q, b, n, a.new_tokens, a.runs))
         for q in a.hf_quantized.split(",") if q]
    print(f"{a.new_tokens} new tokens, greedy, median of {a.runs} run(s) per cell; the first row of each cell is "
          "the reference of the agreement column.\n")
    print("| batch x context | runtime / export | KV B/token | TTFT s | decode tok/s | vs first | peak RSS GiB | "
          "greedy == first |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    rows = []
    for cell in a.grid.split(","):
        batch, n = (int(x) for x in cell.split("x"))
        first = None
        for target, run in targets:
            r = run(batch, n)
            first = first or r
            rows.append({"batch": batch, "context": n, "target": target, **{k: v for k, v in r.items()
                                                                              if k != "tokens"}})
            print(f"| {batch} x {n} | {target} | {kv_cell(r['kv_bytes_per_token'])} | {r['ttft_s']:.2f} | "
                  f"{r['decode_tok_s']:.1f} | {r['decode_tok_s'] / first['decode_tok_s']:.2f}x | "
                  f"{r['peak_rss_gib']:.2f} | {agreement(r['tokens'], first['tokens'])} |", flush=True)
    with open("build/batch-decode.json", "w") as f:
        json.dump({"command": "python -m benchmarks.batch_decode " + " ".join(argv or sys.argv[1:]), "rows": rows},
                  f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
