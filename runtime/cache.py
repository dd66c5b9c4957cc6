"""The KV cache between steps: one OrtValue per past_key_values.{i}.key/.value, kept on the session's device.

The cache is never copied through numpy. It starts as empty tensors (seq axis 0) allocated on the
device; after each step the present.{i}.* OrtValues that onnxruntime allocated for the outputs
become the past of the next step, as they are. On CUDA they are 'cuda' device memory throughout.
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort

from graphs.contract import CacheLayout

from .session import Device

NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16}


class KVCache:
    """The past tensors of every layer for a batch, as device OrtValues named by the graph contract."""

    def __init__(self, layout: CacheLayout, device: Device, values: dict[str, ort.OrtValue]):
        self.layout = layout
        self.device = device
        self.values = values  # past name -> OrtValue (B, kv_heads, past, head_size)

    @classmethod
    def empty(cls, layout: CacheLayout, batch: int, device: Device) -> "KVCache":
        """The prefill cache: every past tensor (B, kv_heads, 0, head_size), allocated on `device`."""
        dtype = NUMPY_DTYPES[layout.dtype]
        values = {}
        for layer, kind, past, _ in layout.names():
            s = layout.shape(layer, kind)
            values[past] = ort.OrtValue.ortvalue_from_shape_and_type(
                (batch, s.kv_heads, 0, s.head_size), dtype, device.type, device.id)  # (B, H, 0, d)
        return cls(layout, device, values)

    @property
    def length(self) -> int:
        """Tokens held per sequence (the past length; padding included)."""
        return next(iter(self.values.values())).shape()[2]

    @property
    def nbytes(self) -> int:
        """Bytes held on the device by all past tensors."""
        return sum(v.tensor_size_in_bytes() for v in self.values.values())

    def bind_inputs(self, binding: ort.IOBinding) -> None:
        """Bind every past OrtValue as the graph input of the same name."""
        for name, value in self.values.items():
            binding.bind_ortvalue_input(name, value)

    def bind_outputs(self, binding: ort.IOBinding) -> list[str]:
        """Ask onnxruntime to allocate every present output on the cache's device; returns their names."""
        names = [present for _, _, _, present in self.layout.names()]
        for name in names:
            binding.bind_output(name, self.device.type, self.device.id)
        return names

    def advance(self, outputs: dict[str, ort.OrtValue]) -> None:
        """Take the step's present OrtValues (by output name) as the next past; no data moves."""
        self.values = {past: outputs[present] for _, _, past, present in self.layout.names()}
