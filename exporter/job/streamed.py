"""An export that never holds the whole model: read one decoder layer at a time, written piece by piece.

A model whose float32 weights pass STREAM_ABOVE_BYTES (the protobuf's 2 GB, and the point where holding the
model, its compact decoder and a traced copy at once stops fitting small machines) is exported this way, or any
model with --stream / STREAM=1. What it needs of the model is read layer by layer (model/stream.LayerStream):
the fingerprint (each layer's key and value weights), then model.onnx (export/pieces.py: one traced piece per
layer, weights appended to model.onnx.data). The cache layout and export.json come from the model's skeleton
on the meta device, built by the same fold code as the whole-model export, so both describe the same graph.

Supported so far: K=full with the concat cache (float32). Calibrated settings (K < full, QUANT, KV_DTYPE) need
statistics taken layer by layer (calib/capture.capture_streamed) and their own fitting on them: refused here
with the fix.

Entry points: `streams(options)`, `run_streamed_export(options)`.
"""
from __future__ import annotations

import os
import time

import torch

from ..errors import UserError
from ..export.claim import claim_out_dir
from ..export.directory import check_out_dir, point_latest, save_export
from ..export.pieces import write_onnx_by_pieces
from ..model.fold import build_decoder
from ..model.load import Loaded
from ..model.stream import LayerStream, checkpoint_bytes
from ..model.weights import model_fingerprint
from ..options import ExportOptions
from .checks import check_against_model, check_options
from .job import ExportJob
from .metadata import export_metadata

STREAM_ABOVE_BYTES = 2 * 1024 ** 3


def streams(o: ExportOptions) -> bool:
    """Whether this export reads the model layer by layer: asked for, or a local safetensors checkpoint whose
    float32 weights pass STREAM_ABOVE_BYTES."""
    if o.stream is not None:
        return o.stream
    return bool(o.model) and os.path.isdir(o.model) and checkpoint_bytes(o.model) > STREAM_ABOVE_BYTES


def check_streamable(o: ExportOptions) -> None:
    """What a layer-by-layer export takes so far, refused with the fix otherwise."""
    shaped = [flag for flag, value in (("K", o.k if str(o.k).lower() != "full" else None), ("K_KEY", o.k_key),
                                       ("K_VALUE", o.k_value), ("KV_DTYPE", o.kv_dtype),
                                       ("QUANT", o.quant.allocation), ("--projectors", o.projectors))
              if value is not None]
    if o.default_export or shaped or o.cache != "concat" or o.dtype != "float32":
        what = ", ".join(shaped) or ("the default export" if o.default_export else f"CACHE={o.cache} DTYPE={o.dtype}")
        raise UserError(f"this model is exported layer by layer (its float32 weights pass "
                        f"{STREAM_ABOVE_BYTES / 2 ** 30:g} GiB, or STREAM=1), which takes K=full with CACHE=concat "
                        f"and DTYPE=float32 for now ({what} asked): export with K=full")


def run_streamed_export(o: ExportOptions) -> str:
    """The export of `o.model` (a local HF directory with safetensors) with one layer's weights in memory at a
    time; returns the export directory."""
    from transformers import AutoTokenizer
    t0 = time.time()
    check_options(o)
    check_streamable(o)
    if o.out:
        check_out_dir(o.out)
    stream = LayerStream(o.model)
    check_against_model(o, stream.cfg)
    tokenizer = AutoTokenizer.from_pretrained(o.model, trust_remote_code=o.trust_remote_code)
    name = os.path.basename(os.path.normpath(o.model)).lower()
    fingerprint = model_fingerprint(stream.hf, lambda i: stream.loaded(stream.layer_prefix(i)))
    with torch.device("meta"):           # the skeleton the layout and export.json are read from: no weights
        skeleton = build_decoder(stream.hf)
    job = ExportJob.of(o, Loaded(stream.hf, tokenizer, o.model, name), stream.cfg, fingerprint, skeleton)
    out = o.out or os.path.join(o.build_dir, f"{name}-kfull")
    with claim_out_dir(out):
        check_out_dir(out)
        meta = export_metadata(job, skeleton, None)
        meta.extra["streamed"] = "read and exported one layer at a time (exporter/job/streamed.py)"
        save_export(skeleton, meta, tokenizer, out,
                    write_model=lambda path, props: write_onnx_by_pieces(stream, meta.layout, path, props))
        point_latest(out, o.build_dir)
    print(f"wrote {out} ({meta.kv_bytes_per_token} KV bytes/token, layer by layer, model.onnx.data "
          f"{os.path.getsize(os.path.join(out, 'model.onnx.data')) / 2 ** 30:.2f} GiB) in {time.time() - t0:.0f} s")
    return out
