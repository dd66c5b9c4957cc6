"""The shared-buffer contract variant: attention through onnxruntime's GroupQueryAttention, one max-length cache
buffer bound as past and present and written in place. Same numbers as the reference decoder, same tokens."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from exporter.errors import UserError
from graphs.metadata import load_metadata
from runtime import Generator
from tests.helpers import equal_prompts, load_ref, reference_greedy
from validate.ort_model import OrtModel
from validate.parity import check_parity
from validate.tolerances import within

CASES = [("llama", "full", "pre-rope"), ("llama", 8, "post-rope"), ("qwen2", 8, "post-rope"),
         ("mistral", "full", "pre-rope"), ("gpt2", "full", "post-rope"), ("gpt2", 8, "post-rope"),
         # q/k norms before the op; LongRoPE's tables computed in the graph; a NoPE layer the op does not rotate
         ("qwen3", "full", "pre-rope"), ("qwen3", 8, "post-rope"), ("phi3", "full", "pre-rope"),
         ("phi3", 8, "post-rope"), ("smollm3", "full", "pre-rope"), ("smollm3", 8, "post-rope"),
         ("phi4", "full", "pre-rope")]      # partial rotary: the op rotates the first 3/4 of each head


@pytest.mark.parametrize("arch,k,mode", CASES)
def test_shared_buffer_export_matches_reference(arch, k, mode, tiny_export):
    export = tiny_export(arch, k, mode, cache="shared-buffer")
    meta = load_metadata(export)
    assert meta.cache_update == "shared-buffer"
    _, _, ref, _ = load_ref(export)
    result = check_parity(ref, OrtModel(export, meta), equal_prompts(meta.sink["token_id"]), meta.pad_token_id)
    assert result.passed, result


@pytest.mark.parametrize("arch,k,mode", CASES[:3])
def test_runtime_writes_the_buffer_in_place_and_generates_the_reference_tokens(arch, k, mode, tiny_export):
    export = tiny_export(arch, k, mode, cache="shared-buffer")
    _, _, ref, meta = load_ref(export)
    prompts = equal_prompts(meta.sink["token_id"], n=2, length=21, seed=1)
    want = [reference_greedy(ref, p, 12) for p in prompts]
    batch = Generator(export, provider="cpu").generate([p[1:] for p in prompts], max_new_tokens=12,
                                                       stop_token_ids=[])
    assert batch.tokens == want
    gen = Generator(export, provider="cpu", prefill_chunk=5)          # batch 1: chunks write into the buffer
    seen = []
    original = gen.step.__call__

    def spy(input_ids, attention_mask, cache):
        before = {n: v.data_ptr() for n, v in cache.values.items()}
        out = original(input_ids, attention_mask, cache)
        seen.append(before == {n: v.data_ptr() for n, v in cache.values.items()} and cache.shared)
        return out

    gen.step = spy
    assert gen.generate([prompts[0][1:]], max_new_tokens=12, stop_token_ids=[]).tokens[0] == want[0]
    assert len(seen) == 5 + 11 and all(seen)                          # 21 tokens = 5 chunks, then 11 steps


def test_shared_buffer_refusals_name_the_fix(tiny_export):
    with pytest.raises(UserError, match="pre-RoPE"):
        tiny_export("llama", 8, "pre-rope", cache="shared-buffer")
    with pytest.raises(UserError, match="multiple of 8"):
        tiny_export("gpt2", 9, "post-rope", cache="shared-buffer")
    with pytest.raises(UserError, match="K_KEY == K_VALUE"):
        tiny_export("llama", 8, "post-rope", cache="shared-buffer", k_value="full")
    from runtime.session import Device
    gen = Generator(tiny_export("llama", "full", "pre-rope", cache="shared-buffer"), provider="cpu")
    gen.device = Device("cuda")                 # device buffers cannot be bound row by row: one length there
    with pytest.raises(ValueError, match="prompts of one length on a GPU"):
        gen.new_cache([[5, 6, 7], [5]], 2)


def test_buffer_bytes_are_the_estimate_and_do_not_grow(tiny_export):
    """The runtime holds exactly kv_bytes_per_token x capacity x batch, allocated once, whatever the step."""
    from runtime.cache import KVCache
    export = tiny_export("llama", 8, "post-rope", cache="shared-buffer")
    gen = Generator(export, provider="cpu")
    cache = KVCache.buffer(gen.metadata.layout, 2, gen.device, capacity=40)
    assert cache.nbytes == 2 * 40 * gen.metadata.kv_bytes_per_token
    ids = np.array(equal_prompts(gen.metadata.sink["token_id"], n=2, length=30))
    gen.step(ids, np.ones_like(ids), cache)
    assert cache.length == 30 and cache.nbytes == 2 * 40 * gen.metadata.kv_bytes_per_token
    with pytest.raises(ValueError, match="holds 40 tokens"):
        gen.step(ids[:, :11], np.ones((2, 41), np.int64), cache)


@pytest.mark.parametrize("arch,k,mode", CASES[:3])
def test_fused_decoder_in_pytorch_equals_the_reference(arch, k, mode, tiny_export):
    """The eager side of the fused op (what the tracer runs) computes the reference decoder's numbers,
    prefill and a cached step: the exported graph is the op, but its PyTorch twin must not mislead."""
    import copy
    _, _, ref, meta = load_ref(tiny_export(arch, k, mode))
    fused = copy.deepcopy(ref).use_fused_attention()
    ids = torch.tensor(equal_prompts(meta.sink["token_id"], n=2, length=12))                  # (2, 12)
    with torch.no_grad():
        want = ref(ids, torch.ones_like(ids), torch.arange(12)[None].expand(2, 12), *ref.empty_past(2))
        got = fused(ids, torch.ones_like(ids), torch.arange(12)[None].expand(2, 12), *fused.empty_past(2))
        assert within((got[0] - want[0]).abs().max().item(), want[0].abs().max().item())
        step = ids[:, -1:]
        want2 = ref(step, torch.ones(2, 13, dtype=torch.long), torch.full((2, 1), 12), *want[1:])
        got2 = fused(step, torch.ones(2, 13, dtype=torch.long), torch.full((2, 1), 12), *got[1:])
        assert within((got2[0] - want2[0]).abs().max().item(), want2[0].abs().max().item())


def test_a_batch_is_prefilled_row_by_row_in_chunks_into_one_buffer(tiny_export):
    """A CPU shared buffer takes a batch one sequence at a time (each row bound as a view of the one buffer), in
    chunks the fused op takes at batch 1 only; the batch then decodes together: the reference's tokens."""
    export = tiny_export("llama", "full", "pre-rope", cache="shared-buffer")
    _, _, ref, meta = load_ref(export)
    prompts = equal_prompts(meta.sink["token_id"], n=3, length=21, seed=2)
    gen = Generator(export, provider="cpu", prefill_chunk=5)
    batches = []
    original = gen.step.__call__
    gen.step = lambda ids, mask, cache: batches.append(ids.shape) or original(ids, mask, cache)
    got = gen.generate([p[1:] for p in prompts], max_new_tokens=8, stop_token_ids=[])
    assert got.tokens == [reference_greedy(ref, p, 8) for p in prompts]
    assert batches == [(1, 5), (1, 5), (1, 5), (1, 5), (1, 1)] * 3 + [(3, 1)] * 7   # 21 = 4 x 5 + 1 per row


@pytest.mark.parametrize("kw", [{}, {"kv_dtype": "int8"}])
def test_prompts_of_different_lengths_share_one_buffer(kw, tiny_export):
    """Each prompt is prefilled into its own rows from slot 0 (right-padded mask), then the batch decodes
    together, each row at its own length: every sequence gets the tokens it gets alone."""
    export = tiny_export("llama", "full", "pre-rope", cache="shared-buffer", **kw)
    _, _, ref, meta = load_ref(export)
    sink = meta.sink["token_id"]
    prompts = [equal_prompts(sink, n=1, length=n, seed=n)[0] for n in (23, 9, 16)]
    got = Generator(export, provider="cpu", prefill_chunk=5).generate([p[1:] for p in prompts], max_new_tokens=10,
                                                                      stop_token_ids=[])
    assert got.tokens == [reference_greedy(ref, p, 10) for p in prompts]


def test_a_partial_rotary_the_op_cannot_take_is_refused(tiny_model_dir):
    """onnxruntime's fused op rotates a multiple of 8 pairs: a model rotating 6 pairs of 16 (phi4's 3/4 at
    head_dim 16) is refused before export, with the fix."""
    from exporter.job.checks import check_shared_buffer
    from exporter.model.fold import build_decoder
    from exporter.model.load import load
    decoder = build_decoder(load(tiny_model_dir("phi4")).model)
    check_shared_buffer(decoder)                                # 24 of 64 pairs: taken
    decoder.rope.inv_freq = decoder.rope.inv_freq[:6]           # 12 numbers of 64 rotated
    with pytest.raises(UserError, match="rotates 12 of 64: use CACHE=concat"):
        check_shared_buffer(decoder)
