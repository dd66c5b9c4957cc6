"""python -m exporter.analyze: spectra of activations and weights, robust to sinks and outlier dimensions, what
PCA at "k for 95 % variance" costs in perplexity, and the KV memory it saves.

    python -m exporter.analyze [--model M] [--text FILE] [--out DIR] ...      (make analyze MODEL=... TEXT=...)

Writes build/analyze-<model>/ (spectrum.json, report.md, eigenvalues.npz, PNG plots) through a temp directory
renamed when complete, and prints the memory table. See docs/analyze.md.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shlex
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from graphs import estimate
from graphs.contract import kv_bytes_per_token
from . import spectrum as S
from .calibrate import capture
from .config import DecoderConfig, from_hf
from .errors import UserError, cli_exit
from .fit import MIN_CALIB_TOKENS, fit_pca
from .fold import attention_weights, build_decoder
from .load import load
from .pipeline import ExportOptions, sink_token_id
from .projectors import Projectors, model_fingerprint
from .stats_cache import cache_key
from .text import DEFAULT_CALIB, DEFAULT_EVAL, file_sha256, fitting_window, token_windows

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


def busy_cores(interval: float = 1.0) -> float:
    """How many cores other processes keep busy now: /proc/stat sampled over `interval` seconds (the load
    average lags by minutes); the 1-minute load average where /proc/stat is missing."""
    def sample():
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)                  # idle + iowait
        return sum(fields), idle
    try:
        total0, idle0 = sample()
        time.sleep(interval)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return os.getloadavg()[0]
    cores = os.cpu_count() or 1
    return cores * (1 - (idle1 - idle0) / max(total1 - total0, 1))


def pick_threads(requested: int, busy: float) -> int:
    """Torch threads for this run. Auto (0): the cores other processes leave free, at least one. On a shared
    2-core machine, two threads contending with another busy process ran the decoder several times slower than
    one in development runs, so a busy machine gets one thread."""
    if requested > 0:
        return requested
    cores = os.cpu_count() or 1
    return max(1, min(cores, cores - round(busy)))


@contextmanager
def lapack_threads(n: int = 1):
    """Eigen- and singular-value solvers on one thread: on a shared 2-core machine, two LAPACK threads spin
    against the other load and ran many times slower than one in development runs."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --- 1. calibration statistics (the toolchain's capture, with robust accumulators) ----------------------------

def heads_of(cfg: DecoderConfig, tap: str) -> int:
    """How many heads sit side by side in a tap's vectors (1 for the residual stream)."""
    return 1 if tap == "hidden" else cfg.num_heads if tap.startswith("query") else cfg.num_kv_heads


def tap_statistics(decoder, tok, cfg: DecoderConfig, o: AnalyzeOptions, sink_id, fingerprint: str):
    """TapStatistics and sink vectors of every (layer, tap) over the text, from build/calib when the same
    analysis ran before. Returns (accs, sinks, windows, info); info is what fit_pca wants as calibration."""
    window = min(o.window, cfg.max_positions - 1)
    windows = token_windows(tok, o.text, window, o.calib_tokens, sink_id, min_tokens=MIN_CALIB_TOKENS)
    info = {"file": str(o.text), "sha256": file_sha256(o.text), "window": window,
            "tokens": sum(len(w) - (sink_id is not None) for w in windows)}
    key = cache_key(kind="spectrum", model=fingerprint, text=info["sha256"], tokens=o.calib_tokens, window=window,
                    sink=sink_id, taps=list(o.taps), token_factor=o.token_factor)
    path = os.path.join(o.build_dir, "calib", f"spectrum-{key}.safetensors")
    cached = load_tap_statistics(path) if o.cache else None
    if cached is not None:
        return (*cached, windows, {**info, "cached": True})
    accs = {(i, t): S.TapStatistics(o.token_factor) for i in range(cfg.num_layers) for t in o.taps}
    sinks = capture(decoder, windows, accs, desc="capturing activations")
    if o.cache:
        save_tap_statistics(path, accs, sinks)
    return accs, sinks, windows, {**info, "cached": False}


def save_tap_statistics(path: str, accs: dict, sinks: dict) -> None:
    from safetensors.torch import save_file
    tensors = {}
    for (layer, tap), acc in accs.items():
        for name, t in acc.state().items():
            tensors[f"{layer}.{tap}.{name}"] = t.contiguous()
        if (layer, tap) in sinks:
            tensors[f"{layer}.{tap}.sink"] = sinks[(layer, tap)].contiguous()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file(tensors, path + ".tmp")
    os.replace(path + ".tmp", path)


def load_tap_statistics(path: str):
    """(accs, sinks) or None when absent or unreadable (the capture then simply runs again)."""
    from safetensors.torch import load_file
    if not os.path.isfile(path):
        return None
    try:
        t = load_file(path)
    except Exception:   # a damaged cache is recomputed, not an error
        return None
    groups: dict[tuple[int, str], dict] = {}
    for name, tensor in t.items():
        layer, tap, field_ = name.split(".", 2)
        groups.setdefault((int(layer), tap), {})[field_] = tensor
    sinks = {k: g.pop("sink") for k, g in groups.items() if "sink" in g}
    return {k: S.TapStatistics.from_state(g) for k, g in groups.items()}, sinks


# --- 2. activation spectra ----------------------------------------------------------------------------------

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


# --- 3. weight spectra --------------------------------------------------------------------------------------

def weight_matrices(hf, cfg: DecoderConfig, i: int) -> dict[str, torch.Tensor]:
    """Every attention and MLP weight matrix of layer i, [out, in]."""
    w = attention_weights(hf, cfg, i)
    out = {name: w[name] for name in ("q", "k", "v", "o")}
    if cfg.family == "gpt2":
        mlp = hf.transformer.h[i].mlp
        out.update(fc=mlp.c_fc.weight.detach().T, proj=mlp.c_proj.weight.detach().T)   # Conv1D stores [in, out]
    else:
        mlp = hf.model.layers[i].mlp
        out.update(gate=mlp.gate_proj.weight.detach(), up=mlp.up_proj.weight.detach(),
                   down=mlp.down_proj.weight.detach())
    return out


def weight_spectra(hf, cfg: DecoderConfig, probe_ranks, fraction: float) -> tuple[list[dict], dict]:
    """Per layer and matrix: shape, Df, k95 of the energy sigma^2, energy at the probe ranks. Also the singular
    values {matrix: [per layer]} for the plots."""
    rows, sigmas = [], {}
    with lapack_threads(1):
        for i in tqdm(range(cfg.num_layers), desc="weight spectra", unit="layer"):
            row = {"layer": i}
            for name, w in weight_matrices(hf, cfg, i).items():
                s = torch.linalg.svdvals(w.double())
                row[name] = {"shape": list(w.shape), **S.energy_summary(s, probe_ranks, sorted({0.95, fraction}))}
                sigmas.setdefault(name, []).append(s.numpy())
            rows.append(row)
    return rows, sigmas


# --- 4. perplexity of edited models -------------------------------------------------------------------------

def _attention_modules(hf, cfg: DecoderConfig, i: int) -> list:
    if cfg.family == "gpt2":
        a = hf.transformer.h[i].attn
        return [a.c_attn, a.c_proj]
    a = hf.model.layers[i].self_attn
    return [a.q_proj, a.k_proj, a.v_proj, a.o_proj]


def _assign(module, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """Set a module's weight (and bias: created when the module had none, e.g. Llama's k_proj)."""
    with torch.no_grad():
        module.weight.data = weight.float().contiguous()
        if bias is not None:
            if module.bias is None:
                module.bias = torch.nn.Parameter(bias.float().clone(), requires_grad=False)
            else:
                module.bias.data = bias.float().clone()


def write_attention(hf, cfg: DecoderConfig, i: int, w: dict) -> None:
    """The inverse of fold.attention_weights: put q/k/v/o weights [out, in] and biases into layer i of hf."""
    modules = _attention_modules(hf, cfg, i)
    if cfg.family == "gpt2":                      # Conv1D: one [in, 3 out] matrix for q, k, v; biases always
        _assign(modules[0], torch.cat([w["q"].T, w["k"].T, w["v"].T], dim=1),
                torch.cat([w["q_b"], w["k_b"], w["v_b"]]))
        _assign(modules[1], w["o"].T, w["o_b"])
        return
    for module, name in zip(modules, ("q", "k", "v", "o")):
        _assign(module, w[name], w[f"{name}_b"])


@contextmanager
def edited_attention(hf, cfg: DecoderConfig, edits: dict[int, dict]):
    """Within the block, layers in `edits` use the given attention weights; the originals come back after."""
    saved = {}
    for i in edits:
        for m in _attention_modules(hf, cfg, i):
            saved[m] = (m.weight.data, None if m.bias is None else m.bias.data)
    try:
        for i, w in edits.items():
            write_attention(hf, cfg, i, w)
        yield
    finally:
        for m, (weight, b) in saved.items():
            m.weight.data = weight
            if b is None:
                m.bias = None
            else:
                m.bias.data = b


def pca_edits(hf, cfg: DecoderConfig, proj: Projectors) -> dict[int, dict]:
    """PCA compression of keys and values as attention weights: x -> mean + P (W x + b - mean), P = B B^T, is
    affine in x, so k_proj becomes (P W, P (b - mean) + mean). The same map the export folds into its graph
    (pre-RoPE keys; GPT-2 has no RoPE); the sink stays exact because its direction is in every basis."""
    if cfg.has_rope and proj.key_mode != "pre-rope":
        raise UserError("the hf engine compresses keys before RoPE only: use --engine decoder for post-rope")
    edits = {}
    for i in range(cfg.num_layers):
        w = attention_weights(hf, cfg, i)
        changed = False
        for name, p in (("k", proj.key(i)), ("v", proj.value(i))):
            if p is None:
                continue
            mean = p.mean                                                    # (kv_dim,)
            P = p.decode @ p.encode                                          # (kv_dim, kv_dim)
            b = w[f"{name}_b"] if w[f"{name}_b"] is not None else torch.zeros_like(mean)
            w[name], w[f"{name}_b"] = P @ w[name], P @ (b - mean) + mean
            changed = True
        if changed:
            edits[i] = w
    return edits


def truncation_edits(hf, cfg: DecoderConfig, ranks: list[dict]) -> dict[int, dict]:
    """Attention weights replaced by their best rank-r approximations, r per layer and matrix."""
    edits = {}
    with lapack_threads(1):
        for i in range(cfg.num_layers):
            w = attention_weights(hf, cfg, i)
            for name in ("q", "k", "v", "o"):
                w[name] = S.truncate(w[name], ranks[i][name])
            edits[i] = w
    return edits


class TorchLM:
    """validate.quality's model interface (that of validate.ort_model.OrtModel) around a PyTorch forward
    (ids, mask, pos) -> logits (B, T, V): prefill from an empty cache, which is all perplexity needs."""

    def __init__(self, forward):
        self.forward = forward

    def empty_past(self, batch: int) -> list:
        return []

    def __call__(self, ids, mask, pos, past):
        if past:
            raise ValueError("TorchLM scores prefills only")
        with torch.no_grad():
            logits = self.forward(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(pos))
        return logits.numpy(), []


def hf_forward(hf):
    return lambda ids, mask, pos: hf(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits


def decoder_forward(dec):
    return lambda ids, mask, pos: dec(ids, mask, pos, *dec.empty_past(ids.shape[0]))[0]


class OriginalLogits:
    """The uncompressed model's logits per window, computed once into files (32k tokens of a 49k vocabulary are
    6 GB, too much to hold beside a benchmark) and handed to validate.quality.measure as `original` for every
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
        lm = TorchLM(hf_forward(self.hf))
        for i in tqdm(range(self.done, n), desc="original logits", unit="window"):
            ids = self.windows[i]
            logits = lm(np.array([ids]), np.ones((1, len(ids)), np.int64), np.arange(len(ids))[None], [])[0]
            np.save(self._path(i), logits[0, :-1])                                           # (T-1, V)
        self.seconds_per_window = (time.time() - t0) / (n - self.done)
        self.done = n

    def __call__(self, i: int, ids: list[int]) -> torch.Tensor:
        if i >= self.done:
            raise RuntimeError("original logits requested before ensure()")
        return torch.from_numpy(np.load(self._path(i)))

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


@dataclass
class Setting:
    """One perplexity row: what is compressed, where, at which ranks, on how many tokens."""
    name: str
    kind: str                      # 'keys' | 'values' | 'keys+values' | 'attention weights'
    scope: str                     # 'all layers' | 'layer i'
    fraction: float                # variance (or energy) fraction the ranks keep
    tokens: int
    key_ranks: list = field(default_factory=list)
    value_ranks: list = field(default_factory=list)
    weight_ranks: list | None = None


def ranks_at(eigs: list[np.ndarray], fraction: float) -> list[int]:
    return [S.rank_for_fraction(torch.from_numpy(e), fraction) for e in eigs]


def plan_settings(cfg: DecoderConfig, eigs: dict, weights: list[dict], o: AnalyzeOptions) -> list[Setting]:
    """The rows, highest priority first (the time budget drops the last): the --whole kinds over all layers at
    k(fraction) on the standard eval tokens; keys alone and values alone over all layers at k(fraction) on
    --layer-tokens; attention weights truncated to k(fraction) of their energy on --weight-tokens; keys alone and
    values alone at the other --fractions; single-layer rows for --layers."""
    key_tap = "key_pre"      # the export's default key mode (GPT-2: keys before = after, no RoPE)
    n, none, f = cfg.num_layers, [None] * cfg.num_layers, o.fraction
    k = lambda tap, frac: ranks_at(eigs[(tap, "no_pos0")], frac)
    both = {"keys": (key_tap, None), "values": (None, "value"), "keys+values": (key_tap, "value")}
    out = []
    for kind in o.whole:
        kt, vt = both[kind]
        out.append(Setting(f"{kind} k{f:.0%}", kind, "all layers", f, o.eval_tokens,
                           k(kt, f) if kt else none, k(vt, f) if vt else none))
    sweep = []
    fractions = sorted(set(o.fractions) | {f}, key=lambda x: (x != f, x)) if o.fractions and o.layer_tokens else []
    for frac in fractions:
        sweep.append(Setting(f"keys k{frac:.0%}", "keys", "all layers", frac, o.layer_tokens, k(key_tap, frac), none))
        sweep.append(Setting(f"values k{frac:.0%}", "values", "all layers", frac, o.layer_tokens, none,
                             k("value", frac)))
    out += sweep[:2]
    if o.weight_tokens:
        key = f"k{round(100 * f)}"
        ranks = [{m: row[m][key] for m in ("q", "k", "v", "o")} for row in weights]
        out.append(Setting(f"attention weights k{f:.0%}", "attention weights", "all layers", f, o.weight_tokens,
                           none, none, ranks))
        if o.weight_rows == "each":     # one matrix kind at a time, the others intact
            for m in ("q", "k", "v", "o"):
                only = [{name: r[name] if name == m else min(row[name]["shape"]) for name in r}
                        for r, row in zip(ranks, weights)]
                out.append(Setting(f"attention weights {m} only k{f:.0%}", f"attention weights ({m} only)",
                                   "all layers", f, o.weight_tokens, none, none, only))
    out += sweep[2:]
    for i in (parse_layers(o.layers, n) if o.layer_tokens else []):
        only = lambda ranks: [r if j == i else None for j, r in enumerate(ranks)]
        out.append(Setting(f"layer {i} keys k{f:.0%}", "keys", f"layer {i}", f, o.layer_tokens,
                           only(k(key_tap, f)), none))
        out.append(Setting(f"layer {i} values k{f:.0%}", "values", f"layer {i}", f, o.layer_tokens, none,
                           only(k("value", f))))
    return out


def parse_layers(text: str, n: int) -> list[int]:
    """'none', 'all', 'middle', or comma-separated indices -> layer indices."""
    text = (text or "none").strip().lower()
    if text == "none":
        return []
    if text == "all":
        return list(range(n))
    out = []
    for part in text.split(","):
        i = n // 2 if part == "middle" else n - 1 if part == "last" else 0 if part == "first" else int(part)
        if not 0 <= i < n:
            raise UserError(f"--layers {part} is out of range: this model has layers 0..{n - 1}")
        out.append(i)
    return out


def model_for(s: Setting, hf, cfg: DecoderConfig, stats, sink_id, engine: str):
    """(context manager, TorchLM) that scores setting s: the HF model with edited attention weights (engine
    'hf'), or the reference decoder the ONNX export is traced from (engine 'decoder')."""
    if s.weight_ranks is not None:
        edits = truncation_edits(hf, cfg, s.weight_ranks)
        if engine == "hf":
            return edited_attention(hf, cfg, edits), TorchLM(hf_forward(hf))
        with edited_attention(hf, cfg, edits):
            dec = build_decoder(hf)
        return _nothing(), TorchLM(decoder_forward(dec))
    proj = fit_pca(stats, cfg, s.key_ranks, s.value_ranks, "pre-rope", sink_id, {"purpose": "analysis"})
    if engine == "hf":
        return edited_attention(hf, cfg, pca_edits(hf, cfg, proj)), TorchLM(hf_forward(hf))
    return _nothing(), TorchLM(decoder_forward(build_decoder(hf, proj)))


@contextmanager
def _nothing():
    yield


def rank_summary(ranks: list) -> dict | None:
    r = [x for x in ranks if x is not None]
    if not r:
        return None
    return {"mean": sum(r) / len(r), "min": min(r), "max": max(r), "layers": len(r)}


class Clock:
    """The time budget of the perplexity rows: a row runs only when its estimated time (windows x the measured
    seconds per window, plus original logits still to compute) ends before the deadline."""

    def __init__(self, deadline: float | None):
        self.deadline = deadline
        self.per_window = None          # seconds per scored window: forward + validate.quality statistics
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
    """Perplexity rows, in the order given (highest priority first): validate.quality.measure for every setting
    against the original logits computed once. Rows that would overrun the deadline are listed as skipped."""
    from validate.quality import measure
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
    return {"eval_file": o.eval, "window": window, "sink_token": sink_token, "engine": o.engine, "rows": rows,
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


# --- 5. memory ----------------------------------------------------------------------------------------------

def memory(cfg: DecoderConfig, quality: dict | None, o: AnalyzeOptions) -> tuple[dict, str]:
    """The KV memory table: original vs the keys+values PCA settings scored above (their ranks), fp32 and fp16."""
    L, G, d = cfg.num_layers, cfg.num_kv_heads, cfg.head_dim
    layouts = {f"original {dt}": estimate.layout_for_ranks(L, G, d, dtype=dt) for dt in ("float32", "float16")}
    for row in (quality or {}).get("rows", []):
        if row["kind"] == "keys+values" and row["scope"] == "all layers":
            for dt in ("float32", "float16"):
                layouts[f"PCA {row['name']} {dt}"] = estimate.layout_for_ranks(
                    L, G, d, row["key_ranks"], row["value_ranks"], dt)
    md = estimate.markdown(layouts, o.seq_lengths, o.batch_sizes, sink=o.sink != "none")
    js = {"layouts": {n: lay.to_json() for n, lay in layouts.items()},
          "bytes_per_token": {n: kv_bytes_per_token(lay) for n, lay in layouts.items()},
          "per_layer": {n: [asdict(b) for b in estimate.per_layer(lay)] for n, lay in layouts.items()},
          "table": estimate.table(layouts, o.seq_lengths, o.batch_sizes, sink=o.sink != "none")}
    return js, md


# --- report -------------------------------------------------------------------------------------------------

def _spread(values, fmt="{:.1f}") -> str:
    """'median (min-max)' of a list of numbers."""
    v = sorted(values)
    if not v:
        return "-"
    med = v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2
    return f"{fmt.format(med)} ({fmt.format(v[0])}-{fmt.format(v[-1])})"


def _ranks(summary: dict | None) -> str:
    if not summary:
        return "full"
    if summary["min"] == summary["max"]:
        return f"{summary['min']}"
    return f"{summary['mean']:.1f} ({summary['min']}-{summary['max']})"


def reference_layer(r: dict) -> int:
    return r["model"]["num_layers"] // 2


def model_label(m: dict) -> str:
    """'smollm2-135m (smollm2)': the short name, and what the user asked for when that differs."""
    return m["name"] if m["name"] == m["source"] else f"{m['name']} ({m['source']})"


def md_overview(r: dict) -> list[str]:
    t, m, mach = r["text"], r["model"], r["machine"]
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in r["timings_s"].items() if k != "total")
    cached = "from the cache" if t["cached"] else "computed in this run"
    return [f"# Spectrum analysis: {model_label(m)}", "",
            f"Model `{model_label(m)}` ({m['model_type']}, {m['num_layers']} layers, hidden {m['hidden_size']}, "
            f"{m['num_heads']} query heads, {m['num_kv_heads']} KV heads of {m['head_dim']} dims, so keys and "
            f"values have {m['num_kv_heads'] * m['head_dim']} dims per layer). Activations from "
            f"`{os.path.basename(t['file'])}`: {t['tokens']:,} tokens in {t['windows']} windows of {t['window']}, "
            f"each after the sink token {t['sink_token']!r} at position 0 (statistics {cached}).", "",
            f"Command: `{r['command']}`. Wall time {r['timings_s']['total']:.0f} s ({stages}); peak resident memory "
            f"{r['peak_rss_gib']:.2f} GiB (CPU, {mach['threads']} of {mach['cores']} cores; at the start "
            f"{mach['busy_cores_at_start']:.1f} cores busy with other work, load average "
            f"{mach['load_average_at_start']:.1f}). Spectrum part alone (capture, eigenvalues, weight "
            f"SVDs): {r['spectrum_stage']['seconds']:.0f} s, peak {r['spectrum_stage']['peak_rss_gib']:.2f} GiB, "
            "no GPU.", ""]


def md_activation_summary(r: dict) -> list[str]:
    lines = ["## 1. Effective dimension of activations: raw vs robust", "",
             "Df = (sum l)^2 / sum l^2 over the eigenvalues l of the covariance; k95 = fewest principal directions "
             "holding 95 % of the variance. Median over layers (min-max). Variants: **raw** every token, the sink "
             "included; **-pos 0** the sink position left out (what PCA projectors are fitted on); **-sinks** also "
             "every token whose norm is over "
             f"{r['options']['token_factor']:g}x its window's median; **standardised** -sinks with every dimension "
             "scaled to unit variance (correlation matrix).", "",
             "| tensor | dims | Df raw | Df -pos 0 | Df -sinks | Df standardised | k95 raw | k95 -pos 0 | "
             "k95 standardised |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for tap, layers in r["activations"].items():
        get = lambda v, key: [x["variants"][v][key] for x in layers]
        lines.append(f"| {TAP_TITLES[tap]} | {layers[0]['variants']['raw']['dims']} | " +
                     " | ".join(_spread(get(v, "df")) for v in VARIANTS) + " | " +
                     " | ".join(_spread(get(v, "k95"), "{:.0f}") for v in ("raw", "no_pos0", "standardized")) + " |")
    L = reference_layer(r)
    lines += ["", f"Layer {L} in detail (Df / k90 / k95 / k99):", "",
              "| tensor | " + " | ".join(VARIANT_TITLES[v] for v in VARIANTS) + " |", "| --- |" + " --- |" * 4]
    for tap, layers in r["activations"].items():
        cell = lambda s: f"{s['df']:.2f} / {s['k90']} / {s['k95']} / {s['k99']}"
        lines.append(f"| {TAP_TITLES[tap]} | " + " | ".join(cell(layers[L]["variants"][v]) for v in VARIANTS) + " |")
    return lines + [""]


def md_probes(r: dict) -> list[str]:
    """Variance kept and relative reconstruction error at the probe ranks, and k for the probe errors."""
    ranks = [str(k) for k in r["options"]["probe_ranks"]]
    errors = [str(e) for e in r["options"]["probe_errors"]]
    lines = ["### At fixed ranks", "",
             "Variance kept by the top k principal directions and the relative reconstruction error "
             "||X - X_k|| / ||X|| of PCA at k (centered data; PCA is the rank-k optimum on its data, Eckart-Young), "
             "raw and without the sink position; then the k that brings the error down to the probe errors. "
             "Median over layers (min-max).", "",
             "| tensor | " + " | ".join(f"kept at k={k}, raw | kept at k={k}, -pos 0 | error at k={k}, raw | "
                                        f"error at k={k}, -pos 0" for k in ranks) + " | " +
             " | ".join(f"k for error <= {float(e):.0%}, -pos 0" for e in errors) + " |",
             "| --- |" + " --- |" * (4 * len(ranks) + len(errors))]
    for tap, layers in r["activations"].items():
        cells = []
        for k in ranks:
            if k not in layers[0]["probe"]:
                cells += ["-"] * 4
                continue
            get = lambda v, key: [x["probe"][k][v][key] for x in layers]
            cells += [_spread(get(v, key), "{:.1%}") for key in ("kept", "relative_error") for v in ("raw", "no_pos0")]
        cells += [_spread([x["k_for_relative_error"][e] for x in layers], "{:.0f}") for e in errors]
        lines.append(f"| {TAP_TITLES[tap]} | " + " | ".join(cells) + " |")
    return lines + [""]


def md_outliers(r: dict) -> list[str]:
    lines = ["### Why raw Df is tiny: the outlier dimensions and tokens found", "",
             f"A dimension is an outlier when its std (sink included) is over {r['options']['dim_factor']:g}x the "
             "median std of its tensor. Per tensor: outlier dims (in how many layers; the largest share of the raw "
             "variance they held in one layer), the sink's norm over the RMS token norm (median over layers, and "
             "max), and high-norm tokens found besides the sink.", "",
             "| tensor | outlier dims (layers, max share of raw variance) | sink norm / RMS norm | "
             "other high-norm tokens |",
             "| --- | --- | --- | --- |"]
    for tap, layers in r["activations"].items():
        dims: dict[int, list] = {}
        for x in layers:
            for d in x["outlier_dims"]:
                dims.setdefault(d["dim"], []).append(d["raw_variance_share"])
        dim_text = ", ".join(f"{d} ({len(v)}, {max(v):.0%})" for d, v in
                             sorted(dims.items(), key=lambda kv: (-len(kv[1]), -max(kv[1])))[:8]) or "none"
        ratios = [x["outlier_tokens"]["sink_norm_over_rms"] for x in layers
                  if x["outlier_tokens"]["sink_norm_over_rms"] is not None]
        sink_text = f"{_spread(ratios)}" if ratios else "no sink"
        flagged = sum(x["outlier_tokens"]["flagged"] for x in layers)
        names: dict[str, int] = {}
        for x in layers:
            for t in x["outlier_tokens"]["top"]:
                names[t["token"]] = names.get(t["token"], 0) + 1
        tok_text = (f"{flagged} token-layer hits; e.g. " + ", ".join(f"{n!r}" for n in list(names)[:5])) \
            if flagged else "none"
        lines.append(f"| {TAP_TITLES[tap]} | {dim_text} | {sink_text} | {tok_text} |")
    L = reference_layer(r)
    hid = r["activations"].get("hidden")
    if hid:
        x = hid[L]
        top = ", ".join(f"dim {d['dim']}: std {d['std_ratio']:.0f}x median, {d['raw_variance_share']:.1%} of raw "
                        f"variance, sink value {d['sink_value']:.1f}, max |x| elsewhere {d['max_abs_other_tokens']:.1f}"
                        for d in x["outlier_dims"][:4])
        raw, rest = x["variants"]["raw"], x["variants"]["no_pos0"]
        verdict = ("the raw figure measures the sink token's massive dimensions, not the data"
                   if raw["df"] < rest["df"] / 2 else "here the sink does not dominate the raw figure")
        lines += ["", f"Residual stream at layer {L}: {top or 'no outlier dims'}; the sink's norm is "
                      f"{x['outlier_tokens']['sink_norm_over_rms'] or 0:.0f}x the RMS token norm. Raw Df "
                      f"{raw['df']:.2f} (k95 = {raw['k95']}) becomes {rest['df']:.1f} (k95 = {rest['k95']}) without "
                      f"the sink position: {verdict}."]
    return lines + [""]


def md_heads(r: dict) -> list[str]:
    L = reference_layer(r)
    lines = ["## 2. Per head", "", f"Per-head spectra are the diagonal blocks of the joint covariance. Layer {L}; "
             "then the median over all layers and heads.", "",
             "| tensor | head | Df raw | Df -pos 0 | Df -sinks | Df standardised | k95 -pos 0 | dims |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for tap, layers in r["activations"].items():
        heads = layers[L].get("heads")
        if not heads or tap.startswith("query"):
            continue
        for h in range(len(heads["raw"])):
            s = {v: heads[v][h] for v in VARIANTS}
            lines.append(f"| {TAP_TITLES[tap]} | {h} | " + " | ".join(f"{s[v]['df']:.1f}" for v in VARIANTS) +
                         f" | {s['no_pos0']['k95']} | {s['raw']['dims']} |")
    lines += ["", "| tensor | Df -pos 0 per head, all layers | k95 -pos 0 per head | joint Df -pos 0 |",
              "| --- | --- | --- | --- |"]
    for tap, layers in r["activations"].items():
        if "heads" not in layers[0]:
            continue
        dfs = [s["df"] for x in layers for s in x["heads"]["no_pos0"]]
        ks = [s["k95"] for x in layers for s in x["heads"]["no_pos0"]]
        lines.append(f"| {TAP_TITLES[tap]} | {_spread(dfs)} | {_spread(ks, '{:.0f}')} | "
                     f"{_spread([x['variants']['no_pos0']['df'] for x in layers])} |")
    return lines + [""]


def md_weights(r: dict) -> list[str]:
    rows = r["weights"]
    probes = [str(k) for k in r["options"]["probe_ranks"]]
    lines = ["## 3. Weight spectra", "",
             "Singular values sigma of every weight matrix; Df and k95 over the energies sigma^2 (as for "
             "activations), Df(sigma) over the singular values themselves; energy kept by the top-k directions at "
             "the probe ranks. Median over layers (min-max).", "",
             "| matrix | shape [out, in] | Df(sigma^2) | k95 energy | Df(sigma) | " +
             " | ".join(f"energy at k={k}" for k in probes) + " |", "| --- |" + " --- |" * (4 + len(probes))]
    for name in [k for k in rows[0] if k != "layer"]:
        col = lambda key: [row[name][key] for row in rows]
        lines.append(f"| {name} | {rows[0][name]['shape']} | {_spread(col('df'))} | {_spread(col('k95'), '{:.0f}')} | "
                     f"{_spread(col('df_sigma'))} | " +
                     " | ".join(_spread([row[name]['energy_at'].get(k, float('nan')) for row in rows], '{:.0%}')
                                for k in probes) + " |")
    trunc = [x for x in (r.get("quality") or {}).get("rows", []) if x["kind"].startswith("attention weights")]
    if trunc:
        lines += ["", "Perplexity with attention matrices truncated (every layer) to their own k for "
                      f"{trunc[0]['fraction']:.0%} of the energy (validate.quality, "
                      f"`{os.path.basename(trunc[0]['quality']['eval_file'])}`):", "",
                  "| truncated | mean rank q / k / v / o | tokens | perplexity | original | increase | KL nats/token | "
                  "top-1 |", "| --- |" + " --- |" * 7]
        for x in trunc:
            q = x["quality"]
            mean = lambda m: sum(w[m] for w in x["weight_ranks"]) / len(x["weight_ranks"])
            lines.append(f"| {x['kind'].replace('attention weights', 'q, k, v, o').replace('q, k, v, o (', '(')} | "
                         f"{' / '.join(f'{mean(m):.0f}' for m in 'qkvo')} | {q['tokens_scored']:,} | "
                         f"{q['ppl_compressed']:.3f} | {q['ppl_original']:.3f} | {q['ppl_increase_pct']:+.2f} % | "
                         f"{q['kl_mean']:.4f} | {q['top1_agreement']:.2%} |")
    return lines + [""]


def md_quality(r: dict) -> list[str]:
    q = r.get("quality")
    if not q:
        return ["## 4. Variance is not quality", "", "Skipped (--skip-quality).", ""]
    lines = ["## 4. Variance is not quality", "",
             f"k per layer chosen to keep a fraction of the variance of the calibration keys (before RoPE, the "
             f"export's default) or values, then PCA projectors fitted exactly as `make export` does (sink direction "
             f"in every basis) and perplexity measured with validate.quality on `{os.path.basename(q['eval_file'])}` "
             f"in windows of {q['window']} after the sink {q['sink_token']!r}. Ranks: mean (min-max) over "
             "compressed layers. KV bytes: fp32 cache, all layers.", "",
             "| setting | scope | tokens | key k | value k | KV B/token | vs full | perplexity | original | increase | "
             "KL nats/token | top-1 |", "| --- |" + " --- |" * 11]
    for x in q["rows"]:
        if x["kind"].startswith("attention weights"):
            continue
        qq = x["quality"]
        lines.append(f"| {x['kind']} at {x['fraction']:.0%} variance | {x['scope']} | {qq['tokens_scored']:,} | "
                     f"{_ranks(x['key_rank_summary'])} | {_ranks(x['value_rank_summary'])} | "
                     f"{x['kv_bytes_per_token_fp32']:,} | {x['kv_ratio']:.2f}x | {qq['ppl_compressed']:.3f} | "
                     f"{qq['ppl_original']:.3f} | {qq['ppl_increase_pct']:+.2f} % | {qq['kl_mean']:.4f} | "
                     f"{qq['top1_agreement']:.2%} |")
    if q.get("skipped"):
        lines += ["", f"Not scored, to stay inside the time budget of {r['options']['time_budget']:.0f} s: " +
                  ", ".join(f"{x['name']} ({x['scope']}, ~{x['estimated_seconds']:.0f} s)" for x in q["skipped"]) +
                  ". Run with `--time-budget 0` to score every row."]
    lines += ["", f"Engine: `{q['engine']}`. " + ENGINE_NOTE[q["engine"]], ""]
    return lines


ENGINE_NOTE = {
    "hf": "The HF model with each compressed layer's k_proj/v_proj replaced by the affine map "
          "x -> mean + BB^T(Wx + b - mean), the same map the export folds into its graph; tests/test_spectrum.py "
          "proves its logits equal the reference decoder's (exporter/fold.build_decoder with the same projectors) "
          "within 1e-4 relative, and the "
          "project's parity tests prove the reference decoder equals the ONNX export within 1e-4 relative. It runs "
          "HF's fused attention, faster on CPU than the reference decoder's full softmax over all scores.",
    "decoder": "The reference decoder (exporter/fold.build_decoder with the projectors), the module the ONNX export "
               "is traced from; the project's parity tests prove its logits equal the ONNX export's within 1e-4 "
               "relative."}


def md_memory(r: dict, table_md: str) -> list[str]:
    mem = r["memory"]
    lines = ["## 5. KV memory", "",
             "graphs/estimate.py on the contract's layout (graphs/contract.kv_bytes_per_token); "
             "tests/test_estimator.py proves the estimate equals the bytes of the present.* tensors an exported "
             "ONNX model returns. The sink is one ordinary cached token.", "", table_md, "",
             "Bytes per token per layer (keys + values):", "",
             "| layer | " + " | ".join(mem["per_layer"]) + " |", "| --- |" + " --- |" * len(mem["per_layer"])]
    n = len(next(iter(mem["per_layer"].values())))
    for i in range(n):
        lines.append(f"| {i} | " + " | ".join(f"{v[i]['key']:,} + {v[i]['value']:,}" for v in mem["per_layer"].values())
                     + " |")
    return lines + [""]


def md_appendix(r: dict) -> list[str]:
    lines = ["## Appendix: every layer", ""]
    for tap, layers in r["activations"].items():
        lines += [f"### {TAP_TITLES[tap]}", "",
                  "| layer | Df raw | k95 raw | Df -pos 0 | k95 -pos 0 | Df -sinks | k95 -sinks | Df standardised | "
                  "k95 standardised | outlier dims | top eigenvalues -pos 0 |", "| --- |" + " --- |" * 10]
        for x in layers:
            v = x["variants"]
            lines.append(f"| {x['layer']} | " + " | ".join(f"{v[k]['df']:.2f} | {v[k]['k95']}" for k in VARIANTS) +
                         f" | {', '.join(str(d['dim']) for d in x['outlier_dims'][:5]) or '-'} | "
                         f"{', '.join(f'{e:.3g}' for e in v['no_pos0']['top'][:4])} |")
        lines.append("")
    return lines


def report_md(r: dict, table_md: str) -> str:
    plots = ["", "## Plots", ""] + [f"- [{p}]({p})" for p in r["plots"]] + [""]
    sections = [md_overview, md_activation_summary, md_probes, md_outliers, md_heads, md_weights, md_quality]
    return "\n".join(sum((f(r) for f in sections), []) + md_memory(r, table_md) + plots + md_appendix(r))


# --- the job ------------------------------------------------------------------------------------------------

def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2     # Linux reports KiB


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
    if os.path.realpath(o.text) == os.path.realpath(o.eval):
        print(f"warning: the analysis text is the perplexity text ({o.eval}); PCA rows are then measured on "
              "their own calibration data", file=sys.stderr)


def save_eigenvalues(path: str, eigs: dict, sigmas: dict) -> None:
    arrays = {f"{tap}.{v}.{i}": e for (tap, v), es in eigs.items() for i, e in enumerate(es)}
    arrays.update({f"weight.{name}.{i}": s for name, ss in sigmas.items() for i, s in enumerate(ss)})
    np.savez_compressed(path, **arrays)


def write_text(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def run(o: AnalyzeOptions) -> str:
    """The whole analysis; returns the output directory."""
    from . import plots
    check_options(o)
    start, timings = time.time(), {}
    load_at_start, busy = os.getloadavg()[0], busy_cores()
    threads = pick_threads(o.threads, busy)
    torch.set_num_threads(threads)
    print(f"using {threads} torch thread(s): {busy:.1f} of {os.cpu_count()} cores busy with other work "
          f"(load average {load_at_start:.1f})", flush=True)

    def stage(name, t0):
        timings[name] = time.time() - t0
        return time.time()

    t0 = time.time()
    loaded = load(o.model, trust_remote_code=o.trust_remote_code)
    hf, tok = loaded.model, loaded.tokenizer
    cfg = from_hf(hf.config)
    sink_id = sink_token_id(tok, o.sink)
    fingerprint = model_fingerprint(hf)
    out = (o.out or os.path.join(o.build_dir, f"analyze-{loaded.name}")).rstrip("/")
    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    t0 = stage("load", t0)

    accs, sinks, windows, info = tap_statistics(build_decoder(hf), tok, cfg, o, sink_id, fingerprint)
    t0 = stage("capture", t0)
    acts, eigs = activation_spectra(accs, sinks, cfg, o, tok, windows, sink_id is not None)
    t0 = stage("activation spectra", t0)
    weights, sigmas = weight_spectra(hf, cfg, o.probe_ranks, o.fraction)
    t0 = stage("weight spectra", t0)
    spectrum_stage = {"seconds": sum(timings[k] for k in ("capture", "activation spectra", "weight spectra")),
                      "peak_rss_gib": peak_rss_gib()}

    quality = None
    if not o.skip_quality:
        settings = plan_settings(cfg, eigs, weights, o)
        print(f"scoring {len(settings)} settings ({o.engine} engine)", flush=True)
        deadline = start + o.time_budget if o.time_budget > 0 else None
        quality = score(settings, hf, tok, cfg, (accs, sinks, info), sink_id, o, tmp, deadline)
        t0 = stage("perplexity", t0)

    mem_js, table_md = memory(cfg, quality, o)
    print(table_md, flush=True)
    sink_token = tok.convert_ids_to_tokens(sink_id) if sink_id is not None else None
    result = {"model": {"source": loaded.source, "name": loaded.name, "fingerprint": fingerprint, **cfg.to_json()},
              "command": o.command, "options": asdict(o),
              "text": {**info, "windows": len(windows), "sink_token": sink_token, "sink_token_id": sink_id},
              "activations": acts, "weights": weights, "quality": quality, "memory": mem_js,
              "spectrum_stage": spectrum_stage,
              "machine": {"cores": os.cpu_count(), "threads": threads, "load_average_at_start": load_at_start,
                          "busy_cores_at_start": busy}}
    result["plots"] = plots.write_all(result, eigs, sigmas, tmp)
    save_eigenvalues(os.path.join(tmp, "eigenvalues.npz"), eigs, sigmas)
    t0 = stage("plots", t0)
    timings["total"] = time.time() - start
    result["timings_s"], result["peak_rss_gib"] = timings, peak_rss_gib()
    write_text(os.path.join(tmp, "spectrum.json"), json.dumps(result, indent=1) + "\n")
    write_text(os.path.join(tmp, "report.md"), report_md(result, table_md))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    print(f"wrote {out} (spectrum.json, report.md, {len(result['plots'])} plots) in {timings['total']:.0f} s")
    return out


def _floats(text: str) -> tuple:
    return tuple(float(x) for x in text.split(",") if x.strip())


def _ints(text: str) -> tuple:
    return tuple(int(x) for x in text.split(",") if x.strip())


def _words(text: str) -> tuple:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def parse_args(argv) -> AnalyzeOptions:
    d = AnalyzeOptions()
    p = argparse.ArgumentParser(prog="python -m exporter.analyze", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="HF hub id, local HF directory or .gguf file (default: SmolLM2)")
    p.add_argument("--text", default=d.text, help="text the spectra and PCA fits are measured on "
                                                  "(default: wikitext-103 valid from ../shared/data)")
    p.add_argument("--out", default=None, help="output directory (default build/analyze-<model>)")
    p.add_argument("--eval", default=d.eval, help="perplexity text (default WikiText-2 raw test)")
    p.add_argument("--calib-tokens", type=int, default=d.calib_tokens, help="tokens of --text to analyse")
    p.add_argument("--window", type=int, default=d.window, help="analysis window in tokens (after the sink)")
    p.add_argument("--eval-tokens", type=int, default=d.eval_tokens, help="tokens scored by whole-model rows")
    p.add_argument("--eval-window", type=int, default=d.eval_window, help="perplexity window in tokens")
    p.add_argument("--layer-tokens", type=int, default=d.layer_tokens,
                   help="tokens scored by the sweep and single-layer rows (0: none of them)")
    p.add_argument("--fraction", type=float, default=d.fraction, help="the headline variance fraction (0.95)")
    p.add_argument("--fractions", default=",".join(map(str, d.fractions)),
                   help="variance fractions swept for keys alone and values alone, all layers, on --layer-tokens "
                        "('' for no sweep; --fraction is always among them)")
    p.add_argument("--whole", default=",".join(d.whole),
                   help="kinds scored on --eval-tokens at --fraction: keys, values, keys+values ('' for none)")
    p.add_argument("--layers", default=d.layers, help="single-layer rows: none | all | middle | first,last,3,...")
    p.add_argument("--weight-tokens", type=int, default=d.weight_tokens,
                   help="tokens scored with attention weights truncated to --fraction of their energy (0: skip)")
    p.add_argument("--weight-rows", default=d.weight_rows, choices=("all", "each"),
                   help="truncate q, k, v, o together (all), and also one kind at a time (each)")
    p.add_argument("--probe-ranks", default=",".join(map(str, d.probe_ranks)),
                   help="ranks at which variance/energy kept and reconstruction error are reported")
    p.add_argument("--probe-errors", default=",".join(map(str, d.probe_errors)),
                   help="relative reconstruction errors for which the PCA rank k is reported")
    p.add_argument("--taps", default=",".join(d.taps), help=f"tensors to analyse, from {', '.join(TAP_TITLES)}")
    p.add_argument("--engine", default=d.engine, help="perplexity engine: hf (fast) | decoder (the export's reference)")
    p.add_argument("--skip-quality", action="store_true", help="spectra, weights and memory only (no perplexity)")
    p.add_argument("--sink", default=d.sink, help="sink token at position 0: auto | none | TOKEN | ID")
    p.add_argument("--token-factor", type=float, default=d.token_factor,
                   help="high-norm token: norm over this x its window's median")
    p.add_argument("--dim-factor", type=float, default=d.dim_factor, help="outlier dim: std over this x median std")
    p.add_argument("--seq", default=",".join(map(str, d.seq_lengths)), help="memory table sequence lengths")
    p.add_argument("--batch", default=",".join(map(str, d.batch_sizes)), help="memory table batch sizes")
    p.add_argument("--no-cache", action="store_true", help="capture again even when build/calib has the statistics")
    p.add_argument("--time-budget", type=float, default=d.time_budget,
                   help="seconds from the start; perplexity rows that would overrun it are skipped (0: no limit)")
    p.add_argument("--threads", type=int, default=d.threads,
                   help="torch threads (0: auto, the cores other processes leave free, at least 1)")
    p.add_argument("--trust-remote-code", action="store_true")
    a = p.parse_args(argv)
    return AnalyzeOptions(model=a.model or None, text=a.text or d.text, out=a.out, eval=a.eval,
                          calib_tokens=a.calib_tokens, window=a.window, eval_tokens=a.eval_tokens,
                          eval_window=a.eval_window, layer_tokens=a.layer_tokens, fraction=a.fraction,
                          fractions=_floats(a.fractions), whole=_words(a.whole), layers=a.layers,
                          weight_tokens=a.weight_tokens, weight_rows=a.weight_rows, probe_ranks=_ints(a.probe_ranks),
                          probe_errors=_floats(a.probe_errors), taps=_words(a.taps),
                          engine=a.engine, skip_quality=a.skip_quality, sink=a.sink, token_factor=a.token_factor,
                          dim_factor=a.dim_factor, seq_lengths=_ints(a.seq), batch_sizes=_ints(a.batch),
                          cache=not a.no_cache, threads=a.threads, time_budget=a.time_budget,
                          trust_remote_code=a.trust_remote_code,
                          command=" ".join(["python -m exporter.analyze"] + [shlex.quote(x) for x in
                                                                            (sys.argv[1:] if argv is None else argv)]))


def main(argv=None) -> int:
    return cli_exit(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
