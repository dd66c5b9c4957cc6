"""Fit projectors in closed form: PCA, or PCA in the output-aware metric (projectors/metric.py), or none (raw).

Per layer, keys and values each get a code from their calibration covariance C (sink position left out):

    PCA            decode = top-r eigenvectors of C, encode = decode^T  (the least squared error of any rank-r code)
    output-aware   the same after whitening by the metric M the model feels (metric.weighted_basis)

Keys are coded before or after RoPE (key mode); models without RoPE (GPT-2) have one kind of key, coded in
k-space like post-rope. The sink's own key and value are added to each basis so the sink stays exact
(projectors/basis.py). Entry points: `fit_pca`, `fit_raw`.
"""
from __future__ import annotations

import torch

from ..calib.capture import key_tap
from ..calib.statistics import Statistics
from ..codec.linear import Codec, Projectors
from ..errors import UserError
from ..model.config import DecoderConfig
from .basis import principal_basis
from .metric import weighted_basis


def fit_raw(stats: Statistics, cfg: DecoderConfig, key_mode: str, sink_id: int | None, info: dict) -> Projectors:
    """No transform: every layer's keys and values coded as they are (centered), full width. With a quantizer
    this is plain KV-cache quantization, the baseline the spectral codes are measured against."""
    accs, calibration = stats.accumulators, stats.calibration
    eye = torch.eye(cfg.kv_dim, dtype=torch.float64)
    codec = lambda i, tap: Codec(eye.clone(), accs[(i, tap)].mean.clone(), eye.clone())
    keys = [codec(i, key_tap(cfg, key_mode)) for i in range(cfg.num_layers)]
    values = [codec(i, "value") for i in range(cfg.num_layers)]
    mode = key_mode if cfg.has_rope else "post-rope"
    calibration = {k: v for k, v in calibration.items() if k != "cached"}
    return Projectors(mode, keys, values, {**info, "method": "raw", "calibration": calibration,
                                           "sink_token_id": sink_id})


def fit_pca(stats: Statistics, cfg: DecoderConfig, key_ranks: list, value_ranks: list, key_mode: str,
            sink_id: int | None, info: dict, metric=None) -> Projectors:
    """PCA projectors with the given per-layer ranks from kv_statistics' output; with a metric (from
    output_metrics), PCA in that metric: the output-aware projectors."""
    accs, sinks, calibration = stats.accumulators, stats.sinks, stats.calibration
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
