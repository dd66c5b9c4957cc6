"""The settings an export refuses, before any work where it can: one-line errors that name the fix.

Entry points: `check_options(o)` (before loading the model), `check_against_model(o, cfg)` (once its size is
known, before calibration), `is_quantized(o)` (refuses what a quantized cache cannot take), `has_cache_quant(o)`
(likewise for KV_DTYPE), `check_shared_buffer(decoder)` (what onnxruntime's fused attention cannot run).
"""
from __future__ import annotations

from graphs import kernels
from graphs.contract import CACHE_UPDATES, DTYPE_BYTES

from ..calib.text import parse_sources
from ..errors import UserError
from ..options import KEY_MODES, KV_DTYPES, KV_KERNELS, KV_ROTATIONS, METHODS, WINDOW_CACHES, ExportOptions
from ..quant.design import float16_bytes
from ..quant.window import shortest_bounded_window
from ..ranks.auto import check_budget


def check_options(o: ExportOptions) -> None:
    if o.key_mode not in KEY_MODES:
        raise UserError(f"KEY_MODE={o.key_mode!r} is unknown: use pre-rope or post-rope")
    if o.window_cache not in WINDOW_CACHES:
        raise UserError(f"WINDOW_CACHE={o.window_cache!r} is unknown: use {' or '.join(WINDOW_CACHES)}")
    if o.cache not in CACHE_UPDATES:
        raise UserError(f"CACHE={o.cache!r} is unknown: use {' or '.join(CACHE_UPDATES)}")
    if o.method not in METHODS + (None,):
        raise UserError(f"METHOD={o.method!r} is unknown: use {', '.join(METHODS)}")
    if o.dtype not in DTYPE_BYTES:
        raise UserError(f"DTYPE={o.dtype!r} is unknown: use {' or '.join(DTYPE_BYTES)}")
    if o.is_auto and (o.k_key is not None or o.k_value is not None or o.projectors):
        raise UserError("K=auto chooses every rank itself: drop K_KEY, K_VALUE and --projectors")
    if o.is_auto and o.auto.granularity < 1:
        raise UserError(f"--granularity {o.auto.granularity} must be >= 1 (K=auto ranks in steps of it)")
    if not o.is_auto and (o.auto.budget_bytes is not None or o.auto.max_ppl_increase is not None):
        raise UserError("BUDGET and MAX_PPL_INCREASE choose per-layer ranks: add K=auto, or drop them")
    is_quantized(o)             # their own refusals (QUANT, KV_DTYPE), before the model loads
    has_cache_quant(o)
    if not o.projectors:
        parse_sources(o.calib)  # a CALIB that names no file, or a mix with a bad part


WINDOWED_SHARED_BUFFER = ("CACHE=shared-buffer cannot bound a sliding-window layer's cache (onnxruntime's fused op "
                          "writes every token into its buffer): use CACHE=concat, or WINDOW_CACHE=full to keep "
                          "every token and let the op mask the window")


def check_against_model(o: ExportOptions, cfg) -> None:
    """What only the model's size tells, refused before any calibration: a K=auto budget it cannot meet, a
    QUANT_RATIO that leaves less than a byte per token for each coded tensor (keys and values of every layer)."""
    if o.is_auto:
        counted = [i for i in range(cfg.num_layers) if not (cfg.window(i) and o.window_cache == "bounded")]
        if not counted:
            raise UserError("K=auto spends bytes per token, and every layer of this model is windowed with a bounded "
                            "cache (no growth to save): use K=full, or WINDOW_CACHE=full")
        check_budget(o.auto, len(counted), DTYPE_BYTES[o.dtype])
    if o.cache == "shared-buffer" and cfg.windows and o.window_cache == "bounded":
        raise UserError(WINDOWED_SHARED_BUFFER)
    if o.quant.allocation is not None:
        tensors, fp16 = 2 * cfg.num_layers, float16_bytes(cfg)
        if fp16 // o.quant.ratio < tensors:
            raise UserError(f"QUANT_RATIO={o.quant.ratio:g} leaves {int(fp16 // o.quant.ratio)} bytes per token for "
                            f"{tensors} coded tensors, at least one byte each: use QUANT_RATIO <= {fp16 / tensors:g}")
        shortest = shortest_bounded_window(o, cfg)
        if o.quant.float_window and shortest is not None and shortest < o.quant.float_window:
            raise UserError(f"QUANT_WINDOW={o.quant.float_window} is longer than this model's sliding window of "
                            f"{shortest} tokens: use QUANT_WINDOW <= {shortest}, or WINDOW_CACHE=full")


def is_quantized(o: ExportOptions) -> bool:
    """Whether the export quantizes its cache; refuses the settings a quantized cache cannot take."""
    if o.quant.allocation is None:
        if o.method == "raw":
            raise UserError("METHOD=raw stores keys and values as they are: it is for quantized caches, add "
                            "QUANT=uniform (or use K=full for an uncompressed export)")
        return False
    o.quant.check()
    if o.is_auto:
        raise UserError("K=auto and QUANT choose bytes two ways: use a K (or full) with QUANT_RATIO")
    if o.dtype != "float32" or o.cache != "concat":
        raise UserError("a quantized cache needs DTYPE=float32 and CACHE=concat (its codes are uint8 either way)")
    if o.method == "raw" and any(x is not None and str(x).lower() != "full" for x in (o.k, o.k_key, o.k_value)):
        raise UserError("METHOD=raw codes every dimension: use K=full (or another METHOD for a rank)")
    if o.method == "trained" and "token" in (o.quant.key_scales, o.quant.value_scales):
        raise UserError("METHOD=trained trains through a quantizer of static steps: use QUANT_SCALES=static")
    return True


def has_cache_quant(o: ExportOptions) -> bool:
    """Whether onnxruntime's fused attention quantizes the cache (KV_DTYPE); refuses what it cannot take."""
    if o.kv_kernel not in KV_KERNELS:
        raise UserError(f"KV_KERNEL={o.kv_kernel!r} is unknown: use {' or '.join(KV_KERNELS)}")
    if o.kv_dtype is None:
        if o.kv_kernel != "onnxruntime":
            raise UserError(f"KV_KERNEL={o.kv_kernel} reads an int8 cache: add KV_DTYPE=int8 CACHE=shared-buffer")
        return False
    if o.kv_kernel == "codes" and kernels.library_path() is None:
        raise UserError(f"KV_KERNEL=codes needs our kernel library, which is not built: {kernels.BUILD_HINT}")
    if o.kv_dtype not in KV_DTYPES:
        raise UserError(f"KV_DTYPE={o.kv_dtype!r} is unknown: use {' or '.join(KV_DTYPES)}")
    if o.kv_rotation not in KV_ROTATIONS:
        raise UserError(f"KV_ROTATION={o.kv_rotation!r} is unknown: use {' or '.join(KV_ROTATIONS)}")
    if o.cache != "shared-buffer":
        raise UserError(f"KV_DTYPE={o.kv_dtype} is quantized by onnxruntime's fused attention: add CACHE=shared-buffer")
    if o.dtype != "float32" or o.quant.allocation is not None or o.projectors or o.method == "raw":
        raise UserError(f"KV_DTYPE={o.kv_dtype} quantizes the float32 cache itself: drop DTYPE, QUANT, METHOD=raw "
                        "and --projectors")
    if any(x is not None and str(x).lower() != "full" for x in (o.k, o.k_key, o.k_value)):
        raise UserError(f"KV_DTYPE={o.kv_dtype} stores every dimension of every head: use K=full")
    return True


def check_shared_buffer(decoder) -> None:
    """CACHE=shared-buffer runs every layer through GroupQueryAttention: full or k-space (post-RoPE) keys, values
    of the same size, a float cache, sizes that are multiples of 8 (the kernel's)."""
    for block in decoder.blocks:
        a = block.attn
        if a.key_mode == "pre-rope":
            raise UserError("CACHE=shared-buffer cannot rebuild pre-RoPE keys inside the fused op: "
                            "use KEY_MODE=post-rope or CACHE=concat")
        if (a.key_rank is None) != (a.value_rank is None) or a.key_rank != a.value_rank:
            raise UserError("CACHE=shared-buffer needs keys and values of one size (K_KEY == K_VALUE, both "
                            "compressed or both full): change the ranks or use CACHE=concat")
        if a.key_quant is not None or a.value_quant is not None:
            raise UserError("CACHE=shared-buffer cannot hold packed codes (QUANT): use CACHE=concat, or KV_DTYPE=int8 "
                            "for codes the fused op reads")
        if a.key_rank is not None and a.key_rank % 8:
            raise UserError(f"CACHE=shared-buffer needs K a multiple of 8 (onnxruntime's kernel), got "
                            f"{a.key_rank}: pick K={a.key_rank + 8 - a.key_rank % 8} or CACHE=concat")
    if any(b.attn.window and b.attn.window_bounded for b in decoder.blocks):
        raise UserError(WINDOWED_SHARED_BUFFER)
    pairs = decoder.rope.inv_freq.shape[0] if decoder.rope is not None else None
    if pairs is not None and 2 * pairs < decoder.cfg.head_dim and pairs % 8:
        raise UserError(f"CACHE=shared-buffer rotates inside onnxruntime's fused op, whose partial rotary must be a "
                        f"multiple of 16 numbers; this model rotates {2 * pairs} of {decoder.cfg.head_dim}: "
                        "use CACHE=concat")
