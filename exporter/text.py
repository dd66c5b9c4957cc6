"""Text files -> token windows, the one windowing convention for calibration and perplexity.

A window is [sink] + L tokens of the text: the sink token sits at position 0 of every sequence (see README,
"The sink token"), and is never scored or used for statistics.
"""
from __future__ import annotations

import os
from pathlib import Path

from .errors import UserError

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("SPECTRAL_KV_DATA", REPO.parent / "shared" / "data"))
DEFAULT_CALIB = DATA_DIR / "wikitext-103-valid.tokens.txt"
DEFAULT_EVAL = DATA_DIR / "wikitext-2-raw-test.txt"


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
    from .projectors import sha256_file
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
