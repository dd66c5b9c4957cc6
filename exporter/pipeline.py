"""The export job end to end: load -> calibrate and fit projectors -> fold -> export -> metadata."""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field, replace

import torch

from graphs.contract import CACHE_UPDATES, DTYPE_BYTES
from graphs.metadata import ExportMetadata
from .auto import AutoOptions, Search, choose_ranks, probe_windows
from .calibrate import Rows, capture
from .config import from_hf
from .errors import UserError
from .export import layout_of, point_latest, save_export, OPSET
from .fit import (METHODS, fit_pca, fit_raw, key_tap, kv_statistics, output_metrics, output_whitening, parse_rank,
                  per_layer)
from .fold import build_decoder
from .load import load
from .probe import measured_sensitivities
from .projectors import load_projectors, model_fingerprint
from .quantize import QuantOptions, float16_bytes, quantize_projectors
from .text import DEFAULT_CALIB, fitting_window, token_windows
from .train import TrainOptions, train_projectors, training_windows

DEFAULT_KEY_MODE = "pre-rope"


@dataclass
class ExportOptions:
    model: str | None = None
    k: str = "128"
    k_key: str | None = None
    k_value: str | None = None
    key_mode: str = DEFAULT_KEY_MODE
    calib: str = str(DEFAULT_CALIB)
    calib_tokens: int = 16384
    window: int = 1024
    seed: int = 0
    out: str | None = None
    build_dir: str = "build"
    projectors: str | None = None
    sink: str = "auto"
    trust_remote_code: bool = False
    dtype: str = "float32"          # 'float16': weights, activations and cache in float16 (GPU users)
    cache: str = "concat"           # 'shared-buffer': fused GroupQueryAttention, in-place cache (contract.py)
    method: str | None = None       # 'pca' | 'output-aware' (whiten.py) | 'trained' (train.py, from output-aware);
                                    # None: pca, or output-aware for K=auto
    train: TrainOptions = field(default_factory=TrainOptions)
    auto: AutoOptions = field(default_factory=AutoOptions)    # K=auto: the budget (auto.py)
    quant: QuantOptions = field(default_factory=QuantOptions) # a quantized cache (quantize.py); off by default


def sink_token_id(tokenizer, choice: str) -> int | None:
    """The constant token at position 0 of every sequence. 'auto': the tokenizer's BOS, else its EOS
    (GPT-2's <|endoftext|>); 'none': no sink prefix; else a token string or id."""
    if choice == "none":
        return None
    if choice == "auto":
        tid = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if tid is None:
            raise UserError("the tokenizer has no BOS or EOS token: pass --sink TOKEN or --sink none")
        return int(tid)
    if choice.isdigit():
        return int(choice)
    tid = tokenizer.convert_tokens_to_ids(choice)
    if tid is None or tid == tokenizer.unk_token_id and choice != tokenizer.unk_token:
        raise UserError(f"sink token {choice!r} is not in the vocabulary: pass a token of this tokenizer")
    return int(tid)


def chat_wrapper(tokenizer) -> dict | None:
    """The chat template rendered around one user message, as a prefix and a suffix string, so the runtime
    can apply it without jinja or transformers."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    mark = "\x00MESSAGE\x00"
    text = tokenizer.apply_chat_template([{"role": "user", "content": mark}], tokenize=False,
                                         add_generation_prompt=True)
    prefix, _, suffix = text.partition(mark)
    return {"prefix": prefix, "suffix": suffix}


def stop_tokens(tokenizer, hf_config) -> list[int]:
    ids = set()
    for src in (getattr(hf_config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(src, int):
            ids.add(src)
        elif isinstance(src, (list, tuple)):
            ids.update(int(i) for i in src)
    return sorted(ids)


def default_out(o: ExportOptions, name: str, key_rank, value_rank) -> str:
    if o.out:
        return o.out
    if is_auto(o):
        a = o.auto
        tag = f"kauto-ppl{a.max_ppl_increase:g}" if a.max_ppl_increase is not None else f"kauto-{a.budget_bytes:g}B"
        tag += f"-{o.key_mode}"
    elif key_rank is None and value_rank is None:
        tag = "kfull"
    elif key_rank == value_rank:
        tag = f"k{key_rank}-{o.key_mode}"
    else:
        tag = f"k{key_rank or 'full'}v{value_rank or 'full'}-{o.key_mode}"
    suffix = ("" if o.method in ("pca", None) else f"-{o.method}") + ("" if o.dtype == "float32" else "-fp16") \
        + ("" if o.cache == "concat" else "-shared")
    q = o.quant
    if q.allocation:
        scales = q.key_scales if q.key_scales == q.value_scales else f"{q.key_scales}-{q.value_scales}"
        suffix += f"-q{q.allocation}{q.ratio:g}x-{scales}"
    return os.path.join(o.build_dir, f"{name}-{tag}{suffix}")


def is_auto(o: ExportOptions) -> bool:
    return str(o.k).lower() == "auto"


def auto_ranks(o: ExportOptions, hf, tok, cfg, full_decoder, stats, key_mode, sink, info):
    """K=auto: per-layer ranks from the budget (auto.py); the search's figures go into info['auto']."""
    if o.k_key is not None or o.k_value is not None or o.projectors:
        raise UserError("K=auto chooses every rank itself: drop K_KEY, K_VALUE and --projectors")
    metric = output_metrics(hf, cfg, stats, key_mode) if o.method != "pca" else None
    search = Search(full_decoder, tok, cfg, stats, metric, key_mode, sink, info, o.calib, o.calib_tokens, o.auto)
    choice, reference = choose_ranks(search, DTYPE_BYTES[o.dtype])
    info["auto"] = {"options": asdict(o.auto), "heldout_tokens": sum(len(w) - 1 for w in search.heldout),
                    "heldout_ppl_original": search.base,
                    "choice": asdict(choice), "uniform_pca_reference": asdict(reference) if reference else None}
    return choice.key_ranks, choice.value_ranks


def sink_handling(proj) -> str:
    if proj is None:
        return "constant prefix at position 0"
    if proj.info.get("method") == "trained":
        return "constant prefix at position 0; trained with it in every window (no longer coded exactly)"
    return "constant prefix at position 0; its key and value directions are in every basis"


def fit_projectors(o: ExportOptions, hf, tok, cfg, full_decoder, stats, key_ranks, value_ranks, key_mode, sink,
                   info):
    """The projectors o.method asks for: PCA, output-aware PCA, or output-aware PCA then training."""
    if o.method == "raw":
        return fit_raw(stats, cfg, key_mode, sink, info)
    metric = output_metrics(hf, cfg, stats, key_mode) if o.method != "pca" else None
    proj = fit_pca(stats, cfg, key_ranks, value_ranks, key_mode, sink, info, metric)
    if o.method != "trained":
        return proj
    t = replace(o.train, window=fitting_window(o.train.window, cfg.max_positions, sink))
    train, heldout = training_windows(tok, o.calib, o.calib_tokens, t, sink)
    return train_projectors(full_decoder, proj, key_tap(cfg, key_mode), train, heldout, t,
                            whitening=output_whitening(metric))


def check_quant(o: ExportOptions, auto: bool) -> bool:
    """Whether the export quantizes its cache; refuses the settings a quantized cache cannot take."""
    if o.quant.allocation is None:
        if o.method == "raw":
            raise UserError("METHOD=raw stores keys and values as they are: it is for quantized caches, add "
                            "QUANT=uniform (or use K=full for an uncompressed export)")
        return False
    o.quant.check()
    if auto:
        raise UserError("K=auto and QUANT choose bytes two ways: use a K (or full) with QUANT_RATIO")
    if o.dtype != "float32" or o.cache != "concat":
        raise UserError("a quantized cache needs DTYPE=float32 and CACHE=concat (its codes are uint8 either way)")
    if o.method == "raw" and any(x is not None and str(x).lower() != "full" for x in (o.k, o.k_key, o.k_value)):
        raise UserError("METHOD=raw codes every dimension: use K=full (or another METHOD for a rank)")
    return True


def quantizer_samples(o: ExportOptions, tok, cfg, full_decoder, key_mode: str, sink) -> dict | None:
    """{(layer, tap): (N, dim)} keys and values of the first o.quant.fit_tokens calibration tokens, the samples
    static quantizer scales are fitted to; None when fit_tokens is 0."""
    if not o.quant.fit_tokens:
        return None
    window = fitting_window(o.window, cfg.max_positions, sink)
    rows = {(i, tap): Rows() for i in range(cfg.num_layers) for tap in (key_tap(cfg, key_mode), "value")}
    capture(full_decoder, token_windows(tok, o.calib, window, o.quant.fit_tokens, sink), rows,
            desc="quantizer samples")
    return {k: r.matrix() for k, r in rows.items()}


def quantize(o: ExportOptions, hf, tok, cfg, full_decoder, stats, proj, sink, info, samples=None):
    """Bits for a quantized cache (quantize.py). PCA and output-aware codes are fitted again at the ranks the
    bits keep, so the sink stays exact; trained ones are not retrained (the sink's latent is put back exactly,
    but a trained code need not reconstruct the sink's vector from it)."""
    mode, method = proj.key_mode, proj.info.get("method")
    metric = output_metrics(hf, cfg, stats, mode)
    refit = None
    if method in ("pca", "output-aware"):
        refit = lambda kr, vr: fit_pca(stats, cfg, kr, vr, mode, sink, info, metric if method != "pca" else None)
    tap_of = lambda kind: key_tap(cfg, mode) if kind == "key" else "value"
    if samples is None:
        samples = quantizer_samples(o, tok, cfg, full_decoder, mode, sink)
    sensitivity = None
    if o.quant.sensitivity == "measured" and o.quant.allocation == "spectral":     # uniform: the plain quantizer
        probe = probe_windows(tok, o.calib, o.calib_tokens, cfg, sink, o.quant.probe_tokens)
        sensitivity = lambda coded, predicted: measured_sensitivities(hf, full_decoder, cfg, coded, predicted, probe)
    return quantize_projectors(proj, stats, metric if o.quant.weights == "output" else None, cfg, tap_of, sink,
                               o.quant, refit, samples, sensitivity)


def run_export(o: ExportOptions, loaded=None) -> str:
    """Do the whole export; returns the export directory. `loaded` (from load()) skips loading the model again
    when one process exports several settings."""
    if o.key_mode not in ("pre-rope", "post-rope"):
        raise UserError(f"KEY_MODE={o.key_mode!r} is unknown: use pre-rope or post-rope")
    if o.cache not in CACHE_UPDATES:
        raise UserError(f"CACHE={o.cache!r} is unknown: use {' or '.join(CACHE_UPDATES)}")
    if o.method not in METHODS + (None,):
        raise UserError(f"METHOD={o.method!r} is unknown: use {', '.join(METHODS)}")
    if o.dtype not in DTYPE_BYTES:
        raise UserError(f"DTYPE={o.dtype!r} is unknown: use {' or '.join(DTYPE_BYTES)}")
    torch.manual_seed(o.seed)
    t0 = time.time()
    loaded = loaded or load(o.model, trust_remote_code=o.trust_remote_code)
    hf, tok = loaded.model, loaded.tokenizer
    cfg = from_hf(hf.config)
    key_mode = o.key_mode if cfg.has_rope else "post-rope"   # without RoPE both modes are k-space scores
    auto = is_auto(o)
    if o.method is None:
        o = replace(o, method="output-aware" if auto else "pca")
    key_rank = None if auto else parse_rank(o.k_key if o.k_key is not None else o.k, cfg.kv_dim,
                                            "K_KEY" if o.k_key else "K")
    value_rank = None if auto else parse_rank(o.k_value if o.k_value is not None else o.k, cfg.kv_dim,
                                              "K_VALUE" if o.k_value else "K")
    quantized = check_quant(o, auto)
    if quantized and o.method != "raw":     # K=full with a quantizer: the full-rank transform, bits decide
        key_rank, value_rank = key_rank or cfg.kv_dim, value_rank or cfg.kv_dim
    sink = sink_token_id(tok, o.sink)
    fingerprint = model_fingerprint(hf)
    info = {"model": loaded.source, "model_fingerprint": fingerprint, "seed": o.seed}
    full_decoder = build_decoder(hf)
    stats = None
    if o.projectors:
        proj = load_projectors(o.projectors, fingerprint)
    elif key_rank is None and value_rank is None and not auto and not quantized:
        proj = None
    else:
        stats = kv_statistics(full_decoder, tok, cfg, o.calib, o.calib_tokens, o.window, sink, fingerprint,
                              o.build_dir)
        key_ranks, value_ranks = auto_ranks(o, hf, tok, cfg, full_decoder, stats, key_mode, sink, info) if auto \
            else (per_layer(key_rank, cfg.num_layers), per_layer(value_rank, cfg.num_layers))
        proj = fit_projectors(o, hf, tok, cfg, full_decoder, stats, key_ranks, value_ranks, key_mode, sink, info)
    if quantized:
        stats = stats or kv_statistics(full_decoder, tok, cfg, o.calib, o.calib_tokens, o.window, sink,
                                       fingerprint, o.build_dir)
        proj = quantize(o, hf, tok, cfg, full_decoder, stats, proj, sink, info)
    decoder = build_decoder(hf, proj) if proj is not None else full_decoder
    if o.cache == "shared-buffer":
        decoder.use_fused_attention()
    ranks = proj.ranks() if proj else {"key": [None] * cfg.num_layers, "value": [None] * cfg.num_layers}
    mode = proj.key_mode if proj else "full"
    stops = stop_tokens(tok, hf.config)
    meta = ExportMetadata(
        model={"source": loaded.source, "name": loaded.name, "fingerprint": fingerprint, **cfg.to_json()},
        layout=layout_of(decoder, o.dtype), key_mode=mode, ranks=ranks,
        sink={"token_id": sink, "token": tok.convert_ids_to_tokens(sink) if sink is not None else None,
              "handling": sink_handling(proj)},
        eos_token_ids=stops,
        pad_token_id=int(tok.pad_token_id if tok.pad_token_id is not None else (stops or [0])[0]),
        opset=OPSET, calibration=proj.info.get("calibration") if proj else None, chat=chat_wrapper(tok),
        exporter=f"torch {torch.__version__} torch.onnx.export(dynamo=False)", cache_update=o.cache,
        extra={"seed": o.seed, "projector_method": proj.info.get("method") if proj else None,
               "quant": {k: v for k, v in proj.info["quant"].items() if k != "sensitivity"}
               if proj and proj.info.get("quant") else None})
    out = default_out(o, loaded.name, key_rank, value_rank)
    save_export(decoder, meta, tok, out, proj)
    point_latest(out, o.build_dir)
    print(f"wrote {out} ({meta.kv_bytes_per_token} KV bytes/token, "
          f"uncompressed {2 * cfg.num_layers * cfg.kv_dim * DTYPE_BYTES[o.dtype]}"
          + (f", {float16_bytes(cfg) / meta.kv_bytes_per_token:.2f}x fewer than float16" if quantized else "")
          + f") in {time.time() - t0:.0f} s")
    return out
