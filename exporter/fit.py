"""Fit PCA projectors from calibration text: the first, untrained, solution.

Keys are coded before or after RoPE (key mode); models without RoPE (GPT-2) have one kind of key, coded in
k-space like post-rope. Statistics leave out the sink token; the sink's own key and value are added to each
basis so the sink stays exact (see principal_basis).
"""
from __future__ import annotations

from .calibrate import Covariance, capture
from .config import DecoderConfig
from .errors import UserError
from .projectors import Projectors, principal_basis
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


def fit_pca(decoder, tokenizer, cfg: DecoderConfig, key_ranks: list, value_ranks: list, key_mode: str,
            calib: str, calib_tokens: int, window: int, sink_id: int | None, info: dict) -> Projectors:
    """Calibrate `decoder` (uncompressed) on `calib` and return PCA projectors with the given per-layer ranks."""
    key_tap = "key_pre" if key_mode == "pre-rope" or not cfg.has_rope else "key_post"
    wanted = {}
    for i in range(cfg.num_layers):
        if key_ranks[i] is not None:
            wanted[(i, key_tap)] = Covariance()
        if value_ranks[i] is not None:
            wanted[(i, "value")] = Covariance()
    window = min(window, cfg.max_positions - 1)           # the sink takes one position
    windows = token_windows(tokenizer, calib, window, calib_tokens, sink_id, min_tokens=MIN_CALIB_TOKENS)
    sinks = capture(decoder, windows, wanted) if wanted else {}
    n_tokens = sum(len(w) - (sink_id is not None) for w in windows)
    need = max([r for r in key_ranks + value_ranks if r is not None], default=0)
    if wanted and n_tokens < 4 * need:
        raise UserError(f"{n_tokens} calibration tokens are too few for rank {need}: pass more text "
                        f"(CALIB=...) or raise --calib-tokens")

    def solve(i, tap, rank):
        if rank is None:
            return None
        acc = wanted[(i, tap)]
        sink = sinks[(i, tap)] - acc.mean if sink_id is not None else None
        return principal_basis(acc.covariance(), rank, sink), acc.mean.clone()

    keys = [solve(i, key_tap, key_ranks[i]) for i in range(cfg.num_layers)]
    values = [solve(i, "value", value_ranks[i]) for i in range(cfg.num_layers)]
    calibration = {"file": str(calib), "sha256": file_sha256(calib), "tokens": n_tokens, "windows": len(windows),
                   "window": window}
    mode = key_mode if cfg.has_rope else "post-rope"
    return Projectors(mode, keys, values, {**info, "method": "pca", "calibration": calibration,
                                           "sink_token_id": sink_id})
