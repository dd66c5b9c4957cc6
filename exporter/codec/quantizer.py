"""Quantized latents in the graph: the cache stores integer codes of the latent components, packed into bytes.

A compressed layer caches latents c = encode (x - mean) (model/attention.py). With a quantizer, component j of
c is stored as a code of bits_j bits by the scalar quantizer (codec/scalar.py) and packed (codec/packing.py);
attention sees the decoded c^ (the new tokens' too, so each step computes exactly what the next step will read
back). Steps, by `scales`:
  static  step_j = gaussian_step(bits_j) sigma_j, sigma_j the component's scale: its standard deviation on the
          calibration text, or the multiple of it fitted to calibration samples (quant/scales.py); nothing
          stored per token beyond the codes.
  token   per token and per group of `group` components, s = the smallest 2^(e/8 - 16) >= max_j |c_j| / sigma_j
          (one byte e per group, stored beside the codes), and step_j = 2 s sigma_j / L_j: nothing is clipped.
The sink (the constant token at position 0) is replaced by its exact latent after decoding: its keys and
values are outliers no quantizer of the others' range can keep, and being constant they cost nothing.

Entry points: `LatentQuantizer` (an nn.Module: encode (B, 1, T, r) -> uint8 bytes, decode back), `quantizer_for`.
"""
from __future__ import annotations

import torch
from torch import nn

from ..options import SCALES
from .packing import Packing, digits, num_groups
from .scalar import SCALE_TABLE_BITS, gaussian_step, scale_table


class LatentQuantizer(nn.Module):
    """Codes latents (B, 1, T, r) into packed bytes (B, 1, T, nbytes) uint8 and back; every component >= 1 bit."""

    def __init__(self, bits: list[int], sigma: list[float], scales: str = "static", group: int = 64,
                 sink: torch.Tensor | None = None):
        super().__init__()
        if scales not in SCALES:
            raise ValueError(f"scales {scales!r} is not one of {SCALES}")
        if not bits or min(bits) < 1 or max(bits) > 8 or len(sigma) != len(bits):
            raise ValueError("a quantizer needs 1..8 bits and a sigma for every component")
        self.scales, self.rank = scales, len(bits)
        levels = torch.tensor([2.0 ** b for b in bits])
        sig = torch.tensor([max(float(s), 1e-12) for s in sigma])
        self.register_buffer("levels", levels)                                # (r,)
        self.register_buffer("sigma", sig)                                    # (r,)
        self.register_buffer("step", torch.tensor([gaussian_step(b) for b in bits]) * sig)   # static steps
        self.groups = num_groups(self.rank, group) if scales == "token" else 0
        self.group = group
        if scales == "token":
            self.register_buffer("table", scale_table())                      # (256,)
            self.register_buffer("group_of", torch.arange(self.rank) // group)  # (r,)
        packing = Packing(list(bits) + [SCALE_TABLE_BITS] * self.groups)
        self.nbytes = packing.nbytes
        for name, t in packing.matrices().items():
            self.register_buffer(name, t)
        self.register_buffer("sink", None if sink is None else sink.float().clone())   # (r,) exact latent

    def encode(self, c: torch.Tensor) -> torch.Tensor:
        """c (B, 1, T, r) float -> packed codes (B, 1, T, nbytes) uint8."""
        half = self.levels / 2
        if self.scales == "token":
            e = self._scale_codes(c)                                          # (B, 1, T, g)
            step = self._token_steps(e)                                       # (B, 1, T, r)
        else:
            step = self.step
        k = torch.minimum(torch.maximum(torch.floor(c / step), -half), half - 1)
        fields = k + half                                                     # (B, 1, T, r) in 0..L-1
        if self.scales == "token":
            fields = torch.cat([fields, e], dim=-1)                           # (B, 1, T, r + g)
        bit_planes = digits(fields[..., self.field_index], self.offset_unit, self.plane_levels)   # (B,1,T,P)
        return (bit_planes @ self.pack_matrix).to(torch.uint8)                    # (B, 1, T, nbytes)

    def decode(self, codes: torch.Tensor, sink_slots: torch.Tensor | None = None) -> torch.Tensor:
        """codes (B, 1, S, nbytes) uint8 -> latents (B, 1, S, r); sink_slots (B, S) bool marks the sink's slot,
        whose exact latent is put back."""
        b = codes.to(torch.float32)[..., self.byte_index]                     # (B, 1, S, P)
        fields = digits(b, self.shift_unit, self.plane_levels) @ self.unpack_matrix   # (B, 1, S, r + g)
        k = fields[..., :self.rank] - self.levels / 2 + 0.5                   # (B, 1, S, r)
        step = self._token_steps(fields[..., self.rank:]) if self.scales == "token" else self.step
        c = k * step
        if self.sink is not None and sink_slots is not None:
            c = torch.where(sink_slots[:, None, :, None], self.sink, c)
        return c

    def _scale_codes(self, c: torch.Tensor) -> torch.Tensor:
        """Per token and group, the index of the smallest table scale >= max |c_j / sigma_j| (255 at most):
        a count of comparisons, so PyTorch and ONNX Runtime pick the same byte."""
        u = (c / self.sigma).abs()                                            # (B, 1, T, r)
        pad = self.groups * self.group - self.rank
        u = torch.cat([u, torch.zeros_like(u[..., :1]).expand(*u.shape[:-1], pad)], dim=-1) if pad else u
        m = u.reshape(*u.shape[:-1], self.groups, self.group).amax(-1)        # (B, 1, T, g)
        below = (self.table[:-1] < m[..., None]).to(torch.float32)            # (B, 1, T, g, 255)
        return below.sum(-1)                                                  # (B, 1, T, g)

    def _token_steps(self, e: torch.Tensor) -> torch.Tensor:
        """Scale bytes (B, 1, T, g) -> per-component steps (B, 1, T, r)."""
        s = self.table[e.to(torch.long)]                                      # (B, 1, T, g)
        return 2 * s[..., self.group_of] * self.sigma / self.levels


def quantizer_for(codec, scales: str, group: int) -> LatentQuantizer | None:
    """The quantizer a codec's bits ask for (exporter/projectors.Codec), or None for a float cache."""
    if codec is None or codec.bits is None:
        return None
    return LatentQuantizer([int(b) for b in codec.bits], codec.sigma.tolist(), scales, group, codec.sink)
