"""Text files -> token windows, the one windowing convention for calibration, probes, training and perplexity.

A window is [sink] + L tokens of the text: the sink token sits at position 0 of every sequence (see README,
"The sink token"), and is never scored or used for statistics. The file is tokenized as one string and cut
into non-overlapping windows. What each consumer takes of the calibration file, in order:

    calibration   the first calib_tokens tokens (statistics, calib/statistics.py)
    probes        probe_tokens right after them (sensitivity probes, ranks/auto.py and quant/probe.py)
    held-out      windows of 2048 spread evenly over the rest (K=auto scores)
    training      the first train tokens, then held-out tokens right after (projectors/train.py)

A text may be a mix of files (calibration that travels to other domains): "a.txt,b.txt@0.5" takes turns of
MIX_CHUNK tokens from each file, b.txt from half of its tokens on (so its head stays free for evaluation);
a source that runs out leaves the turns to the others. The mix is a token stream like one file's, so every
consumer above cuts it the same way. A spec naming an existing file is that file, whatever its characters.

Entry points: `token_windows`, `probe_windows`, `spread_windows`, `training_windows`, `text_ids`, `text_sha256`.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..files import sha256_file

PROBE_WINDOW = 512
HELDOUT_WINDOW = 2048     # the perplexity convention; shorter where the model's positions end sooner
MIX_CHUNK = 2048          # tokens a source of a mixed text gives per turn: one perplexity window


def _require_file(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"no text file at {p}: pass CALIB=/path/to/file.txt (any UTF-8 text), or several as "
                        "CALIB=a.txt,b.txt@0.5")
    return p


@dataclass(frozen=True)
class Source:
    """One file of a text spec, from `start` (a fraction of its tokens) on."""
    path: Path
    start: float = 0.0


def parse_sources(spec: str | os.PathLike) -> list[Source]:
    """'a.txt,b.txt@0.5' -> [Source(a.txt), Source(b.txt, 0.5)]; an existing file's path is that one file."""
    if Path(spec).is_file():
        return [Source(Path(spec))]
    return [_source(part.strip(), spec) for part in str(spec).split(",")]


def _source(part: str, spec) -> Source:
    if Path(part).is_file() or "@" not in part:
        return Source(_require_file(part))
    path, _, start = part.rpartition("@")
    try:
        fraction = float(start)
    except ValueError:
        fraction = -1.0
    if not 0.0 <= fraction < 1.0:
        raise UserError(f"'{part}' in {spec}: the part after @ is the fraction of the file's tokens to start "
                        "from, 0 <= F < 1 (e.g. book.txt@0.5)")
    return Source(_require_file(path), fraction)


def read_text(path: str | os.PathLike) -> str:
    p = _require_file(path)
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{p} is not UTF-8 text: convert it, or pass another file") from None


def file_sha256(path: str | os.PathLike) -> str:
    return sha256_file(str(_require_file(path)))


def text_sha256(spec: str | os.PathLike) -> str:
    """The hash of what a text spec reads: one whole file's own sha256, or a mix's files, starts and turn size."""
    sources = parse_sources(spec)
    if len(sources) == 1 and sources[0].start == 0.0:
        return file_sha256(sources[0].path)
    parts = [[file_sha256(s.path), s.start] for s in sources]
    return hashlib.sha256(json.dumps({"mix": parts, "chunk": MIX_CHUNK}).encode()).hexdigest()


def text_ids(tokenizer, spec: str | os.PathLike) -> list[int]:
    """The token ids of a text spec: each file tokenized as one string from its start on, the files in turns."""
    streams = []
    for s in parse_sources(spec):
        ids = tokenizer(read_text(s.path), add_special_tokens=False)["input_ids"]
        streams.append(ids[int(s.start * len(ids)):])
    if len(streams) == 1:
        return streams[0]
    mixed, turn = [], 0
    while any(turn < len(ids) for ids in streams):
        for ids in streams:
            mixed += ids[turn:turn + MIX_CHUNK]
        turn += MIX_CHUNK
    return mixed


def fitting_window(window: int, max_positions: int, sink_id: int | None) -> int:
    """The window, shortened where the model's positions end sooner (GPT-2's learned 1024) with the sink first."""
    return min(window, max_positions - (sink_id is not None))


def token_windows(tokenizer, path, window: int, max_tokens: int, sink_id: int | None,
                  min_tokens: int = 0) -> list[list[int]]:
    """Non-overlapping windows of `window` tokens of the whole file tokenized as one string, each prefixed with
    the sink; at most max_tokens tokens in all (the last window may be shorter). Errors if fewer than min_tokens."""
    ids = text_ids(tokenizer, path)
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
