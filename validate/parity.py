"""Parity: ONNX Runtime against the PyTorch reference decoder, prefill then greedy decode, batch with padding."""
from __future__ import annotations

import copy
from dataclasses import dataclass, asdict

import numpy as np
import torch

from exporter.calib.text import read_text
from runtime.forward import position_ids
from runtime.prompts import left_pad

from .tolerances import GREEDY_STEPS, greedy_required, logit_rtol, quantized_kl_ok, within


@dataclass
class ParityResult:
    prefill_max_abs_diff: float
    decode_max_abs_diff: float
    max_abs_ref_logit: float
    rel_diff: float            # max abs diff / max |ref logit|, over prefill and decode
    tolerance: float
    greedy_identical: bool     # ORT's argmax == the reference's at the prefill and every decode step
    greedy_agreement: int      # steps (of decode_steps + 1) at which they agree for every sequence
    greedy_required: bool      # float32: identical tokens are part of passing; float16: reported only
    decode_steps: int
    batch: int
    prompt_lengths: list
    kl_mean: float = 0.0       # mean KL(reference || ORT) of the next-token distributions, nats, all positions
    quantized: bool = False    # a quantized cache: held by quantized_kl_ok (tolerances.py) instead of the logits
    kl_cost: float | None = None   # quantized: mean KL(original model || reference) on the prefill, what the
                                   # compression itself changes
    kl_floor: float | None = None  # quantized: mean KL(reference || the reference in float64) on the same
                                   # steps, what float32 rounding alone changes

    @property
    def passed(self) -> bool:
        if self.quantized:
            return quantized_kl_ok(self.kl_mean, self.kl_cost, self.kl_floor)
        logits_ok = within(max(self.prefill_max_abs_diff, self.decode_max_abs_diff), self.max_abs_ref_logit,
                           self.tolerance)
        return logits_ok and (self.greedy_identical or not self.greedy_required)

    def to_json(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def parity_prompts(tokenizer, sink: int | None, length: int, eval_file: str,
                   padded: bool = True) -> list[list[int]]:
    """Two prompts from the text (not the scored windows' order), the second shorter so the batch is padded;
    padded=False gives two of one length (shared-buffer exports take no left padding)."""
    ids = tokenizer(read_text(eval_file)[:200_000], add_special_tokens=False)["input_ids"]
    prefix = [] if sink is None else [sink]
    second = ids[-2 * length:-length]
    return [prefix + ids[-length:], prefix + (second[: max(2, length * 3 // 4)] if padded else second)]


def check_parity(reference, ort_model, prompts: list[list[int]], pad_id: int,
                 steps: int = GREEDY_STEPS, rtol: float | None = None, original=None) -> ParityResult:
    """Run both sides on the same left-padded batch: prefill, then `steps` greedy steps in which both are fed
    the reference's argmax (so logits compare on the same inputs even after a near-tie flips ORT's argmax),
    counting the steps where ORT's argmax agrees. rtol and whether identical greedy tokens are required
    follow the export's dtype (validate/tolerances.py) unless rtol is given; a quantized cache is held to the
    mean KL between the two instead, next to what the compression changes: original(ids, mask, pos) -> the
    uncompressed model's logits (numpy), required then, and to what float32 rounding alone changes: the same
    steps of the reference in float64 (quantized_kl_ok says why)."""
    dtype = ort_model.layout.dtype
    rtol = logit_rtol(dtype) if rtol is None else rtol
    ids, mask = left_pad(prompts, pad_id)
    valid = mask.astype(bool)
    ref_calls, fed = follow(TorchSide(reference), ids, mask, steps)
    ort_calls, _ = follow(ort_model, ids, mask, steps, feed=fed)
    prefill_diff = float(np.abs(ref_calls[0] - ort_calls[0])[valid].max())
    decode_diff = max([float(np.abs(r - o).max()) for r, o in zip(ref_calls[1:], ort_calls[1:])], default=0.0)
    max_ref = max([float(np.abs(ref_calls[0][valid]).max())] + [float(np.abs(r).max()) for r in ref_calls[1:]])
    agree = sum(bool((r[:, -1].argmax(-1) == o[:, -1].argmax(-1)).all()) for r, o in zip(ref_calls, ort_calls))
    quantized, cost, floor = ort_model.layout.quantized, None, None
    if quantized:
        if original is None:
            raise ValueError("a quantized export's parity needs the original model's logits (original=...)")
        cost = mean_kl(original(ids, mask, position_ids(mask, ids.shape[1])), ref_calls[0], valid)
        exact_calls, _ = follow(TorchSide(copy.deepcopy(reference).double()), ids, mask, steps, feed=fed)
        floor = steps_kl(ref_calls, exact_calls, valid)
    rel = max(prefill_diff, decode_diff) / max_ref
    return ParityResult(prefill_diff, decode_diff, max_ref, rel, rtol, agree == steps + 1, agree,
                        greedy_required(dtype) and not quantized, steps, len(prompts), [len(p) for p in prompts],
                        steps_kl(ref_calls, ort_calls, valid), quantized, cost, floor)


class TorchSide:
    """A PyTorch decoder called as an OrtModel is: numpy (ids, mask, pos, past) -> (logits float32, past)."""

    def __init__(self, module):
        self.module = module

    def empty_past(self, batch: int):
        return self.module.empty_past(batch)

    def __call__(self, ids, mask, pos, past):
        with torch.no_grad():
            out = self.module(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(pos), *past)
        return out[0].float().numpy(), list(out[1:])


def follow(side, ids: np.ndarray, mask: np.ndarray, steps: int, feed=None) -> tuple[list, list]:
    """The prefill's logits (B, T, V), then `steps` one-token steps' (B, 1, V), each step fed the token of `feed`
    (or the side's own argmax): (the logits of every call, the tokens fed)."""
    B = ids.shape[0]
    logits, past = side(ids, mask, position_ids(mask, ids.shape[1]), side.empty_past(B))
    calls, fed = [logits], []
    for step in range(steps):
        token = feed[step] if feed is not None else logits[:, -1].argmax(-1)        # (B,)
        mask = np.concatenate([mask, np.ones((B, 1), np.int64)], axis=1)
        logits, past = side(token[:, None], mask, position_ids(mask, 1), past)
        calls.append(logits)
        fed.append(token)
    return calls, fed


def steps_kl(ref_calls: list, other_calls: list, valid: np.ndarray) -> float:
    """Mean KL(reference || other) over the prefill's valid positions and every step's (weighted by positions)."""
    kls = [mean_kl(ref_calls[0], other_calls[0], valid)]
    kls += [mean_kl(r, o) for r, o in zip(ref_calls[1:], other_calls[1:])]
    weights = [int(valid.sum())] + [valid.shape[0]] * (len(ref_calls) - 1)
    return float(np.dot(kls, weights) / sum(weights))


def hf_original(hf):
    """original(ids, mask, pos) for check_parity: the HF model's logits on a padded batch, numpy."""
    def logits(ids, mask, pos):
        with torch.no_grad():
            return hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                      position_ids=torch.from_numpy(pos)).logits.float().numpy()
    return logits


def mean_kl(ref_logits: np.ndarray, ort_logits: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Mean KL(reference || ORT) over positions (B, T, V) logits, those where valid (B, T) is true."""
    r = torch.log_softmax(torch.from_numpy(ref_logits).double(), -1)
    o = torch.log_softmax(torch.from_numpy(ort_logits).double(), -1)
    kl = (r.exp() * (r - o)).sum(-1).numpy()                                # (B, T)
    return float(kl[valid].mean() if valid is not None else kl.mean())


@dataclass
class HfParity:
    """The reference decoder at K=full against the HF model: cached greedy steps against HF recomputing."""
    rel_diff: float            # max |HF logit - reference logit| / max |HF logit|, every valid position
    greedy_identical: bool     # the reference's cached greedy tokens are HF's argmax at every step
    steps: int

    @property
    def passed(self) -> bool:
        from .tolerances import HF_LOGIT_RTOL
        return self.rel_diff <= HF_LOGIT_RTOL and self.greedy_identical


def check_hf_parity(hf, reference, prompts: list[list[int]], pad_id: int, steps: int = GREEDY_STEPS) -> HfParity:
    """Prefill of a left-padded batch, then `steps` cached greedy steps of the reference; HF then recomputes the
    whole sequence without a cache, and its logits and argmax must be the reference's (also recomputed)."""
    ids, mask = left_pad(prompts, pad_id)
    ids, mask = torch.from_numpy(ids), torch.from_numpy(mask)
    B = ids.shape[0]
    past = reference.empty_past(B)
    with torch.no_grad():
        for step in range(steps):
            new = ids if step == 0 else ids[:, -1:]                         # prefill, then one token a step
            pos = torch.from_numpy(position_ids(mask.numpy(), new.shape[1]))
            out = reference(new, mask, pos, *past)
            past = list(out[1:])
            ids = torch.cat([ids, out[0][:, -1].argmax(-1, keepdim=True)], 1)
            mask = torch.cat([mask, torch.ones(B, 1, dtype=mask.dtype)], 1)
        full_pos = torch.from_numpy(position_ids(mask.numpy(), ids.shape[1]))
        hf_logits = hf(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=full_pos[:, :-1]).logits
        ref_logits = reference(ids[:, :-1], mask[:, :-1], full_pos[:, :-1], *reference.empty_past(B))[0]
    valid = mask[:, :-1].bool()
    diff = (hf_logits - ref_logits).abs()[valid].max().item()
    rel = diff / hf_logits.abs()[valid].max().item()
    return HfParity(rel, torch.equal(hf_logits[:, -steps:].argmax(-1), ids[:, -steps:]), steps)
