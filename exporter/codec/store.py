"""Projector files: <stem>.safetensors (the tensors) + <stem>.json (what they are for). Never pickle.

Tensors, per layer i and kind (key, value): layers.{i}.{kind}.basis (the decode, dim x r), .encode (r x dim),
.mean (dim), and when present .head_decode (H x d x r), .bits / .sigma / .sink (r) of a quantized cache, and
.cache_scale (G*d) of an int8 cache the fused op quantizes (codec/cache_quant.py). Files
from before `encode` existed load as PCA (encode = basis^T). The JSON holds the format, model fingerprint,
key mode, ranks, the tensors' sha256, and the provenance the fit recorded (method, calibration, training,
K=auto search, quantizer). Loading refuses a file made for another model or whose checksum does not match.

Entry points: `save_projectors(proj, stem)`, `load_projectors(stem, fingerprint)`.
"""
from __future__ import annotations

import json
import os

import torch

from ..errors import UserError
from ..files import sha256_file, write_text
from .cache_quant import CacheQuant
from .linear import OPTIONAL_TENSORS, Codec, Projectors

FORMAT = "spectral-kv-projectors/1"


def projector_tensors(proj: Projectors) -> dict[str, torch.Tensor]:
    out = {}
    for kind, items in (("key", proj.keys), ("value", proj.values)):
        for i, p in enumerate(items):
            if p is not None:
                out[f"layers.{i}.{kind}.basis"] = p.decode.contiguous()
                out[f"layers.{i}.{kind}.encode"] = p.encode.contiguous()
                out[f"layers.{i}.{kind}.mean"] = p.mean.contiguous()
                for extra in OPTIONAL_TENSORS:
                    if getattr(p, extra) is not None:
                        out[f"layers.{i}.{kind}.{extra}"] = getattr(p, extra).contiguous()
    q = proj.cache_quant
    for kind, scales in (("key", q.key_scales), ("value", q.value_scales)) if q else ():
        for i, s in enumerate(scales):
            out[f"layers.{i}.{kind}.cache_scale"] = s.contiguous()
    return out


def save_projectors(proj: Projectors, path_stem: str) -> str:
    """Write <stem>.safetensors and <stem>.json; returns the sha256 of the tensors file."""
    from safetensors.torch import save_file
    st = path_stem + ".safetensors"
    save_file(projector_tensors(proj), st + ".tmp", metadata={"format": FORMAT})
    os.chmod(st + ".tmp", 0o644)   # safetensors creates files private; projectors are plain data
    os.replace(st + ".tmp", st)
    digest = sha256_file(st)
    meta = {"format": FORMAT, "key_mode": proj.key_mode, "ranks": proj.ranks(), "tensors_sha256": digest,
            **proj.info}
    if proj.cache_quant is not None:
        meta["cache_quant"] = {"dtype": proj.cache_quant.dtype, "rotation": proj.cache_quant.rotation}
    write_text(path_stem + ".json", json.dumps(meta, indent=1, sort_keys=True))
    return digest


def load_projectors(path_stem: str, fingerprint: str | None = None) -> Projectors:
    """Load <stem>.safetensors + <stem>.json; with a fingerprint, refuse files made for another model."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    stem = path_stem[:-len(".safetensors")] if path_stem.endswith(".safetensors") else \
        path_stem[:-len(".json")] if path_stem.endswith(".json") else path_stem
    st, js = stem + ".safetensors", stem + ".json"
    for p in (st, js):
        if not os.path.isfile(p):
            raise UserError(f"missing projector file {p}: pass the stem of a .safetensors/.json pair")
    try:
        with open(js) as f:
            meta = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{js} is corrupt ({e}): fit the projectors again") from None
    if meta.get("format") != FORMAT:
        raise UserError(f"{js} is not a projector file of format {FORMAT}")
    if sha256_file(st) != meta.get("tensors_sha256"):
        raise UserError(f"{st} does not match its checksum in {js}: the file is corrupt, fit the projectors again")
    if fingerprint is not None and meta.get("model_fingerprint") != fingerprint:
        raise UserError(f"{st} was made for another model ({meta.get('model', '?')}): "
                        "fit projectors for this model with `make export`")
    try:
        t = load_file(st)
    except SafetensorError as e:
        raise UserError(f"{st} is corrupt ({e}): fit the projectors again") from None
    n = len(meta["ranks"]["key"])
    get = lambda i, kind: Codec(t[f"layers.{i}.{kind}.basis"], t[f"layers.{i}.{kind}.mean"],
                                t.get(f"layers.{i}.{kind}.encode"),
                                **{x: t.get(f"layers.{i}.{kind}.{x}") for x in OPTIONAL_TENSORS}) \
        if f"layers.{i}.{kind}.basis" in t else None
    info = {k: v for k, v in meta.items() if k not in ("format", "key_mode", "ranks", "tensors_sha256", "cache_quant")}
    q = meta.get("cache_quant")
    cache_quant = None if q is None else CacheQuant(
        q["dtype"], q["rotation"], *([t[f"layers.{i}.{kind}.cache_scale"] for i in range(n)] for kind in ("key", "value")))
    return Projectors(meta["key_mode"], [get(i, "key") for i in range(n)], [get(i, "value") for i in range(n)], info,
                      cache_quant)


