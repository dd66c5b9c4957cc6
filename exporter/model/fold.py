"""Build the compact decoder from HF weights, folding projectors into the attention weights.

All folding is done in float64 and cast once, so K=full is bit-faithful and small K adds no rounding of its own.

Entry point: `build_decoder(hf, projectors=None)`.
"""
from __future__ import annotations

from dataclasses import replace

import torch

from ..codec.linear import Projectors
from ..codec.quantizer import quantizer_for
from .attention import Attention
from .config import DecoderConfig, from_hf
from .decoder import Block, Decoder
from .layers import RMSNorm
from .rope import local_rope_of, rope_of
from .weights import attention_weights, hf_layers, mlp_weights


def _set(linear, weight, bias=None):
    with torch.no_grad():
        linear.weight.copy_(weight.float())
        if linear.bias is not None:
            linear.bias.copy_((bias if bias is not None else torch.zeros(weight.shape[0], dtype=weight.dtype)).float())


def build_attention(hf, cfg: DecoderConfig, i: int, proj: Projectors | None) -> Attention:
    w = attention_weights(hf, cfg, i)
    key = proj.key(i) if proj else None        # Codec (decode (G*d, r), mean, encode (r, G*d)) in float64, or None
    value = proj.value(i) if proj else None
    mode = proj.key_mode if proj else "full"
    if not cfg.rope_on(i):          # a NoPE layer's keys are the same before and after: score them in k-space
        mode = "post-rope"
    attn = Attention(cfg, mode, key.rank if key else None, value.rank if value else None, rope=cfg.rope_on(i),
                     window=cfg.window(i))
    if cfg.qk_norm:
        a = hf_layers(hf)[i].self_attn
        _copy_norm(attn.q_norm, a.q_norm)
        _copy_norm(attn.k_norm, a.k_norm)
    _set(attn.q_proj, w["q"], w["q_b"])
    k_b = w["k_b"] if w["k_b"] is not None else torch.zeros(cfg.kv_dim, dtype=torch.float64)
    if key is None:
        _set(attn.k_proj, w["k"], w["k_b"])
    elif attn.key_mode == "pre-rope":
        enc, dec, mean = key.encode, key.decode, key.mean
        if attn.k_norm is None:
            _set(attn.k_proj, enc @ w["k"], enc @ (k_b - mean))         # x -> c directly
        else:                                                           # x -> k -> k_norm -> c
            _set(attn.k_proj, w["k"], w["k_b"])
            _set(attn.key_encode, enc, -(enc @ mean))
        _set(attn.key_decode, dec, mean)                                # c -> k
    else:  # post-rope: project rotated keys; queries meet them in k-space
        enc, dec, mean = key.encode, key.decode, key.mean
        _set(attn.k_proj, w["k"], w["k_b"])
        _set(attn.key_encode, enc, -(enc @ mean))
        per_head = dec.view(cfg.num_kv_heads, cfg.head_dim, -1)          # (G, d, r)
        group = torch.arange(cfg.num_heads) // (cfg.num_heads // cfg.num_kv_heads)
        with torch.no_grad():
            attn.query_basis.copy_(per_head[group].float())              # (H, d, r)
    o_b = w["o_b"] if w["o_b"] is not None else torch.zeros(cfg.hidden_size, dtype=torch.float64)
    cache_quant = proj.cache_quant if proj else None
    rotation = cache_quant.rotation_matrix(cfg.head_dim) if cache_quant else None      # (d, d) or None
    if value is None and rotation is not None:       # values rotated per KV head: R into v_proj, R^T into o_proj
        per_kv = torch.block_diag(*[rotation] * cfg.num_kv_heads)                      # (G*d, G*d)
        per_q = torch.block_diag(*[rotation.T] * cfg.num_heads)                        # (H*d, H*d)
        _set(attn.v_proj, per_kv @ w["v"], per_kv @ w["v_b"] if w["v_b"] is not None else None)
        _set(attn.o_proj, w["o"] @ per_q, w["o_b"])
    elif value is None:
        _set(attn.v_proj, w["v"], w["v_b"])
        _set(attn.o_proj, w["o"], w["o_b"])
    else:
        enc, dec, mean = value.encode, value.decode, value.mean
        v_b = w["v_b"] if w["v_b"] is not None else torch.zeros(cfg.kv_dim, dtype=torch.float64)
        _set(attn.v_proj, enc @ w["v"], enc @ (v_b - mean))
        H, G, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        group = torch.arange(H) // (H // G)
        per_head = dec.view(G, d, -1)[group] if value.head_decode is None else value.head_decode   # (H, d, r)
        W_o = w["o"].view(cfg.hidden_size, H, d)                         # (D, H, d)
        absorbed = torch.einsum("Dhd,hdr->Dhr", W_o, per_head).reshape(cfg.hidden_size, -1)   # (D, H*r)
        mean_per_head = mean.view(G, d)[group].reshape(-1)               # (H*d,)
        _set(attn.o_proj, absorbed, o_b + w["o"] @ mean_per_head)
    if cache_quant:   # the fused op's int8 cache: rotated queries and keys, static per-channel steps
        attn.use_cache_quant(rotation, cache_quant.key_scales[i], cache_quant.value_scales[i])
    quant = proj.info.get("quant") if proj else None
    if quant:      # a quantized cache: codes of the latents, packed (quant.py)
        attn.key_quant = quantizer_for(key, quant["scales"]["key"], quant["group"])
        attn.value_quant = quantizer_for(value, quant["scales"]["value"], quant["group"])
        attn.float_window = quant.get("float_window", 0)     # exact latents of the newest tokens beside the codes
    return attn


def _copy_norm(dst, src):
    """A norm's weights; Gemma's RMSNorm scales by 1 + w (computed in float32, as HF does), ours by its weight."""
    with torch.no_grad():
        dst.weight.copy_(src.weight.float() + 1.0 if type(src).__name__ in PLUS_ONE_NORMS else src.weight)
        if getattr(dst, "bias", None) is not None:
            dst.bias.copy_(src.bias)


PLUS_ONE_NORMS = ("Gemma3RMSNorm",)


def build_block(hf, cfg: DecoderConfig, i: int, proj: Projectors | None = None) -> Block:
    """Block i with HF's weights of layer i (only that layer's are read: model/stream.py builds one at a time)."""
    attn = build_attention(hf, cfg, i, proj)
    layer = hf_layers(hf)[i]
    if cfg.family == "gpt2":
        blk = Block(cfg, attn, layer.mlp.c_fc.weight.shape[1])
        with torch.no_grad():
            _copy_norm(blk.norm1, layer.ln_1)
            _copy_norm(blk.norm2, layer.ln_2)
            _set(blk.mlp.fc, layer.mlp.c_fc.weight.T, layer.mlp.c_fc.bias)
            _set(blk.mlp.proj, layer.mlp.c_proj.weight.T, layer.mlp.c_proj.bias)
        return blk
    mlp = mlp_weights(layer)
    blk = Block(cfg, attn, mlp["gate_proj"].shape[0])
    with torch.no_grad():
        _copy_norm(blk.norm1, layer.input_layernorm)
        if cfg.sandwich_norms:     # Gemma 3: post_attention_layernorm norms attention's output
            _copy_norm(blk.post_attn_norm, layer.post_attention_layernorm)
            _copy_norm(blk.norm2, layer.pre_feedforward_layernorm)
            _copy_norm(blk.post_mlp_norm, layer.post_feedforward_layernorm)
        else:
            _copy_norm(blk.norm2, layer.post_attention_layernorm)
        for name, weight in mlp.items():
            getattr(blk.mlp, name).weight.copy_(weight)
    return blk


def decoder_shell(hf, cfg: DecoderConfig, blocks: list[Block], head: bool = True) -> Decoder:
    """The decoder around `blocks`: embeddings, positions, RoPE, final norm and head from HF's weights.
    head=False: a shell that only embeds (model/stream.py's passes), without the head's (D, V) matrix."""
    dec = Decoder(cfg if head else replace(cfg, tie_embeddings=True), blocks, rope_of(hf), local_rope_of(hf))
    with torch.no_grad():
        if cfg.family == "gpt2":
            dec.pos_embed.weight.copy_(hf.transformer.wpe.weight)
        dec.embeddings.table_t.copy_(hf.get_input_embeddings().weight.T)
        if head and not cfg.tie_embeddings:
            dec.embeddings.head_t.copy_(hf.get_output_embeddings().weight.T)
        if head:
            _copy_norm(dec.norm, hf_final_norm(hf, cfg))
    return dec


def final_norm(hf, cfg: DecoderConfig):
    """Our copy of HF's norm after the last layer."""
    norm = RMSNorm(cfg.hidden_size, cfg.norm_eps) if cfg.family == "llama" else \
        torch.nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps)
    _copy_norm(norm, hf_final_norm(hf, cfg))
    return norm


def hf_final_norm(hf, cfg: DecoderConfig):
    return hf.transformer.ln_f if cfg.family == "gpt2" else hf.model.norm


def build_decoder(hf, proj: Projectors | None = None) -> Decoder:
    """The compact decoder with HF's weights; with projectors, a compressed cache as they say."""
    cfg = from_hf(hf.config)
    if proj is not None:
        proj.check_compatible(cfg)
    dec = decoder_shell(hf, cfg, [build_block(hf, cfg, i, proj) for i in range(cfg.num_layers)])
    if proj is not None and proj.cache_quant is not None:
        dec.use_fused_attention()      # an int8 cache exists only inside the fused op: the reference runs it too
    return dec.eval()
