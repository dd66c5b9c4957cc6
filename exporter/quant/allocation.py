"""Integer bits per latent component within a byte budget, given each component's error at every width.

A tensor (a layer's keys or values) lists, per component j, its predicted error at 0..MAX_BITS bits; the bytes a
token takes are its packed codes plus scale bytes (codec/packing.bytes_per_token). Two allocations:
  spectral  greedy reverse water-filling over every component of every tensor at once: the next bit goes where
            it removes the most error; components whose next bit buys least get none (dropped). Optimal for
            convex error curves (each bit removes less than the one before), as the quantizer's are.
  uniform   the same bits everywhere, the most that fit, the leftovers one more each for the heaviest
            components: the plain quantizer, for comparison at equal bytes.

Entry points: `spectral_bits`, `uniform_bits`, `CodedTensor`.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass

from ..codec.packing import bytes_per_token
from ..codec.scalar import gaussian_mse
from ..errors import UserError

MAX_BITS = 8


def distortion(weight: float, bits: int) -> float:
    """The error a Gaussian component of this weight (variance x gain) keeps at `bits` with the Gaussian
    quantizer: not the high-rate 4^-b, which puts the first bit at 3/4 of the variance where the quantizer
    removes 64 %, and so spreads bits too thin at low rates."""
    return weight * gaussian_mse(bits)


@dataclass
class CodedTensor:
    curves: list[list[float]]       # per component, its predicted error at 0..MAX_BITS bits
    scales: str
    bits: list[int]

    @classmethod
    def gaussian(cls, weights: list[float], scales: str) -> "CodedTensor":
        return cls([[distortion(w, b) for b in range(MAX_BITS + 1)] for w in weights], scales, [0] * len(weights))

    def nbytes(self, group: int) -> int:
        return bytes_per_token(self.bits, self.scales, group)

    def gain(self, j: int) -> float:
        """What the next bit of component j removes."""
        b = self.bits[j]
        return self.curves[j][b] - self.curves[j][b + 1]


def spectral_bits(tensors: list[CodedTensor], target: int, group: int, min_bits: int = 0) -> None:
    """Greedy reverse water-filling across all tensors within `target` packed bytes (sets each .bits), every
    component starting from min_bits."""
    for t in tensors:
        t.bits = [min_bits] * len(t.curves)
    total = sum(t.nbytes(group) for t in tensors)
    if total > target:
        raise UserError(f"{target} bytes per token cannot hold {min_bits} bit(s) for each latent component: "
                        "lower K or QUANT_RATIO")
    heap = [(-t.gain(j), ti, j) for ti, t in enumerate(tensors) for j in range(len(t.curves)) if t.gain(j) > 0]
    heapq.heapify(heap)
    while heap:
        gain, ti, j = heapq.heappop(heap)
        t = tensors[ti]
        before = t.nbytes(group)
        t.bits[j] += 1
        after = t.nbytes(group)
        if total - before + after > target:
            t.bits[j] -= 1              # this bit does not fit; smaller ones elsewhere still may
            continue
        total += after - before
        if t.bits[j] < MAX_BITS and t.gain(j) > 0:
            heapq.heappush(heap, (-t.gain(j), ti, j))


def uniform_bits(tensors: list[CodedTensor], target: int, group: int) -> None:
    """Every component the same bits, the most that fit, then one more for the heaviest while they fit."""
    n = sum(len(t.curves) for t in tensors)
    for b in range(MAX_BITS, 0, -1):
        for t in tensors:
            t.bits = [b] * len(t.curves)
        if sum(t.nbytes(group) for t in tensors) <= target:
            break
    else:
        raise UserError(f"{target} bytes per token cannot hold one bit for each of {n} latent components: "
                        "lower K or QUANT_RATIO")
    if b == MAX_BITS:
        return
    total = sum(t.nbytes(group) for t in tensors)
    order = sorted(((c[0], ti, j) for ti, t in enumerate(tensors) for j, c in enumerate(t.curves)), reverse=True)
    for _, ti, j in order:
        t = tensors[ti]
        before = t.nbytes(group)
        t.bits[j] += 1
        if total - before + t.nbytes(group) > target:
            t.bits[j] -= 1
            continue
        total += t.nbytes(group) - before
