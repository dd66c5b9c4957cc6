"""benchmarks/scale_plan.py: the formulas give the published parameter counts, and the plan adds up."""
from __future__ import annotations

import pytest

from benchmarks.scale_plan import PUBLISHED, layer_params, measured_rate, plan, sizes


@pytest.mark.parametrize("name, total, active", [("TinyLlama-1.1B", 1.10e9, None), ("Llama-2-7B", 6.74e9, None),
                                                 ("Llama-3.1-70B", 70.6e9, None),
                                                 ("GLM-4.5-355B-A32B", 355e9, 32e9)])   # published figures
def test_parameter_counts_are_the_published_ones(name, total, active):
    s = sizes(PUBLISHED[name])
    assert s["params"] == pytest.approx(total, rel=0.01)
    if active:          # a mixture of experts: a token runs 8 routed + 1 shared expert of each MoE layer
        assert s["active_layer_params"] == pytest.approx(active, rel=0.01)


def test_the_plan_of_a_dense_model():
    c = PUBLISHED["TinyLlama-1.1B"]
    s = sizes(c)
    assert layer_params(c)[1:] == (0, 0, 0) and s["active_layer_params"] == 22 * layer_params(c)[0]
    p = plan(s, 2048, measured_rate())
    assert p["hours"] * 3600 == pytest.approx(60.6)        # the measured run the default rate comes from
    assert p["hidden_gib"] == 2048 * 2048 * 4 / 2 ** 30
    assert p["onnx_fp32_gib"] == pytest.approx(2 * p["onnx_fp16_gib"])
