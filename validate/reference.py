"""The two PyTorch sides validation compares against: the compact reference decoder of an export (same
projectors) and the original HF model, both rebuilt from what export.json records."""
from __future__ import annotations

import os

from exporter.codec.store import load_projectors
from exporter.errors import UserError
from exporter.model.fold import build_decoder
from exporter.model.load import load
from exporter.model.weights import model_fingerprint
from graphs.metadata import ExportMetadata


def load_references(export_dir: str, meta: ExportMetadata):
    """(hf model, tokenizer, reference decoder) for an export; refuses if the model changed since export."""
    loaded = load(meta.model["source"])
    fp = model_fingerprint(loaded.model)
    if fp != meta.model["fingerprint"]:
        raise UserError(f"{meta.model['source']} is not the model this export was made from: re-export it")
    stem = os.path.join(export_dir, "projectors")
    proj = load_projectors(stem, fp) if os.path.isfile(stem + ".safetensors") else None
    return loaded.model, loaded.tokenizer, build_decoder(loaded.model, proj)
