"""The HF model with edited attention weights, for perplexity rows that run HF's fast attention.

PCA compression is affine in the input, x -> mean + P (W x + b - mean) with P = decode encode, so it folds into
k_proj / v_proj exactly as the export folds it; truncated weights replace each matrix by its best rank-r
approximation. `edited_attention` puts the originals back after the block.

Entry points: `edited_attention(hf, cfg, edits)`, `pca_edits`, `truncation_edits`.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from ..codec.linear import Projectors
from ..errors import UserError
from ..model.config import DecoderConfig
from ..model.weights import attention_weights
from . import spectrum as S
from .threads import lapack_threads


def _attention_modules(hf, cfg: DecoderConfig, i: int) -> list:
    if cfg.family == "gpt2":
        a = hf.transformer.h[i].attn
        return [a.c_attn, a.c_proj]
    a = hf.model.layers[i].self_attn
    if hasattr(a, "qkv_proj"):                    # Phi-3
        return [a.qkv_proj, a.o_proj]
    return [a.q_proj, a.k_proj, a.v_proj, a.o_proj]


def _joined(w: dict, names: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One fused module's [out, in] weight and bias from q/k/v parts (biases: None when no part has one)."""
    biases = [w[f"{n}_b"] for n in names]
    bias = None if all(b is None for b in biases) else \
        torch.cat([b if b is not None else torch.zeros(w[n].shape[0], dtype=w[n].dtype) for n, b in zip(names, biases)])
    return torch.cat([w[n] for n in names]), bias


def _assign(module, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """Set a module's weight (and bias: created when the module had none, e.g. Llama's k_proj)."""
    with torch.no_grad():
        module.weight.data = weight.float().contiguous()
        if bias is not None:
            if module.bias is None:
                module.bias = torch.nn.Parameter(bias.float().clone(), requires_grad=False)
            else:
                module.bias.data = bias.float().clone()


def write_attention(hf, cfg: DecoderConfig, i: int, w: dict) -> None:
    """The inverse of fold.attention_weights: put q/k/v/o weights [out, in] and biases into layer i of hf."""
    modules = _attention_modules(hf, cfg, i)
    if cfg.family == "gpt2":                      # Conv1D: one [in, 3 out] matrix for q, k, v; biases always
        _assign(modules[0], torch.cat([w["q"].T, w["k"].T, w["v"].T], dim=1),
                torch.cat([w["q_b"], w["k_b"], w["v_b"]]))
        _assign(modules[1], w["o"].T, w["o_b"])
        return
    if len(modules) == 2:                         # Phi-3's qkv_proj
        _assign(modules[0], *_joined(w, "qkv"))
        _assign(modules[1], w["o"], w["o_b"])
        return
    for module, name in zip(modules, ("q", "k", "v", "o")):
        _assign(module, w[name], w[f"{name}_b"])


@contextmanager
def edited_attention(hf, cfg: DecoderConfig, edits: dict[int, dict]):
    """Within the block, layers in `edits` use the given attention weights; the originals come back after."""
    saved = {}
    for i in edits:
        for m in _attention_modules(hf, cfg, i):
            saved[m] = (m.weight.data, None if m.bias is None else m.bias.data)
    try:
        for i, w in edits.items():
            write_attention(hf, cfg, i, w)
        yield
    finally:
        for m, (weight, b) in saved.items():
            m.weight.data = weight
            if b is None:
                m.bias = None
            else:
                m.bias.data = b


def pca_edits(hf, cfg: DecoderConfig, proj: Projectors) -> dict[int, dict]:
    """PCA compression of keys and values as attention weights: x -> mean + P (W x + b - mean), P = B B^T, is
    affine in x, so k_proj becomes (P W, P (b - mean) + mean). The same map the export folds into its graph
    (pre-RoPE keys; GPT-2 has no RoPE); the sink stays exact because its direction is in every basis."""
    if cfg.has_rope and proj.key_mode != "pre-rope":
        raise UserError("the hf engine compresses keys before RoPE only: use --engine decoder for post-rope")
    if cfg.qk_norm and any(k is not None for k in proj.keys):
        raise UserError(f"{cfg.model_type} norms its keys after k_proj, so no k_proj edit codes them: "
                        "use --engine decoder")
    edits = {}
    for i in range(cfg.num_layers):
        w = attention_weights(hf, cfg, i)
        changed = False
        for name, p in (("k", proj.key(i)), ("v", proj.value(i))):
            if p is None:
                continue
            mean = p.mean                                                    # (kv_dim,)
            P = p.decode @ p.encode                                          # (kv_dim, kv_dim)
            b = w[f"{name}_b"] if w[f"{name}_b"] is not None else torch.zeros_like(mean)
            w[name], w[f"{name}_b"] = P @ w[name], P @ (b - mean) + mean
            changed = True
        if changed:
            edits[i] = w
    return edits


def truncation_edits(hf, cfg: DecoderConfig, ranks: list[dict]) -> dict[int, dict]:
    """Attention weights replaced by their best rank-r approximations, r per layer and matrix."""
    edits = {}
    with lapack_threads(1):
        for i in range(cfg.num_layers):
            w = attention_weights(hf, cfg, i)
            for name in ("q", "k", "v", "o"):
                w[name] = S.truncate(w[name], ranks[i][name])
            edits[i] = w
    return edits
