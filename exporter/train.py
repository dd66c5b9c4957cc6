"""Trained projectors: start from the closed-form code (output-aware PCA), then fine-tune every layer's encode
and decode matrices with the model frozen, on calibration text, against a loss that measures what the model
loses rather than what the cache loses.

Losses:
  kl              KL(original || coded) of the next-token distributions, averaged over positions (distillation)
  hidden          relative squared error of every block's input (the residual stream), the layer-output error
  reconstruction  squared error of the coded keys and values themselves. PCA is already its optimum for a
                  rank-r linear code (Eckart-Young), so training from PCA cannot lower it: kept to show that.

The coded model is the uncompressed decoder with a codec hook in each attention (attention.Attention._code):
x -> mean + decode @ encode @ (x - mean) on the same tensors the export caches, so what is trained is what is
exported. Early stopping on a held-out slice of the calibration text (the tokens after the training ones),
never the evaluation file; the best held-out state is kept. Deterministic for a seed on a given machine.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, asdict

import torch
from torch import nn
from tqdm.auto import tqdm

from .errors import UserError
from .projectors import Codec, Projectors
from .text import token_windows

LOSSES = ("kl", "hidden", "reconstruction")


@dataclass
class TrainOptions:
    loss: str = "kl"
    max_steps: int = 64
    lr: float = 3e-4             # relative: each entry moves by about lr x its matrix's starting RMS per step
    schedule: str = "constant"   # or 'cosine': the step size decays to 0 at max_steps
    window: int = 512            # tokens per training window (plus the sink)
    heldout_tokens: int = 2048   # after the calibration tokens in the same file
    eval_every: int = 8
    patience: int = 3            # held-out evaluations without improvement before stopping
    seed: int = 0
    head_decode: bool = True     # values: one decode per query head (GQA models; free in the export)
    tokens: int | None = None    # training tokens from the start of the calibration file; None: the calibration's


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, dim) -> coded x (B, T, dim), or per query head (B, T, H*d)."""
        c = (x - self.mean) @ self.w.T @ self.ue                                      # (B, T, r)
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
        w, w_inv, ue, ud, mean = (t.detach().double() for t in (self.w, self.w_inv, self.ue, self.ud, self.mean))
        if self.groups is None:
            return Codec(w_inv @ ud, mean, ue.T @ w)
        dec, _ = self._head_decodes(w_inv, ud, mean)                                  # (H, d, r)
        G = int(self.groups.max()) + 1
        shared = torch.stack([dec[self.groups == g].mean(0) for g in range(G)]).flatten(0, 1)   # (G*d, r)
        return Codec(shared, mean, ue.T @ w, head_decode=dec)


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

    def hook(self, layer: int):
        names = {self.key_tap: f"{layer}_key", "value": f"{layer}_value"}

        def code(name, x):                                                   # x (B, T, dim)
            key = names.get(name)
            if key is None or key not in self.codecs:
                return None
            coded = self.codecs[key](x)
            if self.errors is not None:          # reconstruction loss: the sink (position 0) is exact anyway
                self.errors.append((coded - self.codecs[key].layout(x))[:, 1:].pow(2).sum(-1).mean())
                return None
            return coded
        return code

    def __call__(self, ids: torch.Tensor, coded: bool = True, hidden: bool = False):
        """ids (1, T) -> logits (1, T, V), plus every block's input and the final norm's (list of (1, T, D))."""
        states = []
        hooks = [m.register_forward_pre_hook(lambda m, args: states.append(args[0]))
                 for m in (*self.decoder.blocks, self.decoder.norm)] if hidden else []
        for i, blk in enumerate(self.decoder.blocks):
            blk.attn.codec = self.hook(i) if coded else None
        try:
            logits = self.decoder(ids, torch.ones_like(ids), torch.arange(ids.shape[1])[None],
                                  *self.decoder.empty_past(1))[0]
        finally:
            for blk in self.decoder.blocks:
                blk.attn.codec = None
            for h in hooks:
                h.remove()
        return logits, states

    def projectors(self, like: Projectors, info: dict) -> Projectors:
        n = len(self.decoder.blocks)
        get = lambda i, kind: self.codecs[f"{i}_{kind}"].to_codec() if f"{i}_{kind}" in self.codecs else None
        return Projectors(like.key_mode, [get(i, "key") for i in range(n)], [get(i, "value") for i in range(n)],
                          {**like.info, **info})


def kl_loss(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """Mean over positions of KL(teacher || student); logits (1, T, V)."""
    t = torch.log_softmax(teacher_logits.float(), -1)
    s = torch.log_softmax(student_logits.float(), -1)
    return (t.exp() * (t - s)).sum(-1).mean()


def hidden_loss(teacher: list[torch.Tensor], student: list[torch.Tensor]) -> torch.Tensor:
    """Mean over blocks (after the first, whose input is the embeddings) of ||h_s - h_t||^2 / ||h_t||^2, leaving
    out the sink position (its norm is huge)."""
    terms = [(s[:, 1:] - t[:, 1:]).pow(2).sum() / t[:, 1:].pow(2).sum() for t, s in zip(teacher[1:], student[1:])]
    return torch.stack(terms).mean()


class Objective:
    """loss(ids) for the chosen kind; the teacher side is cached for the fixed held-out windows."""

    def __init__(self, model: CodedDecoder, kind: str):
        if kind not in LOSSES:
            raise UserError(f"training loss {kind!r} is unknown: use one of {', '.join(LOSSES)}")
        self.model, self.kind = model, kind
        self.cache: dict[tuple, object] = {}

    def teacher(self, ids: torch.Tensor, keep: bool):
        key = tuple(ids[0].tolist())
        if key in self.cache:
            return self.cache[key]
        with torch.no_grad():
            logits, states = self.model(ids, coded=False, hidden=self.kind == "hidden")
        out = states if self.kind == "hidden" else logits
        if keep:
            self.cache[key] = out
        return out

    def __call__(self, ids: torch.Tensor, keep_teacher: bool = False) -> torch.Tensor:
        if self.kind == "reconstruction":
            self.model.errors = []
            try:
                self.model(ids)
                return torch.stack(self.model.errors).sum()
            finally:
                self.model.errors = None
        target = self.teacher(ids, keep_teacher)
        logits, states = self.model(ids, hidden=self.kind == "hidden")
        return kl_loss(target, logits) if self.kind == "kl" else hidden_loss(target, states)


def lr_factor(o: TrainOptions):
    """step -> multiplier of the step size (LambdaLR); refuses unknown schedules."""
    if o.schedule == "constant":
        return lambda step: 1.0
    if o.schedule == "cosine":
        return lambda step: 0.5 * (1 + math.cos(math.pi * min(step, o.max_steps) / o.max_steps))
    raise UserError(f"training schedule {o.schedule!r} is unknown: use constant or cosine")


def training_windows(tokenizer, calib: str, calib_tokens: int, o: TrainOptions, sink_id: int | None):
    """(train, held-out) windows: the first o.tokens of the calibration file (default: the calibration tokens),
    then the next heldout_tokens of the same file."""
    n = o.tokens or calib_tokens
    n_train = -(-n // o.window)                                # the last may hold fewer tokens
    windows = token_windows(tokenizer, calib, o.window, n_train * o.window + o.heldout_tokens, sink_id)
    train, heldout = windows[:n_train], windows[n_train:]
    if sum(len(w) - (sink_id is not None) for w in heldout) < o.heldout_tokens:
        raise UserError(f"{calib} is too short to hold out {o.heldout_tokens} tokens after {n} training tokens: "
                        "pass a longer CALIB, or lower --train-tokens or --calib-tokens")
    return train, heldout


def heldout_loss(objective: Objective, heldout: list[list[int]]) -> float:
    with torch.no_grad():
        return sum(objective(torch.tensor([w]), keep_teacher=True).item() for w in heldout) / len(heldout)


def train_projectors(decoder, init: Projectors, key_tap: str, train: list[list[int]],
                     heldout: list[list[int]], o: TrainOptions, progress: bool = True,
                     whitening=None) -> Projectors:
    """Fine-tune `init` on the train windows; returns the projectors of the best held-out evaluation, with the
    loss curve in info['training']. whitening: as for CodedDecoder (from fit.output_whitening)."""
    torch.manual_seed(o.seed)
    for p in decoder.parameters():
        p.requires_grad_(False)
    model = CodedDecoder(decoder, init, key_tap, whitening, o.head_decode)
    objective = Objective(model, o.loss)
    groups = [{"params": [p], "lr": o.lr * p.detach().pow(2).mean().sqrt().item()}
              for p in model.codecs.parameters()]
    opt = torch.optim.Adam(groups)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(o))
    order = torch.Generator().manual_seed(o.seed)
    t0 = time.time()
    best = heldout_loss(objective, heldout)
    curve = [{"step": 0, "heldout": best, "train": None}]
    best_state, best_step, bad, running = copy.deepcopy(model.codecs.state_dict()), 0, 0, []
    bar = tqdm(range(1, o.max_steps + 1), desc=f"training projectors ({o.loss})", unit="step", disable=not progress)
    queue: list[int] = []
    for step in bar:
        if not queue:
            queue = torch.randperm(len(train), generator=order).tolist()
        loss = objective(torch.tensor([train[queue.pop()]]))                # one window a step
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        running.append(loss.item())
        if step % o.eval_every and step != o.max_steps:
            continue
        h = heldout_loss(objective, heldout)
        curve.append({"step": step, "heldout": h, "train": sum(running) / len(running)})
        running = []
        bar.set_postfix(heldout=f"{h:.4g}", best=f"{best:.4g}")
        if h < best:
            best, best_step, bad = h, step, 0
            best_state = copy.deepcopy(model.codecs.state_dict())
        else:
            bad += 1
            if bad >= o.patience:
                break
    model.codecs.load_state_dict(best_state)
    info = {"method": "trained", "init_method": init.info.get("method"),
            "training": {**asdict(o), "best_step": best_step, "steps_run": curve[-1]["step"],
                         "seconds": round(time.time() - t0, 1), "heldout_windows": len(heldout),
                         "train_windows": len(train), "curve": curve}}
    return model.projectors(init, info)
