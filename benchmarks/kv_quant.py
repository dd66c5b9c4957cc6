"""Simulated KV quantization, the reference line a low-rank cache has to beat (KIVI-like, per channel).

Keys (after RoPE) are quantized per channel over groups of GROUP tokens, values per token over groups of
CHANNELS channels; asymmetric min/max, b bits; the sink at position 0 stays exact. Bytes count the integer
codes plus one float16 scale and one float16 zero per group. Simulated: quantize and dequantize in float32
inside the PyTorch decoder (attention.Attention's codec hook), no packed kernel.
"""
from __future__ import annotations

import torch

GROUP = 32        # tokens per key group
CHANNELS = 64     # channels per value group
SCALE_BYTES = 4   # float16 scale + float16 zero


def fake_quant(x: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """Asymmetric min/max quantize-dequantize along `dim` (the group axis)."""
    lo, hi = x.amin(dim, keepdim=True), x.amax(dim, keepdim=True)
    scale = (hi - lo).clamp(min=1e-8) / (2 ** bits - 1)
    return torch.round((x - lo) / scale).clamp(0, 2 ** bits - 1) * scale + lo


def quantize_keys(x: torch.Tensor, bits: int) -> torch.Tensor:
    """x (B, T, C): position 0 exact, the rest per channel in groups of GROUP tokens (last group shorter)."""
    out = x.clone()
    for s in range(1, x.shape[1], GROUP):
        out[:, s:s + GROUP] = fake_quant(x[:, s:s + GROUP], bits, dim=1)
    return out


def quantize_values(x: torch.Tensor, bits: int) -> torch.Tensor:
    """x (B, T, C): position 0 exact, the rest per token in groups of CHANNELS channels."""
    B, T, C = x.shape
    g = min(CHANNELS, C)                                # small models: one group per token
    groups = x[:, 1:].reshape(B, T - 1, C // g, g)
    return torch.cat([x[:, :1], fake_quant(groups, bits, dim=-1).reshape(B, T - 1, C)], dim=1)


def codec(bits: int, key_tap: str = "key_post"):
    """An Attention.codec hook quantizing keys and values with `bits` bits."""
    def code(name, x):
        if name == key_tap:
            return quantize_keys(x, bits)
        if name == "value":
            return quantize_values(x, bits)
        return None
    return code


def bytes_per_token(bits: int, layers: int, kv_dim: int) -> float:
    """Average cache bytes per token of both tensors, scales and zeros included."""
    keys = kv_dim * bits / 8 + kv_dim * SCALE_BYTES / GROUP
    values = kv_dim * bits / 8 + max(kv_dim // CHANNELS, 1) * SCALE_BYTES
    return layers * (keys + values)
