"""Per-layer linear codes: a rank-r code for keys and for values, x ~= mean + decode @ encode @ (x - mean).

PCA gives an orthonormal basis (encode = basis^T, decode = basis); output-aware and trained projectors are
oblique (encode != decode^T). Only the product decode @ encode matters for quality; the split fixes what the
cache stores.

Values may carry one decode per query head (`head_decode`, trained projectors): the values' decode is absorbed
into o_proj head by head, so each query head can read the shared latents its own way at no cost in cache bytes.
A quantized cache's codec also carries bits, scales and the sink's exact latent (codec/quantizer.py).

Entry points: `Codec` (one tensor's code), `Projectors` (every layer's key and value codecs). Files:
codec/store.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import UserError

OPTIONAL_TENSORS = ("head_decode", "bits", "sigma", "sink")    # Codec fields a file may lack


@dataclass
class Codec:
    """One tensor's code: c = encode @ (x - mean) is cached, x^ = mean + decode @ c is what attention sees."""
    decode: torch.Tensor                            # (dim, r) float64; the 'basis'
    mean: torch.Tensor                              # (dim,)
    encode: torch.Tensor | None = None              # (r, dim); None: decode^T (an orthonormal basis)
    head_decode: torch.Tensor | None = None         # (H, d, r): values only, query head h's own decode of the
                                                    # latents into its KV head's d dims (decode: their group mean)
    bits: torch.Tensor | None = None                # (r,) int64: a quantized cache's bits per component
    sigma: torch.Tensor | None = None               # (r,) each component's quantizer scale (std, or fitted)
    sink: torch.Tensor | None = None                # (r,) the sink token's exact latent (quantized caches only)

    def __post_init__(self):
        if self.encode is None:
            self.encode = self.decode.T.contiguous()

    @property
    def rank(self) -> int:
        return int(self.decode.shape[1])

    def select(self, keep: list[int]) -> "Codec":
        """The code of components `keep` only (the others dropped), with their quantization fields."""
        idx = torch.tensor(keep, dtype=torch.long)
        pick = lambda t: None if t is None else t[..., idx].contiguous()
        return Codec(self.decode[:, idx].contiguous(), self.mean, self.encode[idx].contiguous(),
                     pick(self.head_decode), pick(self.bits), pick(self.sigma), pick(self.sink))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., dim) -> its coded version (..., dim)."""
        return self.mean + (x - self.mean) @ self.encode.T @ self.decode.T


@dataclass
class Projectors:
    key_mode: str                                   # 'pre-rope' | 'post-rope' (which keys the key bases code)
    keys: list                                      # per layer a Codec, or None (uncompressed)
    values: list
    info: dict = field(default_factory=dict)        # fingerprint, model, calibration, method, sink
    cache_quant: object = None                      # codec/cache_quant.CacheQuant: the fused op's int8 cache

    def key(self, i: int):
        return self.keys[i]

    def value(self, i: int):
        return self.values[i]

    def ranks(self) -> dict[str, list]:
        r = lambda p: None if p is None else p.rank
        return {"key": [r(p) for p in self.keys], "value": [r(p) for p in self.values]}

    def check_compatible(self, cfg) -> None:
        if len(self.keys) != cfg.num_layers or len(self.values) != cfg.num_layers:
            raise UserError(f"projectors have {len(self.keys)} layers, the model {cfg.num_layers}: "
                            "they were made for another model; fit new ones with `make export`")
        for p in self.keys + self.values:
            if p is not None and p.decode.shape[0] != cfg.kv_dim:
                raise UserError(f"projector width {p.decode.shape[0]} != model KV width {cfg.kv_dim}: "
                                "they were made for another model; fit new ones with `make export`")
            if p is not None and p.head_decode is not None and p.head_decode.shape[:2] != (cfg.num_heads,
                                                                                           cfg.head_dim):
                raise UserError(f"per-head value decodes for {p.head_decode.shape[0]} heads of "
                                f"{p.head_decode.shape[1]}, the model has {cfg.num_heads} of {cfg.head_dim}: "
                                "they were made for another model; fit new ones with `make export`")
