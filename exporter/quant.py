"""Quantized latents: the cache stores integer codes of the latent components, packed into bytes (issue #6).

A compressed layer caches latents c = encode (x - mean) (attention.py). With a quantizer, component j of c is
stored as a code of bits_j bits by a uniform mid-rise quantizer,

    code_j = clamp(floor(c_j / step_j), -L_j/2, L_j/2 - 1) + L_j/2       L_j = 2^bits_j
    c^_j   = (code_j - L_j/2 + 1/2) step_j

and attention sees c^ (the new tokens' too, so each step computes exactly what the next step will read back).
Steps, by `scales`:
  static  step_j = gaussian_step(bits_j) sigma_j, sigma_j the component's scale: its standard deviation on the
          calibration text, or the multiple of it fitted to calibration samples (quantize.scale_search); nothing
          stored per token beyond the codes.
  token   per token and per group of `group` components, s = the smallest 2^(e/8 - 16) >= max_j |c_j| / sigma_j
          (one byte e per group, stored beside the codes), and step_j = 2 s sigma_j / L_j: nothing is clipped.
The sink (the constant token at position 0) is replaced by its exact latent after decoding: its keys and
values are outliers no quantizer of the others' range can keep, and being constant they cost nothing.

Packing: every field (a component's code, a group's scale byte) is split into bit planes of 8, 4, 2 and 1 bits
(its binary digits: 7 bits = 4 + 2 + 1), laid end to end, widest first, so no plane straddles two bytes and a
token takes ceil(sum(bits) / 8) bytes. Packing is Gather, Floor, Sub, Mul and a MatMul with a constant matrix
of powers of two in float32 (exact for integers below 2^24), which ONNX Runtime runs anywhere.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch import nn

SCALES = ("static", "token")
PLANE_WIDTHS = (8, 4, 2, 1)
SCALE_TABLE_BITS = 8                 # token scales: one byte, 2^(e/8 - 16) for e = 0..255
SCALE_STEPS_PER_OCTAVE = 8


def _gaussian_mse(bits: int, step: float) -> float:
    """Mean squared error of the mid-rise quantizer with 2^bits levels and this step on a unit Gaussian."""
    x = np.linspace(-12, 12, 240_001)
    w = np.exp(-x * x / 2)
    w /= w.sum()
    half = 2 ** bits / 2
    k = np.clip(np.floor(x / step), -half, half - 1)
    return float((w * (x - (k + 0.5) * step) ** 2).sum())


@functools.cache
def gaussian_step(bits: int) -> float:
    """The step of the uniform mid-rise quantizer with 2^bits levels that minimises the mean squared error on
    a unit Gaussian (Max, 1960: 1.596 at 1 bit, 0.996 at 2, 0.586 at 3, 0.335 at 4); numerically."""
    lo, hi = 1e-4, 4.0                                      # golden section: the error is unimodal in the step
    g = (math.sqrt(5) - 1) / 2
    for _ in range(80):
        a, b = hi - g * (hi - lo), lo + g * (hi - lo)
        lo, hi = (lo, b) if _gaussian_mse(bits, a) < _gaussian_mse(bits, b) else (a, hi)
    return (lo + hi) / 2


@functools.cache
def gaussian_mse(bits: int) -> float:
    """The error that quantizer leaves of a unit variance: 1 at 0 bits (dropped), 0.363 at 1, 0.119 at 2,
    0.0374 at 3, 0.0115 at 4 (Max, 1960); about 4^-bits x 1.4 at high rates, and more at low ones."""
    return 1.0 if bits == 0 else _gaussian_mse(bits, gaussian_step(bits))


def scale_table() -> torch.Tensor:
    """The 256 token scales a scale byte can name: 2^(e/8 - 16), e = 0..255 (float32)."""
    e = torch.arange(2 ** SCALE_TABLE_BITS, dtype=torch.float64)
    return torch.exp2(e / SCALE_STEPS_PER_OCTAVE - 2 ** SCALE_TABLE_BITS / 2 / SCALE_STEPS_PER_OCTAVE).float()


def planes(width: int) -> list[tuple[int, int]]:
    """(offset, plane width) of each binary digit plane of a `width`-bit field, low bits first: 7 -> 1, 2, 4."""
    if not 1 <= width <= 8:
        raise ValueError(f"field width {width} is not in 1..8")
    out, offset = [], 0
    for w in reversed(PLANE_WIDTHS):
        if width & w:
            out.append((offset, w))
            offset += w
    return out


class Packing:
    """Where each bit plane of each field lies in the packed bytes of one token."""

    def __init__(self, widths: list[int]):
        self.widths = list(widths)
        entries = [(f, off, w) for f, width in enumerate(self.widths) for off, w in planes(width)]
        self.field, self.offset, self.width, self.byte, self.shift = [], [], [], [], []
        position = 0                                            # in bits
        for w in PLANE_WIDTHS:      # widest first: every plane starts at a multiple of its width, so none
            for f, off, pw in entries:                          # straddles two bytes
                if pw == w:
                    self.field.append(f), self.offset.append(off), self.width.append(w)
                    self.byte.append(position // 8), self.shift.append(position % 8)
                    position += w
        self.nbytes = -(-position // 8)

    def matrices(self) -> dict[str, torch.Tensor]:
        """The constant tensors pack/unpack need (float32 powers of two and gather indices)."""
        P, F = len(self.field), len(self.widths)
        pack, unpack = torch.zeros(P, self.nbytes), torch.zeros(P, F)
        for p in range(P):
            pack[p, self.byte[p]] = 2.0 ** self.shift[p]
            unpack[p, self.field[p]] = 2.0 ** self.offset[p]
        return {"field_index": torch.tensor(self.field, dtype=torch.long),
                "byte_index": torch.tensor(self.byte, dtype=torch.long),
                "offset_unit": torch.tensor([2.0 ** o for o in self.offset]),
                "shift_unit": torch.tensor([2.0 ** s for s in self.shift]),
                "plane_levels": torch.tensor([2.0 ** w for w in self.width]),
                "pack_matrix": pack, "unpack_matrix": unpack}


def _digits(x: torch.Tensor, unit: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """floor(x / unit) mod levels, for non-negative integers held in float."""
    y = torch.floor(x / unit)
    return y - levels * torch.floor(y / levels)


def num_groups(rank: int, group: int) -> int:
    return -(-rank // group)


def packed_bytes(widths: list[int]) -> int:
    """Bytes the fields of these widths pack into (Packing's count, without building it): every bit used."""
    return -(-sum(widths) // 8)


def bytes_per_token(bits: list[int], scales: str, group: int) -> int:
    """Packed bytes one token of one tensor takes: its codes plus, for token scales, a byte per group."""
    kept = [b for b in bits if b > 0]
    extra = [SCALE_TABLE_BITS] * num_groups(len(kept), group) if scales == "token" and kept else []
    return packed_bytes(kept + extra)


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
        digits = _digits(fields[..., self.field_index], self.offset_unit, self.plane_levels)   # (B,1,T,P)
        return (digits @ self.pack_matrix).to(torch.uint8)                    # (B, 1, T, nbytes)

    def decode(self, codes: torch.Tensor, sink_slots: torch.Tensor | None = None) -> torch.Tensor:
        """codes (B, 1, S, nbytes) uint8 -> latents (B, 1, S, r); sink_slots (B, S) bool marks the sink's slot,
        whose exact latent is put back."""
        b = codes.to(torch.float32)[..., self.byte_index]                     # (B, 1, S, P)
        fields = _digits(b, self.shift_unit, self.plane_levels) @ self.unpack_matrix   # (B, 1, S, r + g)
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
