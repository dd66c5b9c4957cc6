"""export.json: what the runtime and validator need to know about an export, beside model.onnx.

Everything a consumer needs without torch: the cache layout, the sink prefix, stop tokens, the chat wrapper.
Reading it (`load_metadata`) refuses a file that is incomplete, malformed, or whose ranks disagree with its
layout (an export edited by hand), with a one-line ExportError naming the fix.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, asdict

from .contract import CODE_DTYPES, CacheLayout, kv_bytes_per_token

METADATA_FILE = "export.json"
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
FORMAT = "spectral-kv-export/1"


class ExportError(ValueError):
    """A bad or incomplete export directory; the message names the fix."""


@dataclass
class ExportMetadata:
    model: dict                      # source, architecture, fingerprint, sizes
    layout: CacheLayout              # what every past/present tensor holds
    key_mode: str                    # 'full' | 'pre-rope' | 'post-rope' | 'latent' (no RoPE, e.g. GPT-2)
    ranks: dict                      # {'key': [...], 'value': [...]} per layer; None where uncompressed
    sink: dict                       # {'token_id', 'token', 'handling'}; the prefix every sequence starts with
    eos_token_ids: list
    pad_token_id: int
    opset: int
    projector_sha256: str | None = None
    calibration: dict | None = None
    chat: dict | None = None         # {'prefix', 'suffix'}: the chat template around one user message
    exporter: str = ""
    cache_update: str = "concat"     # graphs/contract.py CACHE_UPDATES: how present relates to past
    extra: dict = field(default_factory=dict)
    kernels: list = field(default_factory=list)    # our ops the graph uses (graphs/kernels): sessions need the library

    @property
    def kv_bytes_per_token(self) -> int:
        return kv_bytes_per_token(self.layout)

    def to_json(self) -> dict:
        d = asdict(self)
        d["layout"] = self.layout.to_json()
        d["format"] = FORMAT
        d["kv_bytes_per_token"] = self.kv_bytes_per_token
        if not self.kernels:                            # exports without our ops keep their bytes
            del d["kernels"]
        return d

    @classmethod
    def from_json(cls, d: dict) -> "ExportMetadata":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            found = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise ExportError(f"export.json has format {found!r}, expected {FORMAT!r}: re-export the model")
        d = {k: v for k, v in d.items() if k not in ("format", "kv_bytes_per_token")}
        try:
            d["layout"] = CacheLayout.from_json(d["layout"])
            meta = cls(**d)
        except KeyError as e:
            raise ExportError(f"export.json lacks {e}: re-export the model with `make export`") from None
        except (TypeError, ValueError, AttributeError) as e:
            raise ExportError(f"export.json is malformed ({e}): re-export the model with `make export`") from None
        check_ranks(meta)
        return meta

    def save(self, directory: str) -> None:
        with open(os.path.join(directory, METADATA_FILE), "w") as f:
            json.dump(self.to_json(), f, indent=1, sort_keys=True)
            f.write("\n")


def check_ranks(meta: ExportMetadata) -> None:
    """export.json's ranks agree with its cache layout: a float tensor of rank r is [batch, 1, seq, r], an
    uncompressed one (rank None) has the model's KV heads and head_dim; packed codes (QUANT, KV_DTYPE) are bytes
    and are not compared. Raises ExportError naming the first disagreement (an export edited by hand)."""
    model = meta.model if isinstance(meta.model, dict) else {}
    full = (model.get("num_kv_heads"), model.get("head_dim"))
    for kind, shapes in (("key", meta.layout.keys), ("value", meta.layout.values)):
        ranks = meta.ranks.get(kind) if isinstance(meta.ranks, dict) else None
        if not isinstance(ranks, list) or len(ranks) != len(shapes):
            raise ExportError(f"export.json has {kind} ranks {ranks!r} for {len(shapes)} layers: the export was "
                              "edited by hand, re-export it with `make export`")
        for layer, (rank, shape) in enumerate(zip(ranks, shapes)):
            if shape.dtype in CODE_DTYPES:
                continue
            want = (1, rank) if rank is not None else full
            if None not in want and (shape.kv_heads, shape.head_size) != want:
                raise ExportError(f"export.json gives layer {layer}'s {kind}s rank {rank or 'full'} but a cache of "
                                  f"{shape.kv_heads} x {shape.head_size}: the export was edited by hand, re-export "
                                  "it with `make export`")


def load_metadata(directory: str) -> ExportMetadata:
    """Read export.json, with a one-line error naming the fix when the directory is not a complete export."""
    path = os.path.join(directory, METADATA_FILE)
    if not os.path.isdir(directory):
        raise ExportError(f"no export directory at {directory}: run `make export` first")
    for name in (METADATA_FILE, MODEL_FILE):
        if not os.path.isfile(os.path.join(directory, name)):
            raise ExportError(f"{directory} has no {name}: it is not a complete export, run `make export` again")
    try:
        with open(path) as f:
            d = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExportError(f"{path} is corrupt ({e}): run `make export` again") from None
    return ExportMetadata.from_json(d)
