"""Parity, the heart of the product: HF == PyTorch reference at K=full, and ONNX Runtime == reference at every
setting, prefill and 64 greedy decode steps, batch of 2 with left padding. Tolerances: validate/tolerances.py."""
from __future__ import annotations

import pytest
import torch

from runtime.forward import position_ids
from runtime.prompts import left_pad
from tests.helpers import load_ref, prompts
from tests.tiny_models import ARCHS
from validate.tolerances import HF_LOGIT_RTOL, within


@pytest.mark.parametrize("arch", ARCHS + ("phi4",))
def test_reference_at_full_rank_reproduces_hf(arch, tiny_export):
    """Prefill of a padded batch, then 16 cached greedy steps compared with HF recomputing the whole sequence."""
    hf, _, ref, meta = load_ref(tiny_export(arch, "full"))
    ids, mask = left_pad(prompts(meta.sink["token_id"]), meta.pad_token_id)
    ids, mask = torch.from_numpy(ids), torch.from_numpy(mask)
    past = ref.empty_past(2)
    with torch.no_grad():
        for _ in range(16):
            new = ids if past[0].shape[2] == 0 else ids[:, -1:]            # prefill, then one token a step
            pos = torch.from_numpy(position_ids(mask.numpy(), new.shape[1]))
            out = ref(new, mask, pos, *past)
            past = list(out[1:])
            ids = torch.cat([ids, out[0][:, -1].argmax(-1, keepdim=True)], 1)
            mask = torch.cat([mask, torch.ones(2, 1, dtype=mask.dtype)], 1)
        full_pos = torch.from_numpy(position_ids(mask.numpy(), ids.shape[1]))
        hf_logits = hf(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=full_pos[:, :-1]).logits
        ref_logits = ref(ids[:, :-1], mask[:, :-1], full_pos[:, :-1], *ref.empty_past(2))[0]
        hf_next = hf_logits[:, -16:].argmax(-1)                             # predicts the 16 generated
    valid = mask[:, :-1].bool()
    diff = (hf_logits - ref_logits).abs()[valid].max().item()
    assert within(diff, hf_logits.abs()[valid].max().item(), HF_LOGIT_RTOL), diff
    assert torch.equal(hf_next, ids[:, -16:]), "cached greedy tokens differ from HF's"
