"""Parity, the heart of the product: HF == PyTorch reference at K=full, and ONNX Runtime == reference at every
setting, prefill and 64 greedy decode steps, batch of 2 with left padding. Tolerances: validate/tolerances.py."""
from __future__ import annotations

import numpy as np
import pytest

from graphs.metadata import load_metadata
from tests.helpers import assert_sink_exact_rest_changed, load_ref, prompts, reference_greedy
from validate.tiny_models import ARCHS, EXTRA
from validate.ort_model import OrtModel
from exporter.options import QuantOptions
from validate.parity import check_parity, hf_original
from validate.tolerances import ROUNDING_FLOOR_FACTOR, quantized_kl_ok, within


CASES = [(arch, k, mode) for arch in ARCHS + EXTRA if arch != "gpt2" for k, mode in
         (("full", "pre-rope"), (8, "pre-rope"), (8, "post-rope"))] + [("gpt2", "full", "post-rope"),
                                                                       ("gpt2", 9, "post-rope")]


@pytest.mark.parametrize("arch,k,mode", CASES)
def test_onnx_runtime_matches_reference(arch, k, mode, tiny_export):
    export = tiny_export(arch, k, mode)
    _, _, ref, meta = load_ref(export)
    result = check_parity(ref, OrtModel(export, meta), prompts(meta.sink["token_id"]), meta.pad_token_id)
    assert result.greedy_identical
    assert result.passed, result.to_json()


@pytest.mark.parametrize("arch,mode", [("llama", "pre-rope"), ("llama", "post-rope"), ("gpt2", "post-rope")])
def test_compression_is_applied_and_sink_stays_exact(arch, mode, tiny_export):
    """At small K the logits move away from the full model's, except at the sink (position 0), whose keys and
    values are in every basis: its logits equal the uncompressed model's."""
    _, _, full, meta = load_ref(tiny_export(arch, "full"))
    _, _, small, _ = load_ref(tiny_export(arch, 4, mode))
    assert_sink_exact_rest_changed(full, small, meta.sink["token_id"], prompts(meta.sink["token_id"], (30,))[0])


def test_gpt2_k9_graph_has_latent_cache(tiny_export):
    import onnx
    export = tiny_export("gpt2", 9)
    model = onnx.load(f"{export}/model.onnx", load_external_data=False)
    pasts = [i for i in model.graph.input if i.name.startswith("past_key_values.")]
    assert len(pasts) == 2 * 2
    for p in pasts:
        dims = [d.dim_value or d.dim_param for d in p.type.tensor_type.shape.dim]
        assert dims == ["batch", 1, "past_sequence", 9], (p.name, dims)
    assert load_metadata(export).kv_bytes_per_token == 2 * 2 * 9 * 4


@pytest.mark.parametrize("arch,k,mode", [("llama", 8, "pre-rope"), ("gpt2", 9, "post-rope")])
def test_runtime_generator_matches_reference_greedy(arch, k, mode, tiny_export):
    """The runtime (IO binding, no torch) generates the reference decoder's greedy tokens."""
    from runtime import Generator
    export = tiny_export(arch, k, mode)
    _, _, ref, meta = load_ref(export)
    ps = [p[1:] for p in prompts(meta.sink["token_id"])]          # the runtime adds the sink itself
    got = Generator(export).generate(ps, max_new_tokens=24, stop_token_ids=[])
    for p, tokens in zip(ps, got.tokens):
        assert tokens == reference_greedy(ref, [meta.sink["token_id"]] + p, 24)


@pytest.mark.parametrize("arch,k,mode", [("llama", 8, "pre-rope"), ("gpt2", 9, "post-rope")])
def test_logits_to_keep_is_optional_and_keeps_the_last_positions(arch, k, mode, tiny_export):
    """Runtimes that do not feed logits_to_keep get every position; 1 gives the last one, the same numbers."""
    from graphs.contract import LOGITS_TO_KEEP
    export = tiny_export(arch, k, mode)
    meta = load_metadata(export)
    model = OrtModel(export, meta)
    session = model.session
    assert LOGITS_TO_KEEP not in {i.name for i in session.get_inputs()}
    assert LOGITS_TO_KEEP in {i.name for i in session.get_overridable_initializers()}
    ids = np.array([[meta.sink["token_id"]] + prompts(meta.sink["token_id"])[0][1:12]])    # (1, 12)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.arange(12)[None]}
    feeds.update({name: p for (_, _, name, _), p in zip(meta.layout.names(), model.empty_past(1))})
    every = session.run(["logits"], feeds)[0]                                              # (1, 12, V)
    assert every.shape[1] == 12
    for n, want in ((1, every[:, -1:]), (3, every[:, -3:]), (0, every), (40, every)):
        got = session.run(["logits"], {**feeds, LOGITS_TO_KEEP: np.array(n, dtype=np.int64)})[0]
        assert got.shape == want.shape and within(np.abs(got - want).max(), np.abs(want).max())


@pytest.mark.parametrize("arch,k,mode", [("llama", 8, "pre-rope"), ("qwen2", "full", "pre-rope"),
                                         ("gpt2", 9, "post-rope")])
def test_float16_export_matches_reference_within_its_tolerance(arch, k, mode, tiny_export):
    """DTYPE=float16: cache inputs/outputs float16 (half the bytes), logits float32, parity at the fp16 tolerance."""
    from validate.tolerances import LOGIT_RTOL_FLOAT16
    export = tiny_export(arch, k, mode, dtype="float16")
    export32 = tiny_export(arch, k, mode)
    meta, meta32 = load_metadata(export), load_metadata(export32)
    assert meta.layout.dtype == "float16" and 2 * meta.kv_bytes_per_token == meta32.kv_bytes_per_token
    _, _, ref, _ = load_ref(export)
    result = check_parity(ref, OrtModel(export, meta), prompts(meta.sink["token_id"]), meta.pad_token_id)
    assert result.tolerance == LOGIT_RTOL_FLOAT16 and result.passed, result


def test_quantized_kl_criterion_takes_the_cost_or_the_rounding_floor():
    assert quantized_kl_ok(0.9e-3, cost=1e-2)                                   # within a tenth of the cost
    assert not quantized_kl_ok(2e-3, cost=1e-2)                                 # no floor measured
    assert quantized_kl_ok(2e-3, cost=1e-2, floor=2.5e-3 / ROUNDING_FLOOR_FACTOR)
    assert not quantized_kl_ok(2e-3, cost=1e-2, floor=1e-4)


class _Noisy:
    """An ORT model whose logits carry noise: what a broken quantized graph would compute."""

    def __init__(self, model, std):
        self.model, self.layout, self.rng, self.std = model, model.layout, np.random.default_rng(0), std

    def empty_past(self, batch):
        return self.model.empty_past(batch)

    def __call__(self, ids, mask, pos, past):
        logits, past = self.model(ids, mask, pos, past)
        return logits + self.std * self.rng.standard_normal(logits.shape).astype(np.float32), past


def test_quantized_parity_measures_the_rounding_floor_and_fails_a_wrong_graph(tiny_export):
    export = tiny_export("llama", "full", "pre-rope", quant=QuantOptions("spectral", 4.0))
    hf, _, ref, meta = load_ref(export)
    assert meta.layout.float_window == 16           # QUANT=spectral's default window (quant/window.py), in the graph
    ort = OrtModel(export, meta)
    good = check_parity(ref, ort, prompts(meta.sink["token_id"]), meta.pad_token_id, original=hf_original(hf))
    assert good.passed and 0 <= good.kl_floor < 1e-6 < good.kl_cost, good.to_json()   # tiny model: no flips
    bad = check_parity(ref, _Noisy(ort, 1.0), prompts(meta.sink["token_id"]), meta.pad_token_id,
                       original=hf_original(hf))
    assert not bad.passed and bad.kl_floor == good.kl_floor, bad.to_json()
