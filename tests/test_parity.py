"""Parity, the heart of the product: HF == PyTorch reference at K=full, and ONNX Runtime == reference at every
setting, prefill and 64 greedy decode steps, batch of 2 with left padding. Tolerances: validate/tolerances.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from graphs.metadata import load_metadata
from runtime.forward import position_ids
from runtime.prompts import left_pad
from tests.conftest import assert_sink_exact_rest_changed, load_ref, reference_greedy
from tests.tiny_models import ARCHS
from validate.ort_model import OrtModel
from validate.parity import check_parity
from validate.tolerances import HF_LOGIT_RTOL, within

CASES = [(arch, k, mode) for arch in ("llama", "qwen2", "mistral") for k, mode in
         (("full", "pre-rope"), (8, "pre-rope"), (8, "post-rope"))] + [("gpt2", "full", "post-rope"),
                                                                       ("gpt2", 9, "post-rope")]


def prompts(sink: int | None, lengths=(40, 29), seed=0) -> list[list[int]]:
    g = np.random.default_rng(seed)
    prefix = [] if sink is None else [sink]
    return [prefix + g.integers(3, 300, n).tolist() for n in lengths]


@pytest.mark.parametrize("arch", ARCHS)
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
