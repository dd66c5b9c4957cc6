"""export.json of an export: what its cache holds, its sink, stop tokens, chat wrapper and where it comes from.

Entry point: `export_metadata(job, decoder, projectors)`.
"""
from __future__ import annotations

import torch

from graphs import kernels
from graphs.metadata import ExportMetadata

from ..calib.tokens import chat_wrapper, stop_tokens
from ..export.onnx_file import OPSET, layout_of
from .job import ExportJob


def sink_handling(proj) -> str:
    if proj is None:
        return "constant prefix at position 0"
    if proj.cache_quant is not None:
        return "constant prefix at position 0; its int8 codes use the same steps as every token"
    if proj.info.get("method") == "trained":
        return "constant prefix at position 0; trained with it in every window (no longer coded exactly)"
    return "constant prefix at position 0; its key and value directions are in every basis"


def export_metadata(job: ExportJob, decoder, proj) -> ExportMetadata:
    """export.json of the job's export: layout, ranks, sink, stop tokens, chat wrapper, provenance."""
    cfg, tok, o = job.config, job.tokenizer, job.options
    ranks = proj.ranks() if proj else {"key": [None] * cfg.num_layers, "value": [None] * cfg.num_layers}
    stops = stop_tokens(tok, job.hf.config)
    sink = job.sink
    return ExportMetadata(
        model={"source": job.loaded.source, "name": job.loaded.name, "fingerprint": job.fingerprint,
               **cfg.to_json()},
        layout=layout_of(decoder, o.dtype), key_mode="full" if proj is None or not any(proj.keys) else proj.key_mode,
        ranks=ranks,
        sink={"token_id": sink, "token": tok.convert_ids_to_tokens(sink) if sink is not None else None,
              "handling": sink_handling(proj)},
        eos_token_ids=stops,
        pad_token_id=int(tok.pad_token_id if tok.pad_token_id is not None else (stops or [0])[0]),
        opset=OPSET, calibration=proj.info.get("calibration") if proj else None, chat=chat_wrapper(tok),
        exporter=f"torch {torch.__version__} torch.onnx.export(dynamo=False)", cache_update=o.cache,
        kernels=[kernels.CODES_ATTENTION] if o.kv_dtype and o.kv_kernel == "codes" else [],
        extra={"seed": o.seed, "projector_method": proj.info.get("method") if proj else None,
               "quant": {k: v for k, v in proj.info["quant"].items() if k != "sensitivity"}
               if proj and proj.info.get("quant") else None})
