"""The KV cache between steps: one OrtValue per past_key_values.{i}.key/.value, kept on the session's device.

The cache is never copied through numpy. Two protocols, as the export's cache_update says (graphs/contract.py):
  concat         starts as empty tensors (seq axis 0) allocated on the device; after each step the present.{i}.*
                 OrtValues that onnxruntime allocated for the outputs become the past of the next step.
  shared-buffer  one buffer per tensor, allocated once for `capacity` tokens and bound as both past and
                 present: the graph writes new tokens into it in place; only the length advances.
On CUDA they are 'cuda' device memory throughout.
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort

from graphs.contract import CacheLayout

from .session import Device

NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16, "uint8": np.uint8, "int8": np.int8}


def _allocate(layout: CacheLayout, batch: int, device: Device, seq: int) -> dict[str, ort.OrtValue]:
    """Past name -> an OrtValue (B, kv_heads, seq, head_size) of its tensor's dtype on `device`."""
    values = {}
    for layer, kind, past, _ in layout.names():
        s = layout.shape(layer, kind)
        values[past] = ort.OrtValue.ortvalue_from_shape_and_type(
            (batch, s.kv_heads, seq, s.head_size), NUMPY_DTYPES[layout.dtype_of(s)], device.type,
            device.id)                                                                 # (B, H, seq, d)
    return values


ALIGN = 64     # bytes: each tensor of a host block starts on a cache line


def _host_buffers(layout: CacheLayout, batch: int, capacity: int) -> dict[str, np.ndarray]:
    """Past name -> a zeroed host array (B, kv_heads, capacity, head_size): CPU shared buffers live in numpy
    arrays, so one sequence's rows can be bound alone as a view (KVCache.row) without a copy.

    All of them are views into one block: a block that large is a memory mapping of its own, given back to the
    system when the cache is dropped. As separate arrays of a few MB each they came from the heap, which kept
    them after the generation: SmolLM2's resident memory grew 17 % between two batches of 8 x 2,000 tokens
    (benchmarks/soak.py, docs/soak.md)."""
    shapes = {past: ((batch, layout.shape(i, kind).kv_heads, capacity, layout.shape(i, kind).head_size),
                     np.dtype(NUMPY_DTYPES[layout.dtype_of(layout.shape(i, kind))]))
              for i, kind, past, _ in layout.names()}
    starts, end = {}, 0
    for past, (shape, dtype) in shapes.items():
        starts[past] = end
        end += -(-int(np.prod(shape)) * dtype.itemsize // ALIGN) * ALIGN
    block = np.zeros(end, np.uint8)     # calloc: untouched pages cost no memory until the graph writes them
    return {past: block[starts[past]:starts[past] + int(np.prod(shape)) * dtype.itemsize].view(dtype).reshape(shape)
            for past, (shape, dtype) in shapes.items()}


class KVCache:
    """The past tensors of every layer for a batch, as device OrtValues named by the graph contract."""

    def __init__(self, layout: CacheLayout, device: Device, values: dict[str, ort.OrtValue],
                 shared: bool = False, host: dict[str, np.ndarray] | None = None):
        self.layout = layout
        self.device = device
        self.values = values  # past name -> OrtValue (B, kv_heads, past or capacity, head_size)
        self.shared = shared
        self.host = host      # CPU shared buffers: the numpy arrays the OrtValues wrap (rows bind as views)
        self._length = 0      # tokens per sequence so far (a windowed layer's concat cache holds fewer)

    @classmethod
    def empty(cls, layout: CacheLayout, batch: int, device: Device) -> "KVCache":
        """The prefill cache of the concat protocol: every past tensor (B, kv_heads, 0, head_size)."""
        return cls(layout, device, _allocate(layout, batch, device, 0))

    @classmethod
    def buffer(cls, layout: CacheLayout, batch: int, device: Device, capacity: int) -> "KVCache":
        """A shared-buffer cache: every tensor (B, kv_heads, capacity, head_size), allocated once (on the CPU in
        numpy arrays the OrtValues wrap, so that row() can hand out one sequence's rows)."""
        if device.type != "cpu":
            return cls(layout, device, _allocate(layout, batch, device, capacity), shared=True)
        host = _host_buffers(layout, batch, capacity)
        return cls(layout, device, {n: ort.OrtValue.ortvalue_from_numpy(a) for n, a in host.items()}, shared=True,
                   host=host)

    @classmethod
    def from_arrays(cls, layout: CacheLayout, device: Device, arrays: dict[str, np.ndarray], length: int,
                    shared: bool, room: int = 0) -> "KVCache":
        """A cache holding `arrays` (past name -> (B, kv_heads, seq, head_size), as `arrays()` gave them) for
        `length` tokens per sequence: concat tensors as they are, or a shared buffer with `room` tokens to spare."""
        if not shared:
            cache = cls(layout, device, {n: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a), device.type,
                                                                             device.id) for n, a in arrays.items()})
        else:
            batch = next(iter(arrays.values())).shape[0]
            cache = cls.buffer(layout, batch, device, length + room)
            for name, a in arrays.items():
                if cache.host is not None:
                    cache.host[name][:, :, :length] = a
                else:               # a device buffer: written whole from the host
                    full = np.zeros(cache.values[name].shape(), a.dtype)
                    full[:, :, :length] = a
                    cache.values[name].update_inplace(full)
        cache._length = length
        return cache

    def arrays(self) -> dict[str, np.ndarray]:
        """Past name -> the tensor as the graph holds it, on the host: a shared buffer cut to the cached tokens, a
        concat tensor whole (a windowed layer's holds fewer than `length`)."""
        if not self.shared:
            return {n: v.numpy() for n, v in self.values.items()}
        full = self.host or {n: v.numpy() for n, v in self.values.items()}
        return {n: np.ascontiguousarray(a[:, :, :self._length]) for n, a in full.items()}

    def row(self, index: int) -> "KVCache":
        """Sequence `index` of a CPU shared buffer as a batch-1 cache over the same memory (numpy views, no copy):
        a batch is prefilled one sequence at a time, in chunks, which the fused op takes at batch 1 only."""
        if self.host is None:
            raise ValueError("only CPU shared buffers hand out rows")
        view = KVCache(self.layout, self.device, {n: ort.OrtValue.ortvalue_from_numpy(a[index:index + 1])
                                                  for n, a in self.host.items()}, shared=True,
                       host={n: a[index:index + 1] for n, a in self.host.items()})
        view._length = self._length
        return view

    @property
    def length(self) -> int:
        """Tokens held per sequence (the past length; padding included)."""
        return self._length

    @property
    def batch(self) -> int:
        return next(iter(self.values.values())).shape()[0]

    def check_room(self, new_tokens: int) -> None:
        """A shared buffer must hold the step's new tokens; raises ValueError naming the fix."""
        if self.shared and self._length + new_tokens > self.capacity:
            raise ValueError(f"the cache buffer holds {self.capacity} tokens, {self._length} used, {new_tokens} "
                             "more asked: allocate a bigger one (Generator sizes it prompt + max_new_tokens)")

    @property
    def capacity(self) -> int | None:
        """Tokens a shared buffer can hold; None for a concat cache (it grows)."""
        return next(iter(self.values.values())).shape()[2] if self.shared else None

    @property
    def nbytes(self) -> int:
        """Bytes held on the device by all past tensors."""
        return sum(v.tensor_size_in_bytes() for v in self.values.values())

    def bind_inputs(self, binding: ort.IOBinding) -> None:
        """Bind every past OrtValue as the graph input of the same name."""
        for name, value in self.values.items():
            binding.bind_ortvalue_input(name, value)

    def bind_outputs(self, binding: ort.IOBinding, new_tokens: int) -> list[str]:
        """Bind every present output: to the past buffer itself (shared; checks it has room for new_tokens),
        or to a fresh tensor onnxruntime allocates on the cache's device (concat). Returns their names."""
        self.check_room(new_tokens)
        names = []
        for _, _, past, present in self.layout.names():
            if self.shared:
                binding.bind_ortvalue_output(present, self.values[past])
            else:
                binding.bind_output(present, self.device.type, self.device.id)
            names.append(present)
        return names

    def advance(self, outputs: dict[str, ort.OrtValue], new_tokens: int) -> None:
        """After a step: the shared buffers now hold new_tokens more; a concat cache takes the step's present
        OrtValues (by output name) as the next past. No data moves either way."""
        self._length += new_tokens
        if not self.shared:
            self.values = {past: outputs[present] for _, _, past, present in self.layout.names()}
