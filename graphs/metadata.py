"""export.json: what the runtime and validator need to know about an export, beside model.onnx.

Everything a consumer needs without torch: the cache layout, the sink prefix, stop tokens, the chat wrapper.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, asdict

from .contract import CacheLayout, kv_bytes_per_token

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

    @property
    def kv_bytes_per_token(self) -> int:
        return kv_bytes_per_token(self.layout)

    def to_json(self) -> dict:
        d = asdict(self)
        d["layout"] = self.layout.to_json()
        d["format"] = FORMAT
        d["kv_bytes_per_token"] = self.kv_bytes_per_token
        return d

    @classmethod
    def from_json(cls, d: dict) -> "ExportMetadata":
        if d.get("format") != FORMAT:
            raise ExportError(f"export.json has format {d.get('format')!r}, expected {FORMAT!r}: re-export the model")
        d = {k: v for k, v in d.items() if k not in ("format", "kv_bytes_per_token")}
        d["layout"] = CacheLayout.from_json(d["layout"])
        return cls(**d)

    def save(self, directory: str) -> None:
        with open(os.path.join(directory, METADATA_FILE), "w") as f:
            json.dump(self.to_json(), f, indent=1, sort_keys=True)
            f.write("\n")


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
