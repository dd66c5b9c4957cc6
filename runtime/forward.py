"""One forward pass of the exported decoder through IO binding: new tokens in, last-position logits out.

Token inputs are small int64 arrays, copied to the device each step; the cache OrtValues are bound
as they are and the present outputs are allocated by onnxruntime on the device, then handed to the
cache. Only the logits come back to numpy, and only the last position's where the graph has the optional
logits_to_keep input (exports before it return every position; the last is taken here).
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort

from graphs.contract import ATTENTION_MASK, INPUT_IDS, LOGITS, LOGITS_TO_KEEP, POSITION_IDS, CacheLayout
from graphs.metadata import ExportError

from .cache import KVCache
from .session import Device


ORT_TYPES = {"float32": "tensor(float)", "float16": "tensor(float16)", "uint8": "tensor(uint8)", "int8": "tensor(int8)"}


def position_ids(attention_mask: np.ndarray, new_tokens: int) -> np.ndarray:
    """Positions of the last `new_tokens` columns: clip(cumsum(mask) - 1, 0), the HF convention.

    (B, past+T) int64 -> (B, T) int64. Left padding gets position 0; real tokens count from 0.
    """
    positions = np.cumsum(attention_mask, axis=-1) - 1                  # (B, past+T)
    return np.maximum(positions[:, -new_tokens:], 0)                      # (B, T)


class DecoderStep:
    """Runs the session on (input_ids, attention_mask, position_ids) + a KVCache, with IO binding.

    Per step only what changes is bound: the token inputs always; a concat cache's past and fresh present
    outputs every step; a shared-buffer cache once (the same buffers serve every step). Graphs with
    logits_to_keep write the last position's logits into one host buffer the step owns.
    """

    def __init__(self, session: ort.InferenceSession, device: Device):
        self.session = session
        self.device = device
        self.binding = session.io_binding()
        optional = {i.name for i in session.get_overridable_initializers()}
        self.keep_last = self._to_device(np.array(1)) if LOGITS_TO_KEEP in optional else None
        self.vocab = next(o.shape[-1] for o in session.get_outputs() if o.name == LOGITS)
        self._bound_cache = None                  # the shared-buffer cache whose buffers are bound now
        self._logits = None                       # (B, 1, V) float32 host buffer and its OrtValue

    def _to_device(self, array: np.ndarray) -> ort.OrtValue:
        """A contiguous int64 array as an OrtValue on the session's device (a copy on CUDA, a view on CPU)."""
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array, dtype=np.int64),
                                                self.device.type, self.device.id)

    def _bind_logits(self, batch: int) -> None:
        """Logits into the step's own (B, 1, V) host buffer (last position only), else wherever onnxruntime
        puts them on the host (it copies them there itself when the graph runs on CUDA)."""
        if self.keep_last is None or not isinstance(self.vocab, int):
            self.binding.bind_output(LOGITS, "cpu")
            return
        if self._logits is None or self._logits[0].shape[0] != batch:
            array = np.empty((batch, 1, self.vocab), np.float32)                          # (B, 1, V)
            self._logits = array, ort.OrtValue.ortvalue_from_numpy(array)
        self.binding.bind_ortvalue_output(LOGITS, self._logits[1])

    def _bind_cache(self, cache: KVCache, new_tokens: int) -> list[str]:
        """Bind the cache (all of it, unless it is the shared buffer bound last step); the output names."""
        if cache.shared and cache is self._bound_cache:
            cache.check_room(new_tokens)
            return [LOGITS]
        b = self.binding
        b.clear_binding_inputs()
        b.clear_binding_outputs()
        cache.bind_inputs(b)
        self._bind_logits(cache.batch)
        self._bound_cache = cache if cache.shared else None
        return [LOGITS] + cache.bind_outputs(b, new_tokens)

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray, cache: KVCache) -> np.ndarray:
        """Feed the new tokens (B, T) with the mask over past+new (B, past+T); advance `cache`.

        Returns the logits of the last new position, (B, V), float32 (a fresh array the caller owns).
        """
        if attention_mask.shape[1] != cache.length + input_ids.shape[1]:
            raise ValueError(f"attention_mask covers {attention_mask.shape[1]} tokens, "
                             f"cache {cache.length} + new {input_ids.shape[1]}")
        b = self.binding
        names = self._bind_cache(cache, input_ids.shape[1])
        b.bind_ortvalue_input(INPUT_IDS, self._to_device(input_ids))                       # (B, T)
        b.bind_ortvalue_input(ATTENTION_MASK, self._to_device(attention_mask))             # (B, past+T)
        b.bind_ortvalue_input(POSITION_IDS, self._to_device(position_ids(attention_mask, input_ids.shape[1])))
        if self.keep_last is not None:
            b.bind_ortvalue_input(LOGITS_TO_KEEP, self.keep_last)                           # ()
        self.session.run_with_iobinding(b)
        outputs = dict(zip(names, b.get_outputs())) if len(names) > 1 else {}  # binding order
        cache.advance(outputs, input_ids.shape[1])
        if self._logits is not None:                                 # the step's own buffer, last position
            return self._logits[0][:, -1, :].copy()                                          # (B, V)
        logits = outputs[LOGITS].numpy() if outputs else b.get_outputs()[0].numpy()          # (B, 1 or T, V)
        return logits[:, -1, :].astype(np.float32, copy=False)                                # (B, V)


def check_io(session: ort.InferenceSession, layout: CacheLayout) -> None:
    """The session's inputs and outputs are those the contract and export.json's layout name, each cache input of
    the kv_heads, head_size and element type the layout gives it."""
    inputs = {i.name for i in session.get_inputs()}
    outputs = {o.name for o in session.get_outputs()}
    want_in = {INPUT_IDS, ATTENTION_MASK, POSITION_IDS} | {past for _, _, past, _ in layout.names()}
    want_out = {LOGITS} | {present for _, _, _, present in layout.names()}
    extra = sorted(n for n in inputs - want_in if n.startswith("past_key_values."))
    if extra:
        raise ExportError(f"model.onnx has {len(extra)} cache input(s) export.json does not describe ({extra[0]}"
                          f"{', ...' if len(extra) > 1 else ''}): model and metadata disagree, run `make export` again")
    missing = sorted(want_in - inputs) + sorted(want_out - outputs)
    if missing:
        raise ExportError(f"model.onnx lacks {', '.join(missing)} that export.json promises: "
                          "model and metadata disagree, run `make export` again")
    graph = {i.name: i for i in session.get_inputs()}
    for layer, kind, past, _ in layout.names():
        want, arg = layout.shape(layer, kind), graph[past]
        heads, size = (arg.shape[1], arg.shape[3]) if len(arg.shape) == 4 else (None, None)
        if (heads, size) != (want.kv_heads, want.head_size) or arg.type != ORT_TYPES[layout.dtype_of(want)]:
            raise ExportError(f"model.onnx takes {past} as {arg.type} [batch, {heads}, seq, {size}] but export.json "
                              f"says {layout.dtype_of(want)} [batch, {want.kv_heads}, seq, {want.head_size}]: model "
                              "and metadata disagree, run `make export` again")
