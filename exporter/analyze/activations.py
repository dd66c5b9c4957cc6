"""Activation spectra per (layer, tap): the four covariance variants, per-head spectra, variance kept at the probe
ranks, outlier dimensions and high-norm tokens (named).

Entry point: `activation_spectra(accs, sinks, cfg, o, tok, windows, has_sink)`.
"""
from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from ..model.config import DecoderConfig
from . import spectrum as S
from .options import AnalyzeOptions
from .statistics import heads_of
from .threads import lapack_threads


def token_name(tok, windows, w: int, p: int) -> str:
    return tok.convert_ids_to_tokens(int(windows[w][p]))


def outlier_dim_rows(acc: S.TapStatistics, raw: torch.Tensor, sink, factor: float) -> list[dict]:
    """The massive-activation dimensions of one tap: how far above the median std they are, their share of
    the raw variance, the sink's value there and the largest |x| over the other tokens."""
    var = raw.diagonal()
    med = float(var.clamp(min=0).sqrt().median())
    total = float(var.sum())
    return [{"dim": d, "std_ratio": float(var[d].sqrt()) / med if med > 0 else math.inf,
             "raw_variance_share": float(var[d]) / total if total > 0 else 0.0,
             "sink_value": None if sink is None else float(sink[d]), "max_abs_other_tokens": float(acc.max_abs[d])}
            for d in S.outlier_dims(var, factor)]


def outlier_token_rows(acc: S.TapStatistics, sink, tok, windows, top: int = 5) -> dict:
    """High-norm tokens of one tap, named, and how far the sink's norm is above a typical token's."""
    rms = math.sqrt(float(acc.outer.diagonal().sum()) / acc.n)
    best = sorted(acc.flagged, key=lambda f: -f[2])[:top]
    return {"flagged": acc.n_flagged, "fraction": acc.n_flagged / acc.n,
            "sink_norm_over_rms": None if sink is None else float(sink.norm()) / rms,
            "top": [{"token": token_name(tok, windows, w, p), "window": w, "position": p, "norm_over_median": r}
                    for w, p, r in best]}


def tap_spectra(acc: S.TapStatistics, sink, sink_count: int, heads: int, o: AnalyzeOptions, tok, windows):
    """Everything the report says about one (layer, tap): summaries of the four variants, jointly and per
    head, variance kept at the probe ranks, outlier dims and tokens. Returns (json, {variant: eigenvalues})."""
    covs = acc.variants(sink, sink_count)
    eigs = {v: S.eigenvalues(c) for v, c in covs.items()}
    out = {"variants": {v: S.summarize(e) for v, e in eigs.items()}}
    out["probe"] = {str(k): {v: {"kept": S.fraction_kept(eigs[v], k), "relative_error": S.relative_error(eigs[v], k)}
                             for v in ("raw", "no_pos0")} for k in o.probe_ranks if k <= eigs["raw"].numel()}
    out["k_for_relative_error"] = {str(e): S.rank_for_fraction(eigs["no_pos0"], 1 - e * e) for e in o.probe_errors}
    if heads > 1:
        per_head = {v: S.blocks(covs[v], heads) for v in ("raw", "no_pos0", "no_sinks")}
        per_head["standardized"] = [S.correlation(b) for b in per_head["no_sinks"]]
        out["heads"] = {v: [S.summarize(S.eigenvalues(b), top=0) for b in bs] for v, bs in per_head.items()}
    out["outlier_dims"] = outlier_dim_rows(acc, covs["raw"], sink, o.dim_factor)
    out["outlier_tokens"] = outlier_token_rows(acc, sink, tok, windows)
    return out, {v: e.numpy() for v, e in eigs.items()}


def activation_spectra(accs, sinks, cfg: DecoderConfig, o: AnalyzeOptions, tok, windows, has_sink: bool):
    """{tap: [per-layer json]} and {(tap, variant): [per-layer eigenvalues]}."""
    report, eigs = {}, {}
    with lapack_threads(1):
        for tap in o.taps:
            report[tap] = []
            for i in tqdm(range(cfg.num_layers), desc=f"spectra {tap}", unit="layer"):
                sink = sinks.get((i, tap)) if has_sink else None
                js, ev = tap_spectra(accs[(i, tap)], sink, len(windows) if has_sink else 0, heads_of(cfg, tap), o,
                                     tok, windows)
                report[tap].append({"layer": i, **js})
                for v, e in ev.items():
                    eigs.setdefault((tap, v), []).append(e)
    return report, eigs
