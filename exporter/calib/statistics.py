"""The statistics projectors are fitted from: per layer, covariances of keys (before and after RoPE), values,
queries and what attention makes of the values, and the sink's own vectors; cached on disk by what they depend on.

Entry points: `kv_statistics(...)` -> Statistics; `calibration_samples(...)` (the vectors themselves, for fits
that need samples rather than moments: the quantizer's static scales), `SpilledSamples` (the same, on disk).
Both read a model as the compact decoder or, for a model bigger than memory, as a LayerStream one layer at a
time (calib/capture.capture_from).
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass

from ..model.config import DecoderConfig
from .capture import KV_TAPS, Covariance, HeadCovariance, Rows, capture_from
from .store import cache_key, load_statistics, save_statistics
from .text import fitting_window, text_sha256, token_windows

MIN_CALIB_TOKENS = 2048


@dataclass
class Statistics:
    accumulators: dict      # (layer, tap) -> Covariance over every calibration token but the sink
    sinks: dict             # (layer, tap) -> (dim,) the sink's vector (position 0 is kept apart)
    calibration: dict       # file, sha256, window, tokens, cached: what projector files record

    def covariance(self, layer: int, tap: str):
        return self.accumulators[(layer, tap)].covariance()


def kv_statistics(model, tokenizer, cfg: DecoderConfig, calib: str, calib_tokens: int, window: int,
                  sink_id: int | None, fingerprint: str, cache_dir: str | None) -> Statistics:
    """Covariances and sink vectors of keys (before and after RoPE) and values for every layer, from the
    cache in cache_dir when an identical calibration ran before."""
    window = min(window, cfg.max_positions - 1)           # the sink takes one position
    calib_sha = text_sha256(calib)
    info = {"file": str(calib), "sha256": calib_sha, "window": window}
    key = cache_key(model=fingerprint, text=calib_sha, tokens=calib_tokens, window=window, sink=sink_id)
    path = os.path.join(cache_dir, "calib", key + ".safetensors") if cache_dir else None
    cached = load_statistics(path) if path else None
    if cached is not None:
        accs, sinks, counts = cached
        return Statistics(accs, sinks, {**info, "tokens": counts["n_tokens"], "cached": True})
    windows = token_windows(tokenizer, calib, window, calib_tokens, sink_id, min_tokens=MIN_CALIB_TOKENS)
    accs = kv_accumulators(cfg)
    sinks = capture_from(model, windows, accs)
    n_tokens = sum(len(w) - (sink_id is not None) for w in windows)
    if path:
        save_statistics(path, accs, sinks, {"n_tokens": n_tokens})
    return Statistics(accs, sinks, {**info, "tokens": n_tokens, "cached": False})


def kv_accumulators(cfg: DecoderConfig) -> dict:
    """{(layer, tap): an empty accumulator} of the export's statistics: whole covariances of keys and values,
    what attention makes of the values per query head (value_mix), and the queries' per-head blocks."""
    def make(tap):
        if tap.startswith("query"):
            return HeadCovariance(cfg.num_heads)
        return Covariance(cfg.num_heads if tap == "value_mix" else 1)
    return {(i, tap): make(tap) for i in range(cfg.num_layers) for tap in KV_TAPS}


def calibration_samples(model, tokenizer, cfg: DecoderConfig, calib: str, tokens: int, window: int,
                        sink_id: int | None, taps: tuple[str, ...]) -> dict:
    """{(layer, tap): (N, dim)} the vectors of the first `tokens` calibration tokens themselves."""
    window = fitting_window(window, cfg.max_positions, sink_id)
    rows = {(i, tap): Rows() for i in range(cfg.num_layers) for tap in taps}
    capture_from(model, token_windows(tokenizer, calib, window, tokens, sink_id), rows, desc="quantizer samples")
    return {k: r.matrix() for k, r in rows.items()}


class SpilledSamples(Mapping):
    """calibration_samples kept in a temporary safetensors file, each (layer, tap) read when asked (the same
    float64 bytes): an export of a model bigger than memory holds none of them while it probes (TinyLlama-1.1B's
    shapes: 0.36 GiB). The file goes with the object."""

    def __init__(self, samples: dict):
        from safetensors.torch import save_file
        self._directory = tempfile.TemporaryDirectory(prefix="samples-")
        self._file = os.path.join(self._directory.name, "samples.safetensors")
        self._keys = list(samples)
        save_file({f"{i}.{tap}": x.contiguous() for (i, tap), x in samples.items()}, self._file)

    def __getitem__(self, key):
        from safetensors import safe_open
        if key not in self._keys:
            raise KeyError(key)
        with safe_open(self._file, framework="pt") as f:
            return f.get_tensor(f"{key[0]}.{key[1]}").clone()

    def __iter__(self):
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)
