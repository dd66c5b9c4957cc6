"""What `make analyze` can be asked: the taps analysed, the perplexity rows, the time budget, the memory table.

Entry points: `AnalyzeOptions`, `check_options(o)`.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from graphs import estimate

from ..errors import UserError
from ..options import DEFAULT_CALIB, DEFAULT_EVAL, ExportOptions
from . import spectrum as S

TAPS = ("hidden", "query_post", "key_pre", "key_post", "value")
TAP_TITLES = {"hidden": "residual stream (hidden states)", "query_pre": "queries before RoPE",
              "query_post": "queries (after RoPE)", "key_pre": "keys before RoPE", "key_post": "keys after RoPE",
              "value": "values"}
VARIANTS = ("raw", "no_pos0", "no_sinks", "standardized")
VARIANT_TITLES = {"raw": "raw (sink included)", "no_pos0": "position 0 excluded",
                  "no_sinks": "sink tokens excluded", "standardized": "standardised per dim"}


@dataclass
class AnalyzeOptions:
    model: str | None = None
    text: str = str(DEFAULT_CALIB)        # the text the spectra (and the PCA fits) are measured on
    out: str | None = None
    eval: str = str(DEFAULT_EVAL)         # perplexity text; never calibrate on it
    calib_tokens: int = ExportOptions.calib_tokens
    window: int = ExportOptions.window
    eval_tokens: int = 32768              # whole-model rows
    eval_window: int = 2048
    layer_tokens: int = 8192              # sweep, per-layer and weight rows
    fraction: float = 0.95                # the headline "k for this fraction of variance"
    fractions: tuple = (0.90, 0.95, 0.99)  # sweep: keys alone, values alone, all layers
    whole: tuple = ("keys+values",)       # kinds scored at k(fraction) on eval_tokens
    layers: str = "middle"                # single-layer rows
    weight_tokens: int = 8192             # attention weights at k(fraction) energy; 0 skips
    weight_rows: str = "all"              # 'all': q, k, v, o together; 'each': also one matrix kind at a time
    probe_ranks: tuple = (9, 50)          # variance / energy kept at these ranks (the lab's k=9 and k=50)
    probe_errors: tuple = (0.01,)         # k for these relative reconstruction errors (the lab's "< 1 %")
    taps: tuple = TAPS
    engine: str = "hf"
    skip_quality: bool = False
    sink: str = "auto"
    token_factor: float = S.TOKEN_FACTOR
    dim_factor: float = S.DIM_FACTOR
    seq_lengths: tuple = estimate.SEQ_LENGTHS
    batch_sizes: tuple = estimate.BATCH_SIZES
    build_dir: str = "build"
    cache: bool = True
    threads: int = 0                      # 0: auto, the cores other work leaves free (see pick_threads)
    time_budget: float = 540.0            # seconds from the start; perplexity rows that would overrun are skipped
    trust_remote_code: bool = False
    command: str = ""


def check_options(o: AnalyzeOptions) -> None:
    unknown = [t for t in o.taps if t not in TAP_TITLES]
    if unknown:
        raise UserError(f"unknown tap {unknown[0]!r}: use some of {', '.join(TAP_TITLES)}")
    if not o.skip_quality and not {"key_pre", "value"} <= set(o.taps):
        raise UserError("perplexity rows need the key_pre and value taps: add them to --taps or pass --skip-quality")
    bad = [k for k in o.whole if k not in ("keys", "values", "keys+values")]
    if bad:
        raise UserError(f"--whole {bad[0]!r} is unknown: use keys, values or keys+values")
    if o.engine not in ("hf", "decoder"):
        raise UserError(f"--engine {o.engine!r} is unknown: use hf or decoder")
    for f in (o.fraction, *o.fractions):
        if not 0 < f <= 1:
            raise UserError(f"fraction {f} is out of range: use a number in (0, 1]")
    texts = (("--text", o.text),) + ((("--eval", o.eval),) if not o.skip_quality else ())
    for flag, path in texts:
        if not os.path.isfile(path):
            raise UserError(f"no text file at {path}: pass {flag} /path/to/file.txt (any UTF-8 text)")
    if o.out and os.path.lexists(o.out) and not os.path.isfile(os.path.join(o.out, "spectrum.json")):
        raise UserError(f"--out {o.out} exists and is not an earlier analysis; it would be replaced: pass a new path, "
                        "or move it away first")
    if os.path.realpath(o.text) == os.path.realpath(o.eval):
        print(f"warning: the analysis text is the perplexity text ({o.eval}); PCA rows are then measured on "
              "their own calibration data", file=sys.stderr)
