"""The HF model's weights as the compact decoder sees them, whatever the family, and the model's fingerprint.

GPT-2 stores q/k/v as one Conv1D (x @ W + b, W [in, 3 out]); Llama-family models as separate Linear layers
(W [out, in]). `attention_weights` returns both as float64 [out, in] matrices and biases, the one view folding
(model/fold.py), fitting (projectors/metric.py) and analysis read. `model_fingerprint` hashes the architecture
numbers and every layer's key/value weights: projector files and statistics caches are keyed by it.

Entry point: `attention_weights(hf, cfg, layer)`, `model_fingerprint(hf)`.
"""
from __future__ import annotations

import hashlib
import json

import torch

from .config import DecoderConfig, from_hf


def _hf_layers(hf):
    return hf.transformer.h if hf.config.model_type == "gpt2" else hf.model.layers


def attention_weights(hf, cfg: DecoderConfig, i: int) -> dict[str, torch.Tensor]:
    """q/k/v/o weights [out, in] and biases (or None) of layer i, in float64, whatever the family."""
    layer = _hf_layers(hf)[i]
    f64 = lambda t: None if t is None else t.detach().double()
    if cfg.family == "gpt2":
        D = cfg.hidden_size
        W, b = f64(layer.attn.c_attn.weight), f64(layer.attn.c_attn.bias)   # Conv1D: x @ W + b, W (D, 3D)
        return {"q": W[:, :D].T, "k": W[:, D:2 * D].T, "v": W[:, 2 * D:].T, "o": f64(layer.attn.c_proj.weight).T,
                "q_b": b[:D], "k_b": b[D:2 * D], "v_b": b[2 * D:], "o_b": f64(layer.attn.c_proj.bias)}
    a = layer.self_attn
    bias = lambda m: f64(m.bias) if m.bias is not None else None
    return {"q": f64(a.q_proj.weight), "k": f64(a.k_proj.weight), "v": f64(a.v_proj.weight),
            "o": f64(a.o_proj.weight), "q_b": bias(a.q_proj), "k_b": bias(a.k_proj), "v_b": bias(a.v_proj),
            "o_b": bias(a.o_proj)}


def model_fingerprint(hf) -> str:
    """sha256 of the architecture numbers and every layer's key/value projection weights: cheap, and different
    for any other model or fine-tune."""
    cfg = from_hf(hf.config)
    h = hashlib.sha256(json.dumps(cfg.to_json(), sort_keys=True).encode())
    for i in range(cfg.num_layers):
        w = attention_weights(hf, cfg, i)
        for name in ("k", "v"):
            h.update(w[name].float().contiguous().numpy().tobytes())
    return h.hexdigest()[:32]
