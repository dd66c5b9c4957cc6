"""Perplexity rows of an analysis: each setting's model (HF with edited weights, or the export's reference
decoder) scored by the project's one loop (eval/perplexity.py) against the original logits, computed once, inside
a time budget.

Entry point: `score(settings, hf, tok, cfg, stats, sink_id, o, tmp, deadline)`.
"""
from __future__ import annotations

import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict

import numpy as np
import torch
from tqdm.auto import tqdm

from graphs import estimate
from graphs.contract import kv_bytes_per_token

from ..calib.text import fitting_window, token_windows
from ..eval.perplexity import measure
from ..model.config import DecoderConfig
from ..model.fold import build_decoder
from ..projectors.pca import fit_pca
from .edits import edited_attention, pca_edits, truncation_edits
from .options import AnalyzeOptions
from .plan import Setting, rank_summary


def hf_forward(hf):
    return lambda ids, mask, pos: hf(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits


def decoder_forward(dec):
    return lambda ids, mask, pos: dec(ids, mask, pos, *dec.empty_past(ids.shape[0]))[0]


def window_logits(forward):
    """What eval.perplexity.measure scores: ids -> logits (T-1, V) predicting ids[1:], from a PyTorch forward
    (ids, mask, pos) -> (1, T, V) run as one prefill."""
    def logits(ids: list[int]) -> torch.Tensor:
        x = torch.tensor([ids])                                                          # (1, T)
        with torch.no_grad():
            return forward(x, torch.ones_like(x), torch.arange(x.shape[1])[None])[0, :-1]
    return logits


class OriginalLogits:
    """The uncompressed model's logits per window, computed once into files (32k tokens of a 49k vocabulary are
    6 GB, too much to hold beside a benchmark) and handed to eval.perplexity.measure as `original` for every
    setting, one window in memory at a time.

    ensure(n) computes the first n windows; call it before editing the model's weights."""

    def __init__(self, hf, windows: list[list[int]], folder: str):
        self.hf, self.windows, self.folder = hf, windows, folder
        self.done = 0
        self.seconds_per_window = None
        os.makedirs(folder, exist_ok=True)

    def _path(self, i: int) -> str:
        return os.path.join(self.folder, f"{i}.npy")

    def ensure(self, n: int) -> None:
        if n <= self.done:
            return
        t0 = time.time()
        logits = window_logits(hf_forward(self.hf))
        for i in tqdm(range(self.done, n), desc="original logits", unit="window"):
            np.save(self._path(i), logits(self.windows[i]).numpy())                          # (T-1, V)
        self.seconds_per_window = (time.time() - t0) / (n - self.done)
        self.done = n

    def __call__(self, i: int, ids: list[int]) -> torch.Tensor:
        if i >= self.done:
            raise RuntimeError("original logits requested before ensure()")
        return torch.from_numpy(np.load(self._path(i)))

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def model_for(s: Setting, hf, cfg: DecoderConfig, stats, sink_id, engine: str):
    """(context manager, compressed logits for eval.perplexity.measure) that score setting s: the HF model with edited attention weights (engine
    'hf'), or the reference decoder the ONNX export is traced from (engine 'decoder')."""
    if s.weight_ranks is not None:
        edits = truncation_edits(hf, cfg, s.weight_ranks)
        if engine == "hf":
            return edited_attention(hf, cfg, edits), window_logits(hf_forward(hf))
        with edited_attention(hf, cfg, edits):
            dec = build_decoder(hf)
        return _nothing(), window_logits(decoder_forward(dec))
    proj = fit_pca(stats, cfg, s.key_ranks, s.value_ranks, "pre-rope", sink_id, {"purpose": "analysis"})
    if engine_for(engine, cfg) == "hf":
        return edited_attention(hf, cfg, pca_edits(hf, cfg, proj)), window_logits(hf_forward(hf))
    return _nothing(), window_logits(decoder_forward(build_decoder(hf, proj)))


def engine_for(engine: str, cfg: DecoderConfig) -> str:
    """The engine that can score this model: a model that norms its keys after k_proj (Qwen3) has no k_proj
    edit for a key code, so its projector rows run on the reference decoder."""
    return "decoder" if engine == "hf" and cfg.qk_norm else engine


@contextmanager
def _nothing():
    yield


class Clock:
    """The time budget of the perplexity rows: a row runs only when its estimated time (windows x the measured
    seconds per window, plus original logits still to compute) ends before the deadline."""

    def __init__(self, deadline: float | None):
        self.deadline = deadline
        self.per_window = None          # seconds per scored window: forward + exporter/eval/perplexity.py statistics
        self.setup = 0.0                # the longest setup of a row (fitting projectors, truncating weights)

    def fits(self, windows: int, original: OriginalLogits) -> tuple[bool, float]:
        if self.deadline is None:
            return True, 0.0
        t_orig = original.seconds_per_window
        per = self.per_window or 1.5 * t_orig       # before any row: forward + statistics ~ 1.5 forwards
        est = self.setup + windows * per + max(0, windows - original.done) * t_orig
        return time.time() + est <= self.deadline, est

    def record(self, windows: int, setup: float, seconds: float) -> None:
        rate = seconds / windows
        self.per_window = rate if self.per_window is None else max(self.per_window, rate)
        self.setup = max(self.setup, setup)


def score(settings: list[Setting], hf, tok, cfg: DecoderConfig, stats, sink_id, o: AnalyzeOptions, tmp: str,
          deadline: float | None):
    """Perplexity rows, in the order given (highest priority first): eval.perplexity.measure for every setting
    against the original logits computed once. Rows that would overrun the deadline are listed as skipped."""
    if not settings:
        return None
    window = fitting_window(o.eval_window, cfg.max_positions, sink_id)
    windows = token_windows(tok, o.eval, window, max(s.tokens for s in settings), sink_id)
    original = OriginalLogits(hf, windows, os.path.join(tmp, "original-logits"))
    sink_token = tok.convert_ids_to_tokens(sink_id) if sink_id is not None else None
    kv_full = kv_bytes_per_token(estimate.layout_for_ranks(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim))
    clock, rows, skipped = Clock(deadline), [], []
    try:
        original.ensure(1)                            # also measures the seconds per window
        for s in settings:
            n = windows_for(windows, s.tokens)
            ok, est = clock.fits(n, original)
            if not ok:
                skipped.append({"name": s.name, "scope": s.scope, "tokens": s.tokens, "estimated_seconds": est})
                print(f"  {s.name} ({s.scope}): skipped, ~{est:.0f} s would overrun the time budget", flush=True)
                continue
            original.ensure(n)
            t0 = time.time()
            ctx, lm = model_for(s, hf, cfg, stats, sink_id, o.engine)
            t1 = time.time()
            with ctx:
                q = measure(original, lm, windows[:n], sink_id is not None, o.eval, window, sink_token)
            clock.record(n, t1 - t0, time.time() - t1)
            rows.append(quality_row(s, q, cfg, kv_full, time.time() - t0))
            print(f"  {s.name} ({s.scope}, {q.tokens_scored} tokens): perplexity {q.ppl_compressed:.3f} vs "
                  f"{q.ppl_original:.3f} ({q.ppl_increase_pct:+.2f} %)", flush=True)
    finally:
        original.close()
    return {"eval_file": o.eval, "window": window, "sink_token": sink_token, "engine": engine_for(o.engine, cfg),
            "rows": rows,
            "skipped": skipped, "seconds_per_window": {"original": original.seconds_per_window,
                                                       "scored": clock.per_window}}


def quality_row(s: Setting, q, cfg: DecoderConfig, kv_full: int, seconds: float) -> dict:
    layout = estimate.layout_for_ranks(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, s.key_ranks, s.value_ranks)
    row = {**{k: v for k, v in asdict(s).items() if k != "weight_ranks"},
           "key_rank_summary": rank_summary(s.key_ranks), "value_rank_summary": rank_summary(s.value_ranks),
           "kv_bytes_per_token_fp32": kv_bytes_per_token(layout), "kv_ratio": kv_full / kv_bytes_per_token(layout),
           "quality": q.to_json(), "seconds": seconds}
    if s.weight_ranks is not None:
        row["weight_ranks"] = s.weight_ranks
    return row


def windows_for(windows: list[list[int]], tokens: int) -> int:
    """How many leading windows score `tokens` tokens (token_windows cuts the text the same way for any count)."""
    total = 0
    for i, w in enumerate(windows):
        total += len(w) - 1 if len(w) > 1 else 0
        if total >= tokens:
            return i + 1
    return len(windows)
