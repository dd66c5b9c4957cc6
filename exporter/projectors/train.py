"""Trained projectors: start from the closed-form code (output-aware PCA), then fine-tune every layer's encode
and decode matrices with the model frozen, on calibration text, against a loss that measures what the model
loses rather than what the cache loses.

Losses:
  kl              KL(original || coded) of the next-token distributions, averaged over positions (distillation)
  hidden          relative squared error of every block's input (the residual stream), the layer-output error
  reconstruction  squared error of the coded keys and values themselves. PCA is already its optimum for a
                  rank-r linear code (Eckart-Young), so training from PCA cannot lower it: kept to show that.

The coded model (projectors/coded.py) is the uncompressed decoder with a codec hook in each attention, on the
same tensors the export caches, so what is trained is what is exported. Early stopping on a held-out slice of
the calibration text (the tokens after the training ones, calib/text.training_windows), never the evaluation
file; the best held-out state is kept. Deterministic for a seed on a given machine.

Entry point: `train_projectors(decoder, init, key_tap, train, heldout, options, whitening=...)`.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict

import torch
from tqdm.auto import tqdm

from ..codec.linear import Projectors
from ..errors import UserError
from ..eval.perplexity import kl_rows
from ..options import LOSSES, TrainOptions
from .coded import CodedDecoder


def kl_loss(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """Mean over positions of KL(teacher || student); logits (1, T, V)."""
    t = torch.log_softmax(teacher_logits.float(), -1)
    s = torch.log_softmax(student_logits.float(), -1)
    return kl_rows(t, s).mean()


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
            "training": {**asdict(o), "through_quantizer": any(c.bits is not None for c in model.codecs.values()),
                         "float_window": max(model.float_windows.values(), default=0),
                         "best_step": best_step, "steps_run": curve[-1]["step"],
                         "seconds": round(time.time() - t0, 1), "heldout_windows": len(heldout),
                         "train_windows": len(train), "curve": curve}}
    return model.projectors(init, info)
