"""KV-cache memory, estimated from the cache layout: per layer, per token, and in total for sequence lengths and
batch sizes, original vs compressed, fp32 vs fp16.

Built on graphs/contract.py (kv_bytes_per_token / kv_bytes are the one source of byte figures); this module
only slices a layout per layer, builds layouts from model numbers and ranks, and tabulates.

Sink handling: the sink is one ordinary cached token at position 0 of every sequence, so it adds nothing per
token; a sequence of N text tokens holds N + 1 cache slots when a sink is used.

    python -m graphs.estimate --layers 12 --kv-heads 12 --head-dim 64 --k 9        # GPT-2 from its config
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from .contract import CacheLayout, CacheShape, kv_bytes, kv_bytes_per_token

SEQ_LENGTHS = (512, 1024, 2048, 4096, 8192, 16384, 32768)
BATCH_SIZES = (1, 8)
MIB = 1024 ** 2


def layout_for_ranks(num_layers: int, kv_heads: int, head_dim: int, key_ranks=None, value_ranks=None,
                     dtype: str = "float32") -> CacheLayout:
    """The layout an export with these ranks has: an uncompressed layer stores kv_heads x head_dim numbers per
    token, a compressed one a single rank-r latent (contract: kv_heads 1, head_size r). Ranks: an int for every
    layer, a per-layer list, or None (uncompressed); None entries in a list are uncompressed layers."""
    def shapes(ranks):
        ranks = ranks if isinstance(ranks, (list, tuple)) else [ranks] * num_layers
        if len(ranks) != num_layers:
            raise ValueError(f"{len(ranks)} ranks for {num_layers} layers")
        return tuple(CacheShape(kv_heads, head_dim) if r is None else CacheShape(1, int(r)) for r in ranks)
    return CacheLayout(shapes(key_ranks), shapes(value_ranks), dtype)


def with_dtype(layout: CacheLayout, dtype: str) -> CacheLayout:
    return CacheLayout(layout.keys, layout.values, dtype)


def layer_layout(layout: CacheLayout, layer: int) -> CacheLayout:
    """A one-layer layout: layer `layer` of `layout`, for per-layer byte figures."""
    return CacheLayout((layout.keys[layer],), (layout.values[layer],), layout.dtype)


@dataclass(frozen=True)
class LayerBytes:
    layer: int
    key: int       # bytes per token of this layer's key cache
    value: int     # bytes per token of this layer's value cache

    @property
    def total(self) -> int:
        return self.key + self.value


def per_layer(layout: CacheLayout) -> list[LayerBytes]:
    """Bytes per token of every layer's key and value cache; they sum to kv_bytes_per_token(layout)."""
    out = []
    for i in range(layout.num_layers):
        both = kv_bytes_per_token(layer_layout(layout, i))
        key = kv_bytes_per_token(CacheLayout((layout.keys[i],), (), layout.dtype))
        out.append(LayerBytes(i, key, both - key))
    return out


def cached_tokens(tokens: int, sink: bool) -> int:
    """Cache slots a sequence of `tokens` text tokens occupies: one more with the sink prefix."""
    return tokens + (1 if sink else 0)


def total_bytes(layout: CacheLayout, tokens: int, batch: int = 1, sink: bool = True) -> int:
    """Bytes of the whole cache for `batch` sequences of `tokens` text tokens each."""
    return kv_bytes(layout, cached_tokens(tokens, sink), batch)


def table(layouts: dict[str, CacheLayout], seq_lengths=SEQ_LENGTHS, batch_sizes=BATCH_SIZES,
          sink: bool = True) -> list[dict]:
    """One row per (batch, sequence length) with the total bytes of every named layout."""
    return [{"batch": b, "tokens": t, "bytes": {name: total_bytes(lay, t, b, sink) for name, lay in layouts.items()}}
            for b in batch_sizes for t in seq_lengths]


def human(n: float) -> str:
    """Bytes in binary units (KiB, MiB, GiB), three significant figures."""
    for unit, size in (("GiB", 1024 ** 3), ("MiB", MIB), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f} B"


def markdown(layouts: dict[str, CacheLayout], seq_lengths=SEQ_LENGTHS, batch_sizes=BATCH_SIZES,
             sink: bool = True) -> str:
    """The memory table as markdown: bytes per token, then totals per batch size and sequence length."""
    names = list(layouts)
    per_tok = {n: kv_bytes_per_token(layouts[n]) for n in names}
    base = per_tok[names[0]]
    lines = ["| | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names),
             "| bytes per token (all layers, K+V) | " + " | ".join(f"{per_tok[n]:,}" for n in names) + " |",
             f"| ratio to {names[0]} | " + " | ".join(f"{base / per_tok[n]:.2f}x" for n in names) + " |"]
    for row in table(layouts, seq_lengths, batch_sizes, sink):
        lines.append(f"| batch {row['batch']}, {row['tokens']:,} tokens | " +
                     " | ".join(human(row["bytes"][n]) for n in names) + " |")
    note = " (+1 sink slot per sequence)" if sink else ""
    return "\n".join(lines) + f"\n\nTotals: batch x (tokens{note}) x bytes per token.\n"


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m graphs.estimate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, required=True, help="decoder layers")
    p.add_argument("--kv-heads", type=int, required=True, help="key/value heads per layer")
    p.add_argument("--head-dim", type=int, required=True, help="dims per head")
    p.add_argument("--k", default=None, help="latent rank of keys and values per layer (compressed column)")
    p.add_argument("--seq", default=",".join(map(str, SEQ_LENGTHS)), help="sequence lengths (text tokens)")
    p.add_argument("--batch", default=",".join(map(str, BATCH_SIZES)), help="batch sizes")
    p.add_argument("--no-sink", action="store_true", help="no sink slot per sequence")
    a = p.parse_args(argv)
    layouts = {}
    for dtype in ("float32", "float16"):
        layouts[f"original {dtype}"] = layout_for_ranks(a.layers, a.kv_heads, a.head_dim, dtype=dtype)
    if a.k:
        for dtype in ("float32", "float16"):
            layouts[f"k={a.k} {dtype}"] = layout_for_ranks(a.layers, a.kv_heads, a.head_dim, int(a.k), int(a.k),
                                                          dtype)
    print(markdown(layouts, _ints(a.seq), _ints(a.batch), not a.no_sink))
    return 0


if __name__ == "__main__":
    sys.exit(main())
