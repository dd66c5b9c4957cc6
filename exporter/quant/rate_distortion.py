"""How close a quantized cache comes to the limit: per layer, keys and values, the reconstruction error its codec
achieves on text, next to the Gaussian rate-distortion bound of the same tensors at the same bits per token.

The bound (quant/theory.rate_distortion_bound) is the least mean squared error any code of that rate reaches
on a Gaussian source with the tensors' covariance; a Gaussian is the hardest source of a given covariance, so
real keys and values could in principle be coded below it, and a ratio near 1 means the codec leaves little on
the table. Errors are in the keys' and values' own coordinates (squared norm per token, the sink left out);
the rate counts every stored bit, scale bytes included. `make validate` prints it for quantized exports.

Entry point: `rate_distortion_table(hf, projectors, windows)`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ..calib.capture import Rows, capture, key_tap
from ..codec.quantizer import quantizer_for
from ..model.config import from_hf
from ..model.fold import build_decoder
from .theory import rate_distortion_bound


@dataclass
class TensorRD:
    layer: int
    kind: str
    bits_per_token: int          # stored bits of one token of this tensor (codes and scales)
    variance: float              # total variance per token (the error of storing nothing)
    achieved_mse: float          # E ||x - x^||^2 per token on the text
    bound_mse: float             # Gaussian rate-distortion bound at bits_per_token

    @property
    def ratio(self) -> float:
        return self.achieved_mse / self.bound_mse if self.bound_mse > 0 else float("inf")

    def to_json(self) -> dict:
        return {**asdict(self), "ratio": self.ratio}


def reconstruction(codec, quant, x: torch.Tensor) -> torch.Tensor:
    """x (N, dim) through the codec and its quantizer: mean + decode q(encode (x - mean))."""
    z = ((x - codec.mean) @ codec.encode.T).float()[None, None]                   # (1, 1, N, r)
    z_hat = quant.decode(quant.encode(z))[0, 0].double()                          # (N, r)
    return codec.mean + z_hat @ codec.decode.T


def rate_distortion_table(hf, proj, windows: list[list[int]]) -> list[TensorRD]:
    """Achieved error and bound for every quantized tensor of `proj`, on `windows` (sink first)."""
    cfg = from_hf(hf.config)
    q = proj.info["quant"]
    taps = {"key": key_tap(cfg, proj.key_mode), "value": "value"}
    rows = {(i, taps[kind]): Rows() for i in range(cfg.num_layers) for kind in taps}
    capture(build_decoder(hf), windows, rows, desc="rate-distortion")
    out = []
    for i in range(cfg.num_layers):
        for kind, tap in taps.items():
            codec = proj.key(i) if kind == "key" else proj.value(i)
            quant = quantizer_for(codec, q["scales"][kind], q["group"])
            x = rows[(i, tap)].matrix()                                    # (N, dim)
            centered = x - x.mean(0)
            eig = torch.linalg.eigvalsh(centered.T @ centered / len(x)).clamp_min(0).tolist()
            achieved = (x - reconstruction(codec, quant, x)).pow(2).sum(1).mean().item()
            bits = 8 * quant.nbytes
            out.append(TensorRD(i, kind, bits, sum(eig), achieved, rate_distortion_bound(eig, bits)))
    return out

