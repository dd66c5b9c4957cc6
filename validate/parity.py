"""Parity: ONNX Runtime against the PyTorch reference decoder, prefill then greedy decode, batch with padding."""
from __future__ import annotations

from dataclasses import dataclass, asdict

import numpy as np
import torch

from runtime.forward import position_ids
from runtime.prompts import left_pad

from .tolerances import GREEDY_STEPS, LOGIT_RTOL, within


@dataclass
class ParityResult:
    prefill_max_abs_diff: float
    decode_max_abs_diff: float
    max_abs_ref_logit: float
    rel_diff: float            # max abs diff / max |ref logit|, over prefill and decode
    tolerance: float
    greedy_identical: bool
    decode_steps: int
    batch: int
    prompt_lengths: list

    @property
    def passed(self) -> bool:
        return self.greedy_identical and within(max(self.prefill_max_abs_diff, self.decode_max_abs_diff),
                                                self.max_abs_ref_logit, self.tolerance)

    def to_json(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def parity_prompts(tokenizer, sink: int | None, length: int, eval_file: str) -> list[list[int]]:
    """Two prompts from the text (not the scored windows' order), the second shorter so the batch is padded."""
    ids = tokenizer(open(eval_file, encoding="utf-8").read()[:200_000], add_special_tokens=False)["input_ids"]
    prefix = [] if sink is None else [sink]
    return [prefix + ids[-length:], prefix + ids[-2 * length:-length][: max(2, length * 3 // 4)]]


def check_parity(reference, ort_model, prompts: list[list[int]], pad_id: int,
                 steps: int = GREEDY_STEPS, rtol: float = LOGIT_RTOL) -> ParityResult:
    """Run both sides on the same left-padded batch: prefill, then `steps` greedy steps in which each side
    feeds its own argmax. Logit differences are taken where the reference's tokens are still shared."""
    ids, mask = left_pad(prompts, pad_id)
    valid = mask.astype(bool)
    pos = position_ids(mask, ids.shape[1])
    B = len(prompts)
    with torch.no_grad():
        out = reference(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(pos),
                        *reference.empty_past(B))
    ref_logits, ref_past = out[0].numpy(), list(out[1:])
    ort_logits, ort_past = ort_model(ids, mask, pos, ort_model.empty_past(B))
    prefill_diff = float(np.abs(ref_logits - ort_logits)[valid].max())
    max_ref = float(np.abs(ref_logits[valid]).max())
    decode_diff, identical = 0.0, True
    ref_tok, ort_tok = ref_logits[:, -1].argmax(-1), ort_logits[:, -1].argmax(-1)
    for _ in range(steps):
        identical &= bool((ref_tok == ort_tok).all())
        mask = np.concatenate([mask, np.ones((B, 1), np.int64)], axis=1)
        pos = position_ids(mask, 1)
        with torch.no_grad():
            out = reference(torch.from_numpy(ref_tok[:, None]), torch.from_numpy(mask), torch.from_numpy(pos),
                            *ref_past)
        r, ref_past = out[0].numpy(), list(out[1:])
        o, ort_past = ort_model(ort_tok[:, None], mask, pos, ort_past)
        decode_diff = max(decode_diff, float(np.abs(r - o).max()))
        max_ref = max(max_ref, float(np.abs(r).max()))
        ref_tok, ort_tok = r[:, -1].argmax(-1), o[:, -1].argmax(-1)
    rel = max(prefill_diff, decode_diff) / max_ref
    return ParityResult(prefill_diff, decode_diff, max_ref, rel, rtol, identical, steps, B,
                        [len(p) for p in prompts])
