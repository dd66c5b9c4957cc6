"""genai_config.json: the file onnxruntime-genai reads to drive an export, made from export.json.

genai allocates every layer's key and value cache with one shape [batch, num_key_value_heads, seq, head_size],
so an export whose layers (or keys and values) have different ranks cannot be described to it: then no
config is written and export.json says why. Every sequence must start with the export's sink token; genai
does not add it, so callers append [sink] + prompt tokens (see README, "Run it elsewhere").
"""
from __future__ import annotations

import json
import os

from . import contract as C
from . import kernels
from .metadata import ExportMetadata

GENAI_CONFIG = "genai_config.json"


def uniform_shape(layout: C.CacheLayout) -> C.CacheShape | None:
    shapes = set(layout.keys) | set(layout.values)
    return shapes.pop() if len(shapes) == 1 else None


def custom_ops(meta: ExportMetadata) -> dict:
    """genai's session option that loads our kernel library, for exports that use our ops (its absolute path on
    this machine: another machine rewrites it, README "Run it elsewhere")."""
    if not meta.kernels:
        return {}
    path = kernels.library_path()
    if path is None:
        raise ValueError(f"this export uses our kernels and onnxruntime-genai must load them: {kernels.BUILD_HINT}")
    return {"custom_ops_library": path}


def genai_config(meta: ExportMetadata, max_length: int | None = None) -> dict:
    """The config dict; raises ValueError naming why genai cannot run this cache layout."""
    int8 = meta.cache_update == "shared-buffer" and {s.dtype for s in meta.layout.keys + meta.layout.values} == {"int8"}
    if meta.layout.quantized and not int8:      # genai sizes int8 caches from the graph, as its own builder's
        raise ValueError("onnxruntime-genai allocates float caches; this export's cache is packed uint8 codes "
                         "(QUANT): run it with our runtime, or export without QUANT for genai")
    if any(s.window for s in meta.layout.keys + meta.layout.values):
        raise ValueError("onnxruntime-genai allocates every layer's cache for the whole sequence; this export's "
                         "sliding-window layers keep only their window: run it with our runtime, or export with "
                         "WINDOW_CACHE=full for genai")
    shape = uniform_shape(meta.layout)
    if shape is None:
        raise ValueError("onnxruntime-genai needs one cache shape for every layer's keys and values; export "
                         "with equal uniform ranks (K=..., no K_KEY/K_VALUE or per-layer ranks) to run it there")
    m = meta.model
    eos = meta.eos_token_ids[0] if len(meta.eos_token_ids) == 1 else meta.eos_token_ids
    context = m["max_positions"]
    return {
        "model": {
            "bos_token_id": meta.sink.get("token_id") if meta.sink.get("token_id") is not None else eos,
            "eos_token_id": eos, "pad_token_id": meta.pad_token_id, "context_length": context,
            "vocab_size": m["vocab_size"],
            # genai's generic decoder-only path; our graph has the same I/O for every family
            "type": "llama",
            "decoder": {
                "filename": "model.onnx", "head_size": shape.head_size, "hidden_size": m["hidden_size"],
                "num_attention_heads": m["num_heads"], "num_hidden_layers": m["num_layers"],
                "num_key_value_heads": shape.kv_heads,
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": [], **custom_ops(meta)},
                "inputs": {"input_ids": C.INPUT_IDS, "attention_mask": C.ATTENTION_MASK,
                           "position_ids": C.POSITION_IDS, "past_key_names": "past_key_values.%d.key",
                           "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": C.LOGITS, "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"},
            },
        },
        "search": {"do_sample": False, "max_length": max_length or context, "min_length": 0, "num_beams": 1,
                   "num_return_sequences": 1, "repetition_penalty": 1.0,
                   # shared-buffer exports: genai binds one max_length buffer as past and present, as we do (not
                   # for int8 caches on CPU: genai's own builder turns sharing off there, and so do we)
                   "past_present_share_buffer": meta.cache_update == "shared-buffer" and not int8,
                   "temperature": 1.0, "top_k": 1, "top_p": 1.0},
    }


def write_genai_config(directory: str, meta: ExportMetadata) -> str | None:
    """Write genai_config.json; returns None, or the reason when the layout cannot be described to genai."""
    try:
        cfg = genai_config(meta)
    except ValueError as e:
        return str(e)
    with open(os.path.join(directory, GENAI_CONFIG), "w") as f:
        json.dump(cfg, f, indent=1, sort_keys=True)
        f.write("\n")
    return None
