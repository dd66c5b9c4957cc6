"""A generation saved to a file and resumed: a prompt prefilled once, a conversation picked up later.

`Generator.generate(..., keep_state=True)` leaves `result.state` (a `GenerationState`: the cache and what the
next step feeds); `save_state(path, state, metadata)` writes it; `load_state(path, metadata, device, room)` reads
it back for `generate(continuation, resume=state)`. A resumed call first feeds the token sampled last (sampled,
never fed), then the continuation's tokens, on the same cache bytes, positions and sampler state: it gives the
tokens an unbroken call would have given (tests/runtime/test_saved.py).

File: a safetensors file compressed whole with zstd. Its tensors are every past tensor as the graph holds it (a
shared buffer cut to the cached length), attention_mask (B, S) and next_ids (B,); its header's metadata holds JSON:
the format, the export's cache identity, the finished flags, each sequence's token history and the sampler's
state. zstd takes 10-11 % off an int8 or spectral cache at level 3 (docs/quantization.md, "Entropy coding for
storage", `python -m benchmarks.saved_cache`).

Identity: the sha256 of what gives the cache its meaning (the model's fingerprint, the projectors' sha256, key
mode, ranks, cache layout). A file made by another export is refused, not misread.

Entry points: `GenerationState`, `save_state`, `load_state`, `cache_identity`.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

import numpy as np

from graphs.metadata import ExportMetadata

from .cache import KVCache
from .session import Device

FORMAT = "spectral-kv-session/1"
ZSTD_LEVEL = 3       # level 19 takes at most 1 % more of the cache off, much slower (docs/quantization.md)


@dataclass
class GenerationState:
    """Where a generate() call stopped."""
    cache: KVCache
    attention_mask: np.ndarray      # (B, S) int64 over the cached tokens (padding 0)
    next_ids: np.ndarray            # (B,) the tokens sampled last, not fed yet
    finished: np.ndarray            # (B,) bool: sequences that met a stop token
    history: list[list[int]]        # per sequence: the prompt (sink first) and every token kept since
    rng_state: dict                 # numpy's PCG64 state, so sampling goes on where it was


def cache_identity(metadata: ExportMetadata) -> str:
    """sha256 of what the cached numbers mean: model weights, projectors and scales, key mode, ranks, layout."""
    what = {"model": metadata.model.get("fingerprint"), "projectors": metadata.projector_sha256,
            "key_mode": metadata.key_mode, "ranks": metadata.ranks, "layout": metadata.layout.to_json(),
            "cache_update": metadata.cache_update}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def save_state(path: str, state: GenerationState, metadata: ExportMetadata) -> tuple[int, int]:
    """Write `state` to `path` (zstd-compressed safetensors; replaced atomically). Returns (the file's bytes, the
    cache tensors' bytes)."""
    import zstandard
    from safetensors.numpy import save
    tensors = {**state.cache.arrays(), "attention_mask": np.ascontiguousarray(state.attention_mask, np.int64),
               "next_ids": np.ascontiguousarray(state.next_ids, np.int64)}
    header = {"format": FORMAT, "cache_identity": cache_identity(metadata), "finished": state.finished.tolist(),
              "history": state.history, "rng_state": state.rng_state}
    blob = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(save(tensors, metadata={"state": json.dumps(header)}))
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(blob)
    os.replace(tmp, path)
    return len(blob), sum(a.nbytes for n, a in tensors.items() if n.startswith("past_key_values."))


def load_state(path: str, metadata: ExportMetadata, device: Device, room: int) -> GenerationState:
    """Read a saved generation for this export onto `device`, a shared buffer with `room` tokens to spare.
    Raises ValueError with the fix for a file that is not one, is damaged, or was made by another export."""
    import zstandard
    from safetensors import SafetensorError
    from safetensors.numpy import load
    try:
        with open(path, "rb") as f:
            raw = zstandard.ZstdDecompressor().decompress(f.read(), max_output_size=1 << 40)
        header = json.loads(_safetensors_metadata(raw)["state"])
        tensors = load(raw)
    except FileNotFoundError:
        raise ValueError(f"no saved session at {path}: save one first with --save-cache") from None
    except (zstandard.ZstdError, SafetensorError, KeyError, ValueError) as e:
        raise ValueError(f"{path} is not a saved session or is damaged ({type(e).__name__}): save it again "
                         "with --save-cache") from None
    if header.get("format") != FORMAT:
        raise ValueError(f"{path} has format {header.get('format')!r}, not {FORMAT!r}: save it again with this version")
    if header["cache_identity"] != cache_identity(metadata):
        raise ValueError(f"{path} was saved by another export (other model, projectors or cache layout): resume it "
                         "with the export that saved it")
    mask = tensors.pop("attention_mask")
    next_ids = tensors.pop("next_ids")
    cache = KVCache.from_arrays(metadata.layout, device, tensors, mask.shape[1],
                                shared=metadata.cache_update == "shared-buffer", room=room)
    return GenerationState(cache, mask, next_ids, np.array(header["finished"], bool), header["history"],
                           header["rng_state"])


def _safetensors_metadata(raw: bytes) -> dict:
    """The __metadata__ of a safetensors file held in memory (8-byte little-endian header length, JSON header)."""
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8:8 + n])["__metadata__"]
