"""The analysis's activation statistics: TapStatistics (robust variants, outliers) of every (layer, tap), captured
through the toolchain's capture and cached in build/calib in the one statistics format (calib/store.py).

Entry point: `tap_statistics(decoder, tok, cfg, o, sink_id, fingerprint)`.
"""
from __future__ import annotations

import os

from ..calib.capture import capture
from ..calib.statistics import MIN_CALIB_TOKENS
from ..calib.store import cache_key, load_statistics, save_statistics
from ..calib.text import text_sha256, token_windows
from ..model.config import DecoderConfig
from . import spectrum as S
from .options import AnalyzeOptions


def heads_of(cfg: DecoderConfig, tap: str) -> int:
    """How many heads sit side by side in a tap's vectors (1 for the residual stream)."""
    return 1 if tap == "hidden" else cfg.num_heads if tap.startswith("query") else cfg.num_kv_heads


def tap_statistics(decoder, tok, cfg: DecoderConfig, o: AnalyzeOptions, sink_id, fingerprint: str):
    """TapStatistics and sink vectors of every (layer, tap) over the text, from build/calib when the same
    analysis ran before. Returns (accs, sinks, windows, info); info is what fit_pca wants as calibration."""
    window = min(o.window, cfg.max_positions - 1)
    windows = token_windows(tok, o.text, window, o.calib_tokens, sink_id, min_tokens=MIN_CALIB_TOKENS)
    info = {"file": str(o.text), "sha256": text_sha256(o.text), "window": window,
            "tokens": sum(len(w) - (sink_id is not None) for w in windows)}
    key = cache_key(kind="spectrum", model=fingerprint, text=info["sha256"], tokens=o.calib_tokens, window=window,
                    sink=sink_id, taps=list(o.taps), token_factor=o.token_factor)
    path = os.path.join(o.build_dir, "calib", f"spectrum-{key}.safetensors")
    cached = load_statistics(path, S.TapStatistics) if o.cache else None
    if cached is not None:
        accs, sinks, _ = cached
        return accs, sinks, windows, {**info, "cached": True}
    accs = {(i, t): S.TapStatistics(o.token_factor) for i in range(cfg.num_layers) for t in o.taps}
    sinks = capture(decoder, windows, accs, desc="capturing activations")
    if o.cache:
        save_statistics(path, accs, sinks)
    return accs, sinks, windows, {**info, "cached": False}
