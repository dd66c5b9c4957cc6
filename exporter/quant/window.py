"""The float window's default: KIVI's residual beside the codes of a quantized cache, where it fits.

A float window of W keeps the exact latents of a sequence's newest W-1 tokens in float16 beside the codes. It
stops growing at W-1 tokens, so its bytes are a fixed amount per sequence, spread over the context a figure is
quoted for (q.window_context, 2048 by default; quant/design.window_bytes):

    window bytes per token = (W-1) x 2 x (kept components) / context

The default of QUANT=spectral is a window of 16 (docs/quantization.md, "The frontier in one run": at the same
bytes it cuts the codec's perplexity cost threefold at 4x, on WikiText-2 and off the calibration domain alike)
wherever it fits: one bit for every latent component plus the window within the budget (at 16x with K=full one
bit each is already the whole budget), and no bounded sliding window shorter than it. QUANT=uniform and
METHOD=raw default to none (the plain quantizer, for comparison); QUANT_WINDOW=W given is kept as it is.

Entry point: `with_float_window(o, cfg)`, the options with the default settled.
"""
from __future__ import annotations

from dataclasses import replace

from ..codec.packing import bytes_per_token
from ..options import ExportOptions, QuantOptions, given_rank
from .design import float16_bytes, window_bytes

DEFAULT_FLOAT_WINDOW = 16


def with_float_window(o: ExportOptions, cfg) -> ExportOptions:
    """o with QUANT_WINDOW settled: as given, or the default (module docstring), saying why when it is none."""
    q = o.quant
    if q.float_window is not None:
        return o
    if q.allocation != "spectral" or o.method == "raw" or o.is_auto:    # (K=auto with QUANT is refused later)
        return replace(o, quant=replace(q, float_window=0))
    windowed = replace(q, float_window=DEFAULT_FLOAT_WINDOW)
    reason = why_not(o, cfg, windowed)
    if reason:
        print(f"QUANT_WINDOW=0: the default window of {DEFAULT_FLOAT_WINDOW} does not fit ({reason})", flush=True)
        return replace(o, quant=replace(q, float_window=0))
    return replace(o, quant=windowed)


def why_not(o: ExportOptions, cfg, q: QuantOptions) -> str | None:
    """Why the window of q does not fit this export, or None when it does."""
    shortest = shortest_bounded_window(o, cfg)
    if shortest is not None and shortest < q.float_window:
        return f"this model's sliding window of {shortest} tokens is shorter"
    # projector files keep at most full rank: counting full is the safe side
    ranks = {kind: cfg.kv_dim if o.projectors else given_rank(o, kind, cfg.kv_dim) or cfg.kv_dim
             for kind in ("key", "value")}
    one_bit = cfg.num_layers * sum(bytes_per_token([1] * ranks[kind], q.scales(kind), q.group) for kind in ranks)
    window = window_bytes(cfg.num_layers * sum(ranks.values()), q)
    target = int(float16_bytes(cfg) // q.ratio)
    if one_bit + window > target:
        return (f"one bit for each latent component ({one_bit} B/token) and the window ({window:.1f}) pass "
                f"{target} B/token at QUANT_RATIO={q.ratio:g}: a lower K leaves it room")
    return None


def shortest_bounded_window(o: ExportOptions, cfg) -> int | None:
    """The shortest sliding window a layer keeps bounded (WINDOW_CACHE=bounded), or None: a float window must fit
    in it (its tail of the slots)."""
    bounded = [cfg.window(i) for i in range(cfg.num_layers) if cfg.window(i) and o.window_cache == "bounded"]
    return min(bounded, default=None)
