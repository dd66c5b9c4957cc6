"""The HF model's weights as the compact decoder sees them, whatever the family, and the model's fingerprint.

GPT-2 stores q/k/v as one Conv1D (x @ W + b, W [in, 3 out]); Llama-family models as separate Linear layers
(W [out, in]), except Phi-3's one qkv_proj (rows: q, k, v) and gate_up_proj (rows: gate, up). `attention_weights`
returns all as float64 [out, in] matrices and biases, the one view folding (model/fold.py), fitting
(projectors/metric.py) and analysis read; `mlp_weights` the SwiGLU's three matrices. `model_fingerprint` hashes the architecture
numbers and every layer's key/value weights: projector files and statistics caches are keyed by it.

Entry point: `attention_weights(hf, cfg, layer)`, `mlp_weights(layer)`, `model_fingerprint(hf)`.
"""
from __future__ import annotations

import contextlib
import hashlib
import json

import torch

from .config import DecoderConfig, from_hf


def hf_layers(hf):
    return hf.transformer.h if hf.config.model_type == "gpt2" else hf.model.layers


def split_qkv(cfg: DecoderConfig, fused: torch.Tensor) -> list[torch.Tensor]:
    """Phi-3's qkv_proj rows (or bias) -> q (H*d), k (G*d), v (G*d)."""
    return list(fused.split([cfg.num_heads * cfg.head_dim, cfg.kv_dim, cfg.kv_dim]))


def mlp_weights(layer) -> dict[str, torch.Tensor]:
    """gate_proj, up_proj, down_proj [out, in] of a llama-family layer (Phi-3: gate_up_proj split in halves)."""
    mlp = layer.mlp
    if hasattr(mlp, "gate_up_proj"):
        gate, up = mlp.gate_up_proj.weight.detach().chunk(2, dim=0)
        return {"gate_proj": gate, "up_proj": up, "down_proj": mlp.down_proj.weight.detach()}
    return {name: getattr(mlp, name).weight.detach() for name in ("gate_proj", "up_proj", "down_proj")}


def attention_weights(hf, cfg: DecoderConfig, i: int) -> dict[str, torch.Tensor]:
    """q/k/v/o weights [out, in] and biases (or None) of layer i, in float64, whatever the family."""
    layer = hf_layers(hf)[i]
    f64 = lambda t: None if t is None else t.detach().double()
    if cfg.family == "gpt2":
        D = cfg.hidden_size
        W, b = f64(layer.attn.c_attn.weight), f64(layer.attn.c_attn.bias)   # Conv1D: x @ W + b, W (D, 3D)
        return {"q": W[:, :D].T, "k": W[:, D:2 * D].T, "v": W[:, 2 * D:].T, "o": f64(layer.attn.c_proj.weight).T,
                "q_b": b[:D], "k_b": b[D:2 * D], "v_b": b[2 * D:], "o_b": f64(layer.attn.c_proj.bias)}
    a = layer.self_attn
    bias = lambda m: f64(m.bias) if m.bias is not None else None
    if hasattr(a, "qkv_proj"):                                              # Phi-3
        q, k, v = split_qkv(cfg, f64(a.qkv_proj.weight))
        q_b, k_b, v_b = split_qkv(cfg, f64(a.qkv_proj.bias)) if a.qkv_proj.bias is not None else (None,) * 3
        return {"q": q, "k": k, "v": v, "o": f64(a.o_proj.weight), "q_b": q_b, "k_b": k_b, "v_b": v_b,
                "o_b": bias(a.o_proj)}
    return {"q": f64(a.q_proj.weight), "k": f64(a.k_proj.weight), "v": f64(a.v_proj.weight),
            "o": f64(a.o_proj.weight), "q_b": bias(a.q_proj), "k_b": bias(a.k_proj), "v_b": bias(a.v_proj),
            "o_b": bias(a.o_proj)}


def model_fingerprint(hf, layer_loaded=None) -> str:
    """sha256 of the architecture numbers and every layer's key/value projection weights: cheap, and different
    for any other model or fine-tune. layer_loaded(i): a context that holds layer i's weights (a model read one
    layer at a time, model/stream.py)."""
    cfg = from_hf(hf.config)
    h = hashlib.sha256(json.dumps(cfg.to_json(), sort_keys=True).encode())
    for i in range(cfg.num_layers):
        with layer_loaded(i) if layer_loaded else contextlib.nullcontext():
            w = attention_weights(hf, cfg, i)
            for name in ("k", "v"):
                h.update(w[name].float().contiguous().numpy().tobytes())
    return h.hexdigest()[:32]
