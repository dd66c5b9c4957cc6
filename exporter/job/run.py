"""The export job end to end: python -m exporter and `make export` call run_export.

    ExportJob.start        check options, load the model, build the uncompressed decoder   (job/job.py)
                           (streamed_job: a model bigger than memory, read layer by layer   (job/streamed.py))
    choose_auto_ranks      K=auto only                                                     (job/stages.py)
    fit_projectors         calibration statistics -> per-layer codes at the ranks
    quantize               QUANT only: bits and steps for packed codes
    fit_cache_quant        KV_DTYPE only: steps of the int8 cache the fused attention writes
    build_decoder          HF weights with the codes folded in                             (model/fold.py)
    save_export            model.onnx + export.json + tokenizer + projectors, atomically   (export/directory.py)
                           (save_streamed: model.onnx traced layer by layer into external data)

From the moment --out is known until build/latest points at the result, the export holds --out's lock
(export/claim.py): a second export to the same directory is refused, and leftovers of killed ones are removed.

Entry point: `run_export(options)` -> the export directory.
"""
from __future__ import annotations

import os
import time

from graphs.contract import DTYPE_BYTES, bytes_per_token_at, cached_token_bytes
from graphs.metadata import ExportMetadata

from ..codec.store import load_projectors
from ..export.claim import claim_out_dir
from ..export.directory import check_out_dir, point_latest, save_export
from ..model.fold import build_decoder
from ..options import ExportOptions, given_rank, per_layer
from ..quant.design import float16_bytes
from .checks import check_shared_buffer, has_cache_quant, is_quantized
from .job import ExportJob
from .metadata import export_metadata
from .streamed import save_streamed, streamed_job, streams
from .stages import choose_auto_ranks, fit_cache_quant, fit_projectors, fit_quantized, quantize


def default_out(o: ExportOptions, name: str, key_rank, value_rank) -> str:
    if o.out:
        return o.out
    if o.is_auto:
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
        + ("" if o.cache == "concat" else "-shared") + (f"-kv{o.kv_dtype}" if o.kv_dtype else "") \
        + ("-norot" if o.kv_dtype and o.kv_rotation == "none" else "") \
        + ("-codes" if o.kv_dtype and o.kv_kernel == "codes" else "")
    q = o.quant
    if q.allocation:
        scales = q.key_scales if q.key_scales == q.value_scales else f"{q.key_scales}-{q.value_scales}"
        suffix += f"-q{q.allocation}{q.ratio:g}x-{scales}" + (f"-w{q.float_window}" if q.float_window else "")
    return os.path.join(o.build_dir, f"{name}-{tag}{suffix}")


def run_export(o: ExportOptions, loaded=None) -> str:
    """Do the whole export; returns the export directory. `loaded` (from model/load.load) skips loading the
    model again when one process exports several settings."""
    t0 = time.time()
    if o.out:
        check_out_dir(o.out)                # before minutes of loading: the same check runs again under the lock
    # a model bigger than memory (or STREAM=1) is read one layer at a time wherever it is read
    job = streamed_job(o) if loaded is None and streams(o) else ExportJob.start(o, loaded)
    o, cfg = job.options, job.config
    key_rank = None if o.is_auto else given_rank(o, "key", cfg.kv_dim)
    value_rank = None if o.is_auto else given_rank(o, "value", cfg.kv_dim)
    quantized = is_quantized(o)
    if quantized and o.method != "raw":     # K=full with a quantizer: the full-rank transform, bits decide
        key_rank, value_rank = key_rank or cfg.kv_dim, value_rank or cfg.kv_dim
    out = default_out(o, job.loaded.name, key_rank, value_rank)
    with claim_out_dir(out):
        check_out_dir(out)
        meta = export_into(job, out, key_rank, value_rank)
        point_latest(out, o.build_dir)
    windows = sorted({s.window for s in meta.layout.keys if s.window})
    context = o.quant.window_context
    at_context = bytes_per_token_at(meta.layout, context) if meta.layout.float_window else None
    print(f"wrote {out} ({meta.kv_bytes_per_token} KV bytes/token"
          + (f" beyond the sliding windows ({cached_token_bytes(meta.layout)} within)" if windows else "")
          + (f", {at_context:.1f} at {context} tokens with the float window" if at_context else "")
          + f", uncompressed {2 * cfg.num_layers * cfg.kv_dim * DTYPE_BYTES[o.dtype]}"
          + (f", {float16_bytes(cfg) / (at_context or cached_token_bytes(meta.layout)):.2f}x fewer than float16"
             if quantized else "")
          + f") in {time.time() - t0:.0f} s")
    return out


def export_into(job: ExportJob, out: str, key_rank, value_rank) -> ExportMetadata:
    """Fit what the options ask for at these ranks, fold it into the decoder and save the export at out."""
    o, cfg = job.options, job.config
    quantized = is_quantized(o)
    if o.projectors:
        proj = load_projectors(o.projectors, job.fingerprint)
        proj = quantize(job, proj) if quantized else proj               # bits for the projectors given
    elif has_cache_quant(o):
        proj = fit_cache_quant(job)
    elif key_rank is None and value_rank is None and not o.is_auto and not quantized:
        proj = None
    elif o.is_auto:
        key_ranks, value_ranks, job.provenance["auto"] = choose_auto_ranks(job)
        proj = fit_projectors(job, key_ranks, value_ranks)
    else:
        key_ranks, value_ranks = per_layer(key_rank, cfg.num_layers), per_layer(value_rank, cfg.num_layers)
        fit = fit_quantized if quantized else fit_projectors
        proj = fit(job, key_ranks, value_ranks)
    if job.stream is not None:
        return save_streamed(job, out, proj)
    decoder = build_decoder(job.hf, proj) if proj is not None else job.decoder
    if o.window_cache == "full":
        decoder.keep_window_tokens()
    if o.cache == "shared-buffer" and not decoder.fused:
        check_shared_buffer(decoder)
        decoder.use_fused_attention()
    meta = export_metadata(job, decoder, proj)
    save_export(decoder, meta, job.tokenizer, out, proj)
    return meta
