"""The coded model: the uncompressed decoder with a codec hooked into each attention, for training and searches.

Each compressed tensor (a layer's keys or values) passes through x -> mean + decode encode (x - mean) on the
same tensors the export caches (Attention.codec, model/attention.py), so what is trained or scored here is what
is exported. TrainableCodec holds the code in whitened coordinates, where training is well-conditioned.

A codec with bits (a quantized cache) is trained through its quantizer: the forward pass rounds each latent
component as the export's static quantizer does (codec/quantizer.py; the sink at position 0 stays exact, as
its slot is in the export), and the backward pass takes the rounding as the identity (straight-through), so
encode and decode learn to live with the codes they will be stored as. Bits and steps stay fixed. With a float
window (QUANT_WINDOW=W) each query reads its last W tokens' latents unrounded, in float16 as the window keeps them
(Attention._training_window), so training spends the code on the tokens the codes serve.

Entry points: `CodedDecoder(decoder, projectors, key_tap)` (.hook(layer) for Attention.codec, .projectors()),
`TrainableCodec`.
"""
from __future__ import annotations

import torch
from torch import nn

from ..codec.linear import Codec, Projectors
from ..codec.quantizer import quantizer_for
from ..codec.scalar import rounded


class TrainableCodec(nn.Module):
    """One layer's key or value code, trained in whitened coordinates: encode = Ue^T W, decode = W^-1 Ud with W
    fixed (the output-aware whitening L^T, or I for PCA) and Ue, Ud (dim, r) the parameters. There they start
    as one orthonormal basis, every entry on one scale, which Adam's per-entry steps need: in raw
    coordinates the decode of a whitened code spans orders of magnitude and training stalls or diverges.

    With `groups` (values of a GQA model: the KV group of each query head) Ud is one (dim, r) per query head
    and the output is each head's own decode of its group's dims, (B, T, H*d): free in the export, where the
    values' decode is absorbed into o_proj head by head."""

    def __init__(self, codec: Codec, white: tuple[torch.Tensor, torch.Tensor] | None = None,
                 groups: torch.Tensor | None = None):
        super().__init__()
        W, W_inv = white if white is not None else (None, None)
        eye = torch.eye(codec.mean.shape[0], dtype=torch.float64)
        W, W_inv = (eye, eye) if W is None else (W, W_inv)
        ud = W @ codec.decode                                                        # (dim, r)
        if groups is not None:
            ud = ud.expand(len(groups), *ud.shape) if codec.head_decode is None else \
                W @ _embed_heads(codec.head_decode, groups)                            # (H, dim, r)
        self.groups = groups                                                          # (H,) or None
        self.ue = nn.Parameter((codec.encode @ W_inv).T.float().contiguous())        # (dim, r)
        self.ud = nn.Parameter(ud.float().contiguous())                              # (dim, r) or (H, dim, r)
        self.register_buffer("w", W.float())                                          # (dim, dim)
        self.register_buffer("w_inv", W_inv.float())
        self.register_buffer("mean", codec.mean.float().clone())                      # (dim,)
        self.bits, self.sigma = codec.bits, codec.sigma                               # kept for to_codec
        self.sink_exact = codec.sink is not None           # position 0 is the sink, stored exactly
        self.quantizer = quantizer_for(codec, "static", group=1)      # the export's steps (None: a float cache)

    def rounded(self, c: torch.Tensor) -> torch.Tensor:
        """The latents c (B, T, r) as the quantizer stores them, with the identity's gradient (straight-through)."""
        q = rounded(c, self.quantizer.step, self.quantizer.levels)
        if self.sink_exact:
            q = torch.cat([c[:, :1], q[:, 1:]], dim=1)
        return c + (q - c).detach()

    def in_float16(self, c: torch.Tensor) -> torch.Tensor:
        """The latents c (B, T, r) as a float window keeps them (float16; the sink's slot exact), identity gradient."""
        q = c.to(torch.float16).to(c.dtype)
        if self.sink_exact:
            q = torch.cat([c[:, :1], q[:, 1:]], dim=1)
        return c + (q - c).detach()

    def forward(self, x: torch.Tensor, rounding: bool = True) -> torch.Tensor:
        """x (B, T, dim) -> coded x (B, T, dim), or per query head (B, T, H*d); rounding=False: the latents as a
        float window holds them, in float16."""
        c = (x - self.mean) @ self.w.T @ self.ue                                      # (B, T, r)
        if self.bits is not None:
            c = self.rounded(c) if rounding else self.in_float16(c)
        if self.groups is None:
            return self.mean + c @ self.ud.T @ self.w_inv.T
        dec, mean = self._head_decodes(self.w_inv, self.ud, self.mean)                # (H, d, r), (H, d)
        return (torch.einsum("btr,hdr->bthd", c, dec) + mean).flatten(2)              # (B, T, H*d)

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, dim) laid out as forward's output: per query head (B, T, H*d) when decoding per head."""
        if self.groups is None:
            return x
        B, T, _ = x.shape
        return x.view(B, T, int(self.groups.max()) + 1, -1)[:, :, self.groups].flatten(2)

    def _head_decodes(self, w_inv, ud, mean):
        H, G = len(self.groups), int(self.groups.max()) + 1
        heads = torch.arange(H)
        dec = (w_inv @ ud).view(H, G, -1, ud.shape[-1])[heads, self.groups]          # (H, d, r)
        return dec, mean.view(G, -1)[self.groups]                                     # (H, d, r), (H, d)

    def to_codec(self) -> Codec:
        """The trained code; a quantized one keeps its bits and scales (its sink latent is the caller's: the
        encode changed)."""
        w, w_inv, ue, ud, mean = (t.detach().double() for t in (self.w, self.w_inv, self.ue, self.ud, self.mean))
        if self.groups is None:
            return Codec(w_inv @ ud, mean, ue.T @ w, bits=self.bits, sigma=self.sigma)
        dec, _ = self._head_decodes(w_inv, ud, mean)                                  # (H, d, r)
        G = int(self.groups.max()) + 1
        shared = torch.stack([dec[self.groups == g].mean(0) for g in range(G)]).flatten(0, 1)   # (G*d, r)
        return Codec(shared, mean, ue.T @ w, head_decode=dec, bits=self.bits, sigma=self.sigma)


def _embed_heads(head_decode: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """(H, d, r) per-head decodes -> (H, G*d, r), each in its group's rows, zeros elsewhere."""
    H, d, r = head_decode.shape
    full = head_decode.new_zeros(H, int(groups.max()) + 1, d, r)
    full[torch.arange(H), groups] = head_decode
    return full.flatten(1, 2)


class CodedDecoder:
    """The uncompressed decoder, with codecs hooked in where the projectors say (or not: the teacher)."""

    def __init__(self, decoder, proj: Projectors, key_tap: str, whitening=None, head_decode: bool = False):
        """whitening(layer, kind) -> (W, W^-1) or None: the coordinates training works in (TrainableCodec).
        head_decode: values decoded per query head (GQA models; always when the projectors carry them)."""
        self.decoder = decoder
        self.key_tap = key_tap
        self.codecs = nn.ModuleDict()
        for i, blk in enumerate(decoder.blocks):
            H, G = blk.attn.H, blk.attn.G
            for kind, c in (("key", proj.key(i)), ("value", proj.value(i))):
                if c is None:
                    continue
                per_head = kind == "value" and H != G and (head_decode or c.head_decode is not None)
                groups = torch.arange(H) // (H // G) if per_head else None
                self.codecs[f"{i}_{kind}"] = TrainableCodec(c, whitening(i, kind) if whitening else None, groups)
        self.errors: list[torch.Tensor] | None = None   # set: observe only and collect squared errors
        # a quantized export's float window: its layers read each query's last W tokens exact (model/attention.py)
        window = proj.info.get("quant", {}).get("float_window", 0)
        self.float_windows = {i: window for i in range(len(decoder.blocks))
                              if all(c.bits is not None for k, c in self.codecs.items() if k.startswith(f"{i}_"))}

    def hook(self, layer: int):
        names = {self.key_tap: f"{layer}_key", "value": f"{layer}_value"}

        def code(name, x, rounding=True):                                    # x (B, T, dim)
            key = names.get(name)
            if key is None or key not in self.codecs:
                return None
            coded = self.codecs[key](x, rounding)
            if self.errors is not None and rounding:   # reconstruction loss: the sink (position 0) is exact anyway
                self.errors.append((coded - self.codecs[key].layout(x))[:, 1:].pow(2).sum(-1).mean())
                return None
            return coded
        return code

    def __call__(self, ids: torch.Tensor, coded: bool = True, hidden: bool = False):
        """ids (1, T) -> logits (1, T, V), plus every block's input and the final norm's (list of (1, T, D))."""
        states = []
        hooks = [m.register_forward_pre_hook(lambda m, args: states.append(args[0]))
                 for m in (*self.decoder.blocks, self.decoder.norm)] if hidden else []
        windows = [blk.attn.float_window for blk in self.decoder.blocks]
        for i, blk in enumerate(self.decoder.blocks):
            blk.attn.codec = self.hook(i) if coded else None
            blk.attn.float_window = self.float_windows.get(i, 0) if coded else windows[i]
        try:
            logits = self.decoder(ids, torch.ones_like(ids), torch.arange(ids.shape[1])[None],
                                  *self.decoder.empty_past(1))[0]
        finally:
            for blk, window in zip(self.decoder.blocks, windows):
                blk.attn.codec = None
                blk.attn.float_window = window
            for h in hooks:
                h.remove()
        return logits, states

    def projectors(self, like: Projectors, info: dict) -> Projectors:
        n = len(self.decoder.blocks)
        get = lambda i, kind: self.codecs[f"{i}_{kind}"].to_codec() if f"{i}_{kind}" in self.codecs else None
        return Projectors(like.key_mode, [get(i, "key") for i in range(n)], [get(i, "value") for i in range(n)],
                          {**like.info, **info})
