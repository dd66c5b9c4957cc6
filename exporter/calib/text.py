"""Text files -> token windows, the one windowing convention for calibration, probes, training and perplexity.

A window is [sink] + L tokens of the text: the sink token sits at position 0 of every sequence (see README,
"The sink token"), and is never scored or used for statistics. The file is tokenized as one string and cut
into non-overlapping windows. What each consumer takes of the calibration file, in order:

    calibration   the first calib_tokens tokens (statistics, calib/statistics.py)
    probes        probe_tokens right after them (sensitivity probes, ranks/auto.py and quant/probe.py)
    held-out      windows of 2048 spread evenly over the rest (K=auto scores)
    training      the first train tokens, then held-out tokens right after (projectors/train.py)

Entry points: `token_windows`, `probe_windows`, `spread_windows`, `training_windows`.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import UserError
from ..files import sha256_file

PROBE_WINDOW = 512
HELDOUT_WINDOW = 2048     # the perplexity convention; shorter where the model's positions end sooner


def _require_file(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"no text file at {p}: pass CALIB=/path/to/file.txt (any UTF-8 text)")
    return p


def read_text(path: str | os.PathLike) -> str:
    p = _require_file(path)
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{p} is not UTF-8 text: convert it, or pass another file") from None


def file_sha256(path: str | os.PathLike) -> str:
    return sha256_file(str(_require_file(path)))


def fitting_window(window: int, max_positions: int, sink_id: int | None) -> int:
    """The window, shortened where the model's positions end sooner (GPT-2's learned 1024) with the sink first."""
    return min(window, max_positions - (sink_id is not None))


def token_windows(tokenizer, path, window: int, max_tokens: int, sink_id: int | None,
                  min_tokens: int = 0) -> list[list[int]]:
    """Non-overlapping windows of `window` tokens of the whole file tokenized as one string, each prefixed with
    the sink; at most max_tokens tokens in all (the last window may be shorter). Errors if fewer than min_tokens."""
    ids = tokenizer(read_text(path), add_special_tokens=False)["input_ids"]
    if len(ids) < max(min_tokens, 2):
        raise UserError(f"{path} has {len(ids)} tokens, at least {min_tokens} are needed: pass a longer text file")
    ids = ids[:max_tokens]
    prefix = [] if sink_id is None else [sink_id]
    return [prefix + ids[i:i + window] for i in range(0, len(ids), window) if len(ids[i:i + window]) > 1]


def probe_windows(tok, calib: str, calib_tokens: int, max_positions: int, sink, probe_tokens: int) -> list[list[int]]:
    """probe_tokens of the calibration file right after the calibration tokens, in windows of PROBE_WINDOW."""
    window = fitting_window(PROBE_WINDOW, max_positions, sink)
    skip = -(-calib_tokens // window)                     # windows holding calibration tokens
    return token_windows(tok, calib, window, skip * window + probe_tokens, sink)[skip:]


def spread_windows(tok, calib: str, calib_tokens: int, n_tokens: int, sink, window: int = HELDOUT_WINDOW
                   ) -> list[list[int]]:
    """ceil(n_tokens / window) full windows, evenly spaced over the file after the calibration tokens."""
    windows = token_windows(tok, calib, window, 1 << 62, sink)[-(-calib_tokens // window):]
    windows = [w for w in windows if len(w) - (sink is not None) == window]
    n = -(-n_tokens // window)
    if len(windows) < n:
        raise UserError(f"{calib} is too short to hold out {n_tokens} tokens after the {calib_tokens} "
                        "calibration tokens: pass a longer CALIB, lower --calib-tokens or --auto-heldout-tokens")
    return [windows[(i * (len(windows) - 1)) // max(n - 1, 1)] for i in range(n)]


def training_windows(tokenizer, calib: str, calib_tokens: int, o, sink_id: int | None):
    """(train, held-out) windows: the first o.tokens of the calibration file (default: the calibration tokens),
    then the next heldout_tokens of the same file."""
    n = o.tokens or calib_tokens
    n_train = -(-n // o.window)                                # the last may hold fewer tokens
    windows = token_windows(tokenizer, calib, o.window, n_train * o.window + o.heldout_tokens, sink_id)
    train, heldout = windows[:n_train], windows[n_train:]
    if sum(len(w) - (sink_id is not None) for w in heldout) < o.heldout_tokens:
        raise UserError(f"{calib} is too short to hold out {o.heldout_tokens} tokens after {n} training tokens: "
                        "pass a longer CALIB, or lower --train-tokens or --calib-tokens")
    return train, heldout
