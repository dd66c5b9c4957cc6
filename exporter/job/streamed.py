"""An export that never holds the whole model: read one decoder layer at a time, written piece by piece.

A model whose float32 weights pass STREAM_ABOVE_BYTES (the protobuf's 2 GB, and the point where holding the
model, its compact decoder and a traced copy at once stops fitting small machines) is exported this way, or any
model with --stream / STREAM=1. The job is the whole-model export's (job/run.py, the same stages and options)
with the model read layer by layer (model/stream.LayerStream) wherever it is read:

    fingerprint            each layer's key and value weights, one layer loaded at a time
    statistics, samples    calib/capture.capture_streamed: every window through layer l, then layer l+1
    output-aware metric    each layer's W_o read when its metric is asked for
    sensitivity probes     quant/probe.measured_sensitivities_streamed: all probes through the layers together
    model.onnx             export/pieces.py: one traced piece per layer, weights appended to model.onnx.data

The cache layout and export.json come from a skeleton decoder on the meta device, its blocks built by the same
fold code (with the projectors) one layer at a time, so both exports describe the same graph. What needs the
whole model at once is refused with the fix: K=auto (its held-out search), METHOD=trained (end-to-end
distillation), KV_DTYPE and CACHE=shared-buffer (the fused op's graph is traced whole), DTYPE=float16.

Entry points: `streams(options)`, `streamed_job(options)`, `save_streamed(job, out, projectors)`.
"""
from __future__ import annotations

import os
from dataclasses import replace

import torch

from graphs.metadata import ExportMetadata

from ..errors import UserError
from ..export.directory import save_export
from ..export.pieces import write_onnx_by_pieces
from ..model.fold import build_block, build_decoder
from ..model.load import Loaded
from ..model.stream import LayerStream, checkpoint_bytes
from ..model.weights import model_fingerprint
from ..options import ExportOptions
from ..quant.window import with_float_window
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
    whole = [flag for flag, asked in (("K=auto", o.is_auto), ("METHOD=trained", o.method == "trained"),
                                      (f"KV_DTYPE={o.kv_dtype}", o.kv_dtype is not None),
                                      ("the default export", o.default_export),
                                      (f"CACHE={o.cache}", o.cache != "concat"),
                                      (f"DTYPE={o.dtype}", o.dtype != "float32")) if asked]
    if whole:
        raise UserError(f"this model is exported layer by layer (its float32 weights pass "
                        f"{STREAM_ABOVE_BYTES / 2 ** 30:g} GiB, or STREAM=1), which takes K=full or K=<rank>, "
                        f"METHOD=pca or output-aware, QUANT, CACHE=concat and DTYPE=float32 ({', '.join(whole)} "
                        "asked): export with K=full, or a fixed K with METHOD=pca")


def streamed_job(o: ExportOptions) -> ExportJob:
    """The export job of `o.model` (a local HF directory with safetensors), no layer's weights read yet."""
    from transformers import AutoTokenizer
    check_options(o)
    check_streamable(o)
    stream = LayerStream(o.model)
    o = with_float_window(o, stream.cfg)
    check_against_model(o, stream.cfg)
    if o.method is None:
        o = replace(o, method="pca")
    tokenizer = AutoTokenizer.from_pretrained(o.model, trust_remote_code=o.trust_remote_code)
    name = os.path.basename(os.path.normpath(o.model)).lower()
    fingerprint = model_fingerprint(stream.hf, lambda i: stream.loaded(stream.layer_prefix(i)))
    with torch.device("meta"):           # the uncompressed skeleton: no weights (stages never run it)
        skeleton = build_decoder(stream.hf)
    return ExportJob.of(o, Loaded(stream.hf, tokenizer, o.model, name), stream.cfg, fingerprint, skeleton, stream)


def skeleton_with(stream: LayerStream, proj) -> torch.nn.Module:
    """The decoder's skeleton on the meta device with the projectors' codes in its attention (what export.json's
    layout is read from): each block built with its layer's weights, then given back."""
    with torch.device("meta"):
        skeleton = build_decoder(stream.hf)
    if proj is not None:
        proj.check_compatible(stream.cfg)
        for i in range(stream.cfg.num_layers):
            with stream.loaded(stream.layer_prefix(i)):
                skeleton.blocks[i] = build_block(stream.hf, stream.cfg, i, proj).to("meta")
    return skeleton


def save_streamed(job: ExportJob, out: str, proj) -> ExportMetadata:
    """export/directory.save_export of a streamed job: model.onnx traced layer by layer with the projectors
    folded into each block, its weights in model.onnx.data."""
    if proj is not None and proj.cache_quant is not None:       # from --projectors: KV_DTYPE is refused before
        raise UserError("these projectors hold an int8 cache's steps (KV_DTYPE), whose fused graph is traced whole: "
                        "a model exported layer by layer takes linear or quantized codes only")
    job.release_samples()                   # what the design needed; writing model.onnx needs the room
    skeleton = skeleton_with(job.stream, proj)
    meta = export_metadata(job, skeleton, proj)
    meta.extra["streamed"] = "read and exported one layer at a time (exporter/job/streamed.py)"
    save_export(skeleton, meta, job.tokenizer, out, proj,
                write_model=lambda path, props: write_onnx_by_pieces(job.stream, meta.layout, path, props, proj))
    data = os.path.join(out, "model.onnx.data")
    print(f"written layer by layer: model.onnx.data {os.path.getsize(data) / 2 ** 30:.2f} GiB")
    return meta
