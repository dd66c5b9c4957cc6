"""What a saved generation costs on disk: the cache's fixed-width codes against entropy coders, per export.

    python -m benchmarks.saved_cache [--exports build/<export>,...] [--prompt-tokens 2048] [--new-tokens 16]

For each export: one WikiText-2 prompt of N tokens, greedy generation of NEW tokens keeping the state, saved with
the runtime (`runtime/saved.py`: zstd level 3 over a safetensors file), loaded back and continued for NEW more,
checked against one unbroken call of 2 x NEW tokens. Reported per export: the cache's bytes as the graph holds them
(fixed-width codes), the file, what zstd level 19 and xz (lzma, preset 6) would make of the same cache bytes, and
the order-0 entropy of each byte position of a token's row (per layer, key or value, KV head: the size an
arithmetic coder with one static model per byte position would reach, side information not counted), each as
bits per key or value number of the model (its uncompressed cache's count: 2 x layers x KV heads x head size a
token) and as a share of the fixed width; and the seconds to save and to load.
"""
from __future__ import annotations

import argparse
import lzma
import os
import sys
import tempfile
import time

import numpy as np

DEFAULT_EXPORTS = "build/smollm2-135m-kfull,build/smollm2-135m-kfull-shared-kvint8-codes"


def position_entropy_bits(a: np.ndarray) -> float:
    """Order-0 entropy in bits, summed over every byte position of a token's row: a (B, heads, S, width) array
    viewed as bytes, each (head, byte) position's distribution over the B*S tokens."""
    rows = np.ascontiguousarray(a.transpose(0, 2, 1, 3)).view(np.uint8).reshape(a.shape[0] * a.shape[2], -1)
    total = 0.0
    for column in rows.T:                                                  # one byte position at a time
        counts = np.bincount(column, minlength=256)
        p = counts[counts > 0] / len(column)
        total += -(p * np.log2(p)).sum() * len(column)
    return total


def measure(export: str, prompt_tokens: int, new_tokens: int) -> dict:
    import zstandard
    from benchmarks.batch_decode import prompts
    from runtime import Generator
    gen = Generator(export, provider="cpu")
    prompt = [p[1:] for p in prompts(gen.tokenizer, gen.metadata.sink.get("token_id"), 1, prompt_tokens)]
    whole = gen.generate(prompt, max_new_tokens=2 * new_tokens, stop_token_ids=[])
    first = gen.generate(prompt, max_new_tokens=new_tokens, stop_token_ids=[], keep_state=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "session.kvs")
        t0 = time.perf_counter()
        file_bytes, cache_bytes = gen.save_state(path, first.state)
        t1 = time.perf_counter()
        state = gen.load_state(path, max_new_tokens=new_tokens)
        t2 = time.perf_counter()
    rest = gen.generate(None, max_new_tokens=new_tokens, stop_token_ids=[], resume=state)
    arrays = first.state.cache.arrays()
    raw = b"".join(a.tobytes() for a in arrays.values())
    m = gen.metadata.model                      # the numbers the uncompressed cache would hold: keys and values
    tokens = first.state.attention_mask.shape[1]
    values = tokens * 2 * m["num_layers"] * m["num_kv_heads"] * m["head_dim"]
    bits = lambda n_bytes: 8 * n_bytes / values
    return {"export": export, "tokens": tokens, "values": values,
            "dtype": str(next(iter(arrays.values())).dtype), "cache_bytes": cache_bytes, "file_bytes": file_bytes,
            "fixed_bits": bits(cache_bytes), "file_bits": bits(file_bytes),
            "zstd19_bits": bits(len(zstandard.ZstdCompressor(level=19).compress(raw))),
            "xz_bits": bits(len(lzma.compress(raw, preset=6))),
            "entropy_bits": sum(position_entropy_bits(a) for a in arrays.values()) / values,
            "save_s": t1 - t0, "load_s": t2 - t1,
            "resumed_equal": [a + b for a, b in zip(first.tokens, rest.tokens)] == whole.tokens}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.saved_cache", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exports", default=DEFAULT_EXPORTS)
    p.add_argument("--prompt-tokens", type=int, default=2048)
    p.add_argument("--new-tokens", type=int, default=16)
    a = p.parse_args(argv)
    print(f"one prompt of {a.prompt_tokens} WikiText-2 test tokens, {a.new_tokens} generated, saved, loaded, "
          f"{a.new_tokens} more; bits per key/value number of the model (share of the fixed width)\n")
    print("| export | cached | fixed width | file (zstd 3) | zstd 19 | xz | order-0 entropy per byte position | "
          "save s | load s | resumed == unbroken |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for export in [e for e in a.exports.split(",") if e]:
        r = measure(export, a.prompt_tokens, a.new_tokens)
        share = lambda b: f"{b:.2f} ({100 * b / r['fixed_bits']:.1f} %)"
        print(f"| {os.path.basename(export)} | {r['tokens']} tokens, {r['cache_bytes'] / 2**20:.1f} MiB {r['dtype']} | "
              f"{r['fixed_bits']:.2f} | {share(r['file_bits'])} | {share(r['zstd19_bits'])} | {share(r['xz_bits'])} | "
              f"{share(r['entropy_bits'])} | {r['save_s']:.2f} | {r['load_s']:.2f} | {r['resumed_equal']} |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
