"""Which perplexity rows an analysis scores, highest priority first: PCA at k(fraction) of the variance for keys,
values or both, attention weights truncated to k(fraction) of their energy, other fractions, single layers.

Entry points: `Setting`, `plan_settings(cfg, eigs, weights, o)`, `parse_layers`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import UserError
from ..model.config import DecoderConfig
from . import spectrum as S
from .options import AnalyzeOptions


@dataclass
class Setting:
    """One perplexity row: what is compressed, where, at which ranks, on how many tokens."""
    name: str
    kind: str                      # 'keys' | 'values' | 'keys+values' | 'attention weights'
    scope: str                     # 'all layers' | 'layer i'
    fraction: float                # variance (or energy) fraction the ranks keep
    tokens: int
    key_ranks: list = field(default_factory=list)
    value_ranks: list = field(default_factory=list)
    weight_ranks: list | None = None


def ranks_at(eigs: list[np.ndarray], fraction: float) -> list[int]:
    return [S.rank_for_fraction(torch.from_numpy(e), fraction) for e in eigs]


def plan_settings(cfg: DecoderConfig, eigs: dict, weights: list[dict], o: AnalyzeOptions) -> list[Setting]:
    """The rows, highest priority first (the time budget drops the last): the --whole kinds over all layers at
    k(fraction) on the standard eval tokens; keys alone and values alone over all layers at k(fraction) on
    --layer-tokens; attention weights truncated to k(fraction) of their energy on --weight-tokens; keys alone and
    values alone at the other --fractions; single-layer rows for --layers."""
    key_tap = "key_pre"      # the export's default key mode (GPT-2: keys before = after, no RoPE)
    n, none, f = cfg.num_layers, [None] * cfg.num_layers, o.fraction
    k = lambda tap, frac: ranks_at(eigs[(tap, "no_pos0")], frac)
    both = {"keys": (key_tap, None), "values": (None, "value"), "keys+values": (key_tap, "value")}
    out = []
    for kind in o.whole:
        kt, vt = both[kind]
        out.append(Setting(f"{kind} k{f:.0%}", kind, "all layers", f, o.eval_tokens,
                           k(kt, f) if kt else none, k(vt, f) if vt else none))
    sweep = []
    fractions = sorted(set(o.fractions) | {f}, key=lambda x: (x != f, x)) if o.fractions and o.layer_tokens else []
    for frac in fractions:
        sweep.append(Setting(f"keys k{frac:.0%}", "keys", "all layers", frac, o.layer_tokens, k(key_tap, frac), none))
        sweep.append(Setting(f"values k{frac:.0%}", "values", "all layers", frac, o.layer_tokens, none,
                             k("value", frac)))
    out += sweep[:2]
    if o.weight_tokens:
        key = f"k{round(100 * f)}"
        ranks = [{m: row[m][key] for m in ("q", "k", "v", "o")} for row in weights]
        out.append(Setting(f"attention weights k{f:.0%}", "attention weights", "all layers", f, o.weight_tokens,
                           none, none, ranks))
        if o.weight_rows == "each":     # one matrix kind at a time, the others intact
            for m in ("q", "k", "v", "o"):
                only = [{name: r[name] if name == m else min(row[name]["shape"]) for name in r}
                        for r, row in zip(ranks, weights)]
                out.append(Setting(f"attention weights {m} only k{f:.0%}", f"attention weights ({m} only)",
                                   "all layers", f, o.weight_tokens, none, none, only))
    out += sweep[2:]
    for i in (parse_layers(o.layers, n) if o.layer_tokens else []):
        only = lambda ranks: [r if j == i else None for j, r in enumerate(ranks)]
        out.append(Setting(f"layer {i} keys k{f:.0%}", "keys", f"layer {i}", f, o.layer_tokens,
                           only(k(key_tap, f)), none))
        out.append(Setting(f"layer {i} values k{f:.0%}", "values", f"layer {i}", f, o.layer_tokens, none,
                           only(k("value", f))))
    return out


def parse_layers(text: str, n: int) -> list[int]:
    """'none', 'all', 'middle', or comma-separated indices -> layer indices."""
    text = (text or "none").strip().lower()
    if text == "none":
        return []
    if text == "all":
        return list(range(n))
    out = []
    for part in text.split(","):
        i = n // 2 if part == "middle" else n - 1 if part == "last" else 0 if part == "first" else int(part)
        if not 0 <= i < n:
            raise UserError(f"--layers {part} is out of range: this model has layers 0..{n - 1}")
        out.append(i)
    return out


def rank_summary(ranks: list) -> dict | None:
    r = [x for x in ranks if x is not None]
    if not r:
        return None
    return {"mean": sum(r) / len(r), "min": min(r), "max": max(r), "layers": len(r)}
