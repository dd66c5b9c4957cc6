"""Per-layer projectors: a rank-r linear code for keys and for values, x ~= mean + decode @ encode @ (x - mean).

PCA gives an orthonormal basis (encode = basis^T, decode = basis); output-aware and trained projectors are
oblique (encode != decode^T). Only the product decode @ encode matters for quality; the split fixes what the
cache stores.

Values may carry one decode per query head (`head_decode`, trained projectors): the values' decode is absorbed
into o_proj head by head, so each query head can read the shared latents its own way at no cost in cache bytes.

Files: <name>.safetensors (tensors layers.{i}.key.basis (the decode, dim x r) / .key.encode (r x dim) /
.key.mean, the same for value, layers.{i}.value.head_decode (H x d x r) when present, and .bits / .sigma /
.sink (r) for a quantized cache, exporter/quant.py) and
<name>.json (format, model fingerprint, key mode, ranks, sink, calibration). Never pickle. Loading refuses a
file made for another model.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field

import torch

from .errors import UserError

FORMAT = "spectral-kv-projectors/1"
OPTIONAL_TENSORS = ("head_decode", "bits", "sigma", "sink")


@dataclass
class Codec:
    """One tensor's code: c = encode @ (x - mean) is cached, x^ = mean + decode @ c is what attention sees."""
    decode: torch.Tensor                            # (dim, r) float64; the 'basis'
    mean: torch.Tensor                              # (dim,)
    encode: torch.Tensor | None = None              # (r, dim); None: decode^T (an orthonormal basis)
    head_decode: torch.Tensor | None = None         # (H, d, r): values only, query head h's own decode of the
                                                    # latents into its KV head's d dims (decode: their group mean)
    bits: torch.Tensor | None = None                # (r,) int64: a quantized cache's bits per component (quant.py)
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

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {}
        for kind, items in (("key", self.keys), ("value", self.values)):
            for i, p in enumerate(items):
                if p is not None:
                    out[f"layers.{i}.{kind}.basis"] = p.decode.contiguous()
                    out[f"layers.{i}.{kind}.encode"] = p.encode.contiguous()
                    out[f"layers.{i}.{kind}.mean"] = p.mean.contiguous()
                    for extra in OPTIONAL_TENSORS:
                        if getattr(p, extra) is not None:
                            out[f"layers.{i}.{kind}.{extra}"] = getattr(p, extra).contiguous()
        return out

    def save(self, path_stem: str) -> str:
        """Write <stem>.safetensors and <stem>.json; returns the sha256 of the tensors file."""
        from safetensors.torch import save_file
        st = path_stem + ".safetensors"
        save_file(self.tensors(), st + ".tmp", metadata={"format": FORMAT})
        os.chmod(st + ".tmp", 0o644)   # safetensors creates files private; projectors are plain data
        os.replace(st + ".tmp", st)
        digest = sha256_file(st)
        meta = {"format": FORMAT, "key_mode": self.key_mode, "ranks": self.ranks(), "tensors_sha256": digest,
                **self.info}
        with open(path_stem + ".json.tmp", "w") as f:
            json.dump(meta, f, indent=1, sort_keys=True)
        os.replace(path_stem + ".json.tmp", path_stem + ".json")
        return digest


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_fingerprint(hf) -> str:
    """sha256 of the architecture numbers and every layer's key/value projection weights: cheap, and different
    for any other model or fine-tune."""
    from .config import from_hf
    from .fold import attention_weights
    cfg = from_hf(hf.config)
    h = hashlib.sha256(json.dumps(cfg.to_json(), sort_keys=True).encode())
    for i in range(cfg.num_layers):
        w = attention_weights(hf, cfg, i)
        for name in ("k", "v"):
            h.update(w[name].float().contiguous().numpy().tobytes())
    return h.hexdigest()[:32]


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
    info = {k: v for k, v in meta.items() if k not in ("format", "key_mode", "ranks", "tensors_sha256")}
    return Projectors(meta["key_mode"], [get(i, "key") for i in range(n)], [get(i, "value") for i in range(n)], info)


def principal_basis(cov: torch.Tensor, rank: int, sink: torch.Tensor | None = None) -> torch.Tensor:
    """Top eigenvectors of a covariance (dim, dim) as columns (dim, rank), signs fixed for determinism.

    With a sink vector (already centered), the last column is the part of the sink the top rank-1 directions
    miss, so the sink is coded exactly (its directions added to the basis, the rank unchanged)."""
    evals, evecs = torch.linalg.eigh(cov)                        # ascending
    order = torch.argsort(evals, descending=True, stable=True)
    evecs = evecs[:, order]
    signs = torch.sign(evecs.gather(0, evecs.abs().argmax(0, keepdim=True)))
    evecs = evecs * signs                                        # largest entry of each column positive
    if sink is None or rank >= cov.shape[0]:
        return evecs[:, :rank].contiguous()
    basis = evecs[:, :rank - 1]
    residual = sink - basis @ (basis.T @ sink)
    if residual.norm() <= 1e-9 * max(sink.norm().item(), 1e-30):
        return evecs[:, :rank].contiguous()                      # already inside the span
    return torch.cat([basis, (residual / residual.norm())[:, None]], dim=1).contiguous()
