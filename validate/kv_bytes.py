"""KV bytes per token measured from what the graph returns: how much its present tensors grow in one step.

The estimator (graphs/contract.kv_bytes_per_token) computes the figure from the layout; this measures it on the
ONNX Runtime outputs themselves, so a graph that stores more than its metadata says (a wider code, a float
where uint8 was meant, scales kept beside the codes) cannot hide."""
from __future__ import annotations

import numpy as np


def measured_bytes_per_token(ort_model, prompt_tokens: int | None = None) -> int:
    """Bytes of every present tensor after prompt_tokens + 1 tokens minus after prompt_tokens (batch 1). The
    default is 8 tokens, or enough to fill every sliding and float window (whose tensors then stop growing)."""
    return _measure(ort_model, prompt_tokens)[0]


def measured_bytes_at(ort_model, context: int) -> int:
    """Bytes of the whole cache of one sequence of `context` tokens, from the outputs: `context` times the
    growth per token, plus what the tensors that stop growing (sliding and float windows) hold once full."""
    growth, prompt_tokens, held = _measure(ort_model, None)
    return growth * context + (held - growth * prompt_tokens)


def _measure(ort_model, prompt_tokens):
    """(growth over one step, the prompt's tokens, the bytes the presents hold after the prompt)."""
    if prompt_tokens is None:
        prompt_tokens = max([8] + [s.window for s in ort_model.layout.all_shapes() if s.window])
    ids = (np.arange(prompt_tokens, dtype=np.int64) % 100 + 3)[None]               # (1, n)
    mask = np.ones_like(ids)
    _, past = ort_model(ids, mask, np.arange(prompt_tokens)[None], ort_model.empty_past(1))
    before = sum(p.nbytes for p in past)
    mask = np.ones((1, prompt_tokens + 1), np.int64)
    _, past = ort_model(ids[:, -1:], mask, np.array([[prompt_tokens]]), past)
    return sum(p.nbytes for p in past) - before, prompt_tokens, before
