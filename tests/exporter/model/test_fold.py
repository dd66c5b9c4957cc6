"""Parity, the heart of the product: HF == PyTorch reference at K=full, and ONNX Runtime == reference at every
setting, prefill and 64 greedy decode steps, batch of 2 with left padding. Tolerances: validate/tolerances.py."""
from __future__ import annotations

import pytest

from tests.helpers import load_ref, prompts
from validate.tiny_models import ARCHS, EXTRA
from validate.parity import check_hf_parity


@pytest.mark.parametrize("arch", ARCHS + EXTRA)
def test_reference_at_full_rank_reproduces_hf(arch, tiny_export):
    """Prefill of a padded batch (longer than any window), then 64 cached greedy steps, compared with HF
    recomputing the whole sequence."""
    hf, _, ref, meta = load_ref(tiny_export(arch, "full"))
    result = check_hf_parity(hf, ref, prompts(meta.sink["token_id"]), meta.pad_token_id)
    assert result.passed, result
