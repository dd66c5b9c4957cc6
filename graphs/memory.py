"""Process memory between generations, and between the layers of an export read one layer at a time: the
heap's free pages go back to the system when a generation (or a layer's pass) ends.

A generation allocates and frees many arrays of a few MB (logits, masks, prefill chunks, a batch's cache rows).
glibc keeps freed blocks of that size in its heap rather than unmapping them, so a long-lived process's
resident memory steps up after a large batch and stays there, though nothing is alive: SmolLM2's rose and fell
by 40 MiB between batches of 8 x 400 tokens, and rose 17 % between two batches of 8 x 2,000 (docs/soak.md).
`malloc_trim(0)` hands those pages back, so resident memory after a generation is what is still in use; a
leak still shows. Elsewhere (no glibc) it does nothing. An export of a model bigger than memory
(exporter/model/stream.py) gives them back each time it puts a layer's weights away: its peak is then one layer's
work, not the heap's leftovers of every layer before (TinyLlama-1.1B's shapes, QUANT=spectral: docs/scale.md).

Entry point: `return_freed_memory()`.
"""
from __future__ import annotations

import ctypes
import ctypes.util

_libc = None


def _glibc():
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _libc.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _libc = False
    return _libc


def return_freed_memory() -> None:
    """Give the heap's free pages back to the system (glibc), a few ms; no-op where there is no malloc_trim."""
    libc = _glibc()
    if libc:
        libc.malloc_trim(0)
