"""Per-layer ranks (exporter/ranks.py) and K=auto (exporter/auto.py)."""
from __future__ import annotations

import json
import os

import pytest

from exporter.options import AutoOptions


def test_auto_budget_export_has_per_layer_ranks_and_passes_parity(tiny_export):
    import numpy as np
    from tests.helpers import load_ref
    from tests.helpers import prompts
    from validate.ort_model import OrtModel
    from validate.parity import check_parity
    out = tiny_export("llama", "auto", auto=AutoOptions(budget_bytes=40 * 4, probe_tokens=256, heldout_tokens=2048))
    _, _, ref, meta = load_ref(out)
    dims = [r or 32 for r in meta.ranks["key"] + meta.ranks["value"]]
    assert sum(dims) <= 40 and all(d % 8 == 0 for d in dims)
    assert meta.kv_bytes_per_token == 4 * sum(dims)
    ort = OrtModel(out, meta)
    result = check_parity(ref, ort, prompts(meta.sink["token_id"]), meta.pad_token_id)
    assert result.passed, result.to_json()
    ids = np.array([prompts(meta.sink["token_id"], (20,))[0]], np.int64)
    T = ids.shape[1]
    _, present = ort(ids, np.ones_like(ids), np.arange(T)[None], ort.empty_past(1))
    assert sum(p.nbytes for p in present) == T * meta.kv_bytes_per_token         # what the graph returns
    info = json.load(open(os.path.join(out, "projectors.json")))["auto"]
    assert info["choice"]["dims"] == sum(dims) and info["uniform_pca_reference"] is not None


def test_auto_quality_budget_is_met_on_heldout_with_no_more_dims_than_uniform_pca(tiny_export):
    out = tiny_export("llama", "auto", auto=AutoOptions(max_ppl_increase=5.0, probe_tokens=256,
                                                        heldout_tokens=4096))
    info = json.load(open(os.path.join(out, "projectors.json")))["auto"]
    assert info["choice"]["ppl_increase"] <= info["choice"]["ppl_bound"] <= 5.0
    ref = info["uniform_pca_reference"]
    if ref is not None:
        assert info["choice"]["dims"] <= ref["dims"]


def test_margin_adds_standard_errors_of_the_per_window_increase():
    import math
    from exporter.ranks.auto import increase_with_margin
    base = [(100.0, 50), (200.0, 100), (150.0, 50)]
    coded = [(101.0, 50), (206.0, 100), (151.0, 50)]            # per token +0.02, +0.06, +0.02
    inc, bound = increase_with_margin(base, coded, 0.0)
    assert inc == bound == pytest.approx(100 * math.expm1(8.0 / 200))      # token-weighted, not window-weighted
    d = [0.02, 0.06, 0.02]
    se = (sum((x - sum(d) / 3) ** 2 for x in d) / 2 / 3) ** 0.5
    assert increase_with_margin(base, coded, 2.0)[1] == pytest.approx(100 * math.expm1(0.04 + 2 * se))


def test_auto_and_training_fit_a_model_with_few_positions(tiny_export):
    """Tiny GPT-2 has 512 learned positions: held-out windows of 2048 and training windows of 512 plus the sink
    must shrink to fit rather than index past the position table."""
    from exporter.options import TrainOptions
    out = tiny_export("gpt2", "auto", auto=AutoOptions(budget_bytes=100 * 4, probe_tokens=256, heldout_tokens=2048))
    info = json.load(open(os.path.join(out, "projectors.json")))["auto"]
    assert info["choice"]["dims"] <= 100
    out = tiny_export("gpt2", 16, method="trained", train=TrainOptions(max_steps=2, eval_every=2))
    assert json.load(open(os.path.join(out, "projectors.json")))["training"]["window"] == 511


@pytest.mark.parametrize("arch", ["qwen3", "phi3", "smollm3", "gemma3"])
def test_auto_ranks_and_trained_projectors_on_the_newer_families(arch, tiny_export):
    """K=auto's probes and the training loop run through k_norm (qwen3), LongRoPE (phi3) and NoPE layers
    (smollm3); the exports they choose pass parity."""
    from exporter.options import TrainOptions
    from tests.helpers import load_ref, prompts
    from validate.ort_model import OrtModel
    from validate.parity import check_parity
    for out in (tiny_export(arch, "auto", auto=AutoOptions(budget_bytes=48 * 4, probe_tokens=256,
                                                           heldout_tokens=2048)),
                tiny_export(arch, 8, method="trained", train=TrainOptions(max_steps=2, eval_every=2))):
        _, _, ref, meta = load_ref(out)
        result = check_parity(ref, OrtModel(out, meta), prompts(meta.sink["token_id"]), meta.pad_token_id)
        assert result.passed and result.greedy_identical, result.to_json()
