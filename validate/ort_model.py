"""A plain onnxruntime forward over the export contract, numpy in and out: what validation drives.

(The runtime package drives generation with IO binding; validation wants whole logits as numpy.)"""
from __future__ import annotations

import os

import numpy as np
import torch

from graphs import contract as C
from graphs.metadata import MODEL_FILE, ExportMetadata
from runtime.cache import NUMPY_DTYPES
from runtime.forward import check_io
from runtime.session import open_session


class OrtModel:
    def __init__(self, export_dir: str, meta: ExportMetadata, threads: int = 0):
        """A CPU session of the export's model.onnx; a file onnxruntime cannot load, or whose inputs disagree with
        export.json, is refused with an ExportError (runtime/session.py, runtime/forward.py)."""
        self.session, _ = open_session(os.path.join(export_dir, MODEL_FILE), "cpu", "all", threads)
        check_io(self.session, meta.layout)
        self.layout = meta.layout

    def empty_past(self, batch: int) -> list[np.ndarray]:
        def empty(s):
            return np.zeros((batch, s.kv_heads, 0, s.head_size), NUMPY_DTYPES[self.layout.dtype_of(s)])
        return [empty(self.layout.shape(i, k)) for i, k, _, _ in self.layout.names()]

    def __call__(self, ids: np.ndarray, mask: np.ndarray, pos: np.ndarray, past: list[np.ndarray]):
        """ids, pos (B, T), mask (B, P+T), past as from empty_past/previous call -> logits (B, T, V), present."""
        feed = {C.INPUT_IDS: ids.astype(np.int64), C.ATTENTION_MASK: mask.astype(np.int64),
                C.POSITION_IDS: pos.astype(np.int64)}
        feed.update({name: p for (_, _, name, _), p in zip(self.layout.names(), past)})
        out = self.session.run(None, feed)
        return out[0], out[1:]

    def window_logits(self, ids: list[int]) -> torch.Tensor:
        """One window's logits (T-1, V) predicting ids[1:], run as one prefill: what eval.perplexity.measure
        scores against the original model."""
        x = np.array([ids], np.int64)                                          # (1, T)
        out, _ = self(x, np.ones_like(x), np.arange(x.shape[1])[None], self.empty_past(1))
        return torch.from_numpy(out[0, :-1])
