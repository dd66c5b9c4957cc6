"""Fit projectors from calibration text in closed form: PCA, or PCA in the output-aware metric (whiten.py).

Keys are coded before or after RoPE (key mode); models without RoPE (GPT-2) have one kind of key, coded in
k-space like post-rope. Statistics leave out the sink token; the sink's own key and value are added to each
basis so the sink stays exact (see principal_basis).
"""
from __future__ import annotations

import os
from functools import cache

import torch

from .calibrate import Covariance, capture
from .config import DecoderConfig
from .errors import UserError
from .projectors import Codec, Projectors, principal_basis
from .stats_cache import cache_key, load_stats, save_stats
from .whiten import attention_output_covariance, key_metric, value_metric, weighted_basis, whitening
from .text import file_sha256, token_windows

MIN_CALIB_TOKENS = 2048


def parse_rank(value, kv_dim: int, what: str) -> int | None:
    """'full' -> None (uncompressed); an int in 1..kv_dim -> that rank. Anything else is a one-line error."""
    if value is None or str(value).lower() == "full":
        return None
    try:
        r = int(value)
    except ValueError:
        raise UserError(f"{what}={value!r} is not a number: use an integer 1..{kv_dim} or 'full'") from None
    if not 1 <= r <= kv_dim:
        raise UserError(f"{what}={r} is out of range: this model's keys and values have {kv_dim} dims per layer "
                        f"(KV heads x head_dim); use 1..{kv_dim} or 'full'")
    return r


def per_layer(rank, n: int) -> list:
    return list(rank) if isinstance(rank, (list, tuple)) else [rank] * n


# queries and value_mix (what attention makes of the values) feed the output-aware metrics (whiten.py)
KV_TAPS = ("key_pre", "key_post", "value", "query_pre", "query_post", "value_mix")
METHODS = ("pca", "output-aware", "trained", "raw")


def kv_statistics(decoder, tokenizer, cfg: DecoderConfig, calib: str, calib_tokens: int, window: int,
                  sink_id: int | None, fingerprint: str, cache_dir: str | None):
    """Covariances and sink vectors of keys (before and after RoPE) and values for every layer, from the
    cache in cache_dir when an identical calibration ran before. Returns (accs, sinks, calibration info)."""
    window = min(window, cfg.max_positions - 1)           # the sink takes one position
    calib_sha = file_sha256(calib)
    info = {"file": str(calib), "sha256": calib_sha, "window": window}
    key = cache_key(model=fingerprint, text=calib_sha, tokens=calib_tokens, window=window, sink=sink_id)
    path = os.path.join(cache_dir, "calib", key + ".safetensors") if cache_dir else None
    cached = load_stats(path) if path else None
    if cached is not None:
        accs, sinks, n_tokens = cached
        return accs, sinks, {**info, "tokens": n_tokens, "cached": True}
    windows = token_windows(tokenizer, calib, window, calib_tokens, sink_id, min_tokens=MIN_CALIB_TOKENS)
    accs = {(i, tap): Covariance(cfg.num_heads if tap == "value_mix" else 1)
            for i in range(cfg.num_layers) for tap in KV_TAPS}
    sinks = capture(decoder, windows, accs)
    n_tokens = sum(len(w) - (sink_id is not None) for w in windows)
    if path:
        save_stats(path, accs, sinks, n_tokens)
    return accs, sinks, {**info, "tokens": n_tokens, "cached": False}


def key_tap(cfg: DecoderConfig, key_mode: str) -> str:
    return "key_pre" if key_mode == "pre-rope" and cfg.has_rope else "key_post"


def output_metrics(hf, cfg: DecoderConfig, stats, key_mode: str):
    """metric(layer, 'key' | 'value') -> (covariance, metric), both (kv_dim, kv_dim): the error the output-aware
    code minimises is tr(metric (I - P) covariance (I - P)^T), what the layer's attention output feels."""
    from .fold import attention_weights
    accs, _, calibration = stats
    pre = key_tap(cfg, key_mode) == "key_pre"
    inv_freq = hf.model.rotary_emb.inv_freq if pre else None

    @cache      # searches (auto.py) fit many times from the same statistics
    def metric(i: int, kind: str):
        if kind == "value":
            cov = attention_output_covariance(accs[(i, "value_mix")], accs[(i, "value")].mean)
            return cov, value_metric(attention_weights(hf, cfg, i)["o"], cfg)
        queries = accs[(i, "query_pre" if pre else "query_post")].covariance(centered=False)
        return accs[(i, key_tap(cfg, key_mode))].covariance(), key_metric(queries, cfg, inv_freq,
                                                                          calibration["window"])
    return metric


def output_whitening(metric):
    """(layer, kind) -> (W, W^-1) of an output-aware metric function: the coordinates training works in."""
    return lambda i, kind: whitening(metric(i, kind)[1])


def fit_raw(stats, cfg: DecoderConfig, key_mode: str, sink_id: int | None, info: dict) -> Projectors:
    """No transform: every layer's keys and values coded as they are (centered), full width. With a quantizer
    this is plain KV-cache quantization, the baseline the spectral codes are measured against."""
    accs, _, calibration = stats
    eye = torch.eye(cfg.kv_dim, dtype=torch.float64)
    codec = lambda i, tap: Codec(eye.clone(), accs[(i, tap)].mean.clone(), eye.clone())
    keys = [codec(i, key_tap(cfg, key_mode)) for i in range(cfg.num_layers)]
    values = [codec(i, "value") for i in range(cfg.num_layers)]
    mode = key_mode if cfg.has_rope else "post-rope"
    calibration = {k: v for k, v in calibration.items() if k != "cached"}
    return Projectors(mode, keys, values, {**info, "method": "raw", "calibration": calibration,
                                           "sink_token_id": sink_id})


def fit_pca(stats, cfg: DecoderConfig, key_ranks: list, value_ranks: list, key_mode: str,
            sink_id: int | None, info: dict, metric=None) -> Projectors:
    """PCA projectors with the given per-layer ranks from kv_statistics' output; with a metric (from
    output_metrics), PCA in that metric: the output-aware projectors."""
    accs, sinks, calibration = stats
    ktap = key_tap(cfg, key_mode)
    need = max([r for r in key_ranks + value_ranks if r is not None], default=0)
    if calibration["tokens"] < 4 * need:
        raise UserError(f"{calibration['tokens']} calibration tokens are too few for rank {need}: pass more text "
                        f"(CALIB=...) or raise --calib-tokens")

    def solve(i, tap, kind, rank):
        if rank is None:
            return None
        acc = accs[(i, tap)]
        sink = sinks[(i, tap)] - acc.mean if sink_id is not None else None
        if metric is None:
            return Codec(principal_basis(acc.covariance(), rank, sink), acc.mean.clone())
        encode, decode = weighted_basis(*metric(i, kind), rank, sink)
        return Codec(decode, acc.mean.clone(), encode)

    keys = [solve(i, ktap, "key", key_ranks[i]) for i in range(cfg.num_layers)]
    values = [solve(i, "value", "value", value_ranks[i]) for i in range(cfg.num_layers)]
    mode = key_mode if cfg.has_rope else "post-rope"
    calibration = {k: v for k, v in calibration.items() if k != "cached"}
    return Projectors(mode, keys, values, {**info, "method": "pca" if metric is None else "output-aware",
                                           "calibration": calibration, "sink_token_id": sink_id})
