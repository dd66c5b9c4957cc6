"""Packing codes of mixed widths into bytes: every bit used, no field straddling two bytes.

Every field (a component's code, a group's scale byte) is split into bit planes of 8, 4, 2 and 1 bits (its
binary digits: 7 bits = 4 + 2 + 1), laid end to end, widest first, so every plane starts at a multiple of its
width and a token takes ceil(sum(bits) / 8) bytes. Packing is Gather, Floor, Sub, Mul and a MatMul with a
constant matrix of powers of two in float32 (exact for integers below 2^24), which ONNX Runtime runs anywhere.

Entry points: `Packing(widths)` (where each plane lies, and the constant matrices), `bytes_per_token`.
"""
from __future__ import annotations

import torch

from .scalar import SCALE_TABLE_BITS

PLANE_WIDTHS = (8, 4, 2, 1)


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


def digits(x: torch.Tensor, unit: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
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


