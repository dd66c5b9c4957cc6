"""The KV memory table of an analysis: the original cache against the PCA settings it scored, fp32 and fp16,
from graphs/estimate.py (the contract's one byte count).

Entry point: `memory(cfg, quality, o)` -> (json, markdown).
"""
from __future__ import annotations

from dataclasses import asdict

from graphs import estimate
from graphs.contract import kv_bytes_per_token

from ..model.config import DecoderConfig
from .options import AnalyzeOptions


def memory(cfg: DecoderConfig, quality: dict | None, o: AnalyzeOptions) -> tuple[dict, str]:
    """The KV memory table: original vs the keys+values PCA settings scored above (their ranks), fp32 and fp16."""
    L, G, d = cfg.num_layers, cfg.num_kv_heads, cfg.head_dim
    layouts = {f"original {dt}": estimate.layout_for_ranks(L, G, d, dtype=dt) for dt in ("float32", "float16")}
    for row in (quality or {}).get("rows", []):
        if row["kind"] == "keys+values" and row["scope"] == "all layers":
            for dt in ("float32", "float16"):
                layouts[f"PCA {row['name']} {dt}"] = estimate.layout_for_ranks(
                    L, G, d, row["key_ranks"], row["value_ranks"], dt)
    md = estimate.markdown(layouts, o.seq_lengths, o.batch_sizes, sink=o.sink != "none")
    js = {"layouts": {n: lay.to_json() for n, lay in layouts.items()},
          "bytes_per_token": {n: kv_bytes_per_token(lay) for n, lay in layouts.items()},
          "per_layer": {n: [asdict(b) for b in estimate.per_layer(lay)] for n, lay in layouts.items()},
          "table": estimate.table(layouts, o.seq_lengths, o.batch_sizes, sink=o.sink != "none")}
    return js, md
