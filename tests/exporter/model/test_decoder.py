"""The compact decoder's pieces on their own: grouped attention, masks, the kept positions, and folding, whose
algebra must be exact (a full-rank orthonormal code changes nothing)."""
from __future__ import annotations

import pytest
import torch

from exporter.codec.linear import Codec, Projectors
from exporter.model.attention import grouped_matmul
from exporter.model.decoder import causal_padding_mask, first_slots, last_positions
from exporter.model.fold import build_decoder
from exporter.model.load import load
from tests.helpers import prompts


def test_grouped_matmul_is_repeated_kv_heads():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 6, 5, 4, generator=g), torch.randn(2, 3, 4, 7, generator=g)   # H=6 query heads, G=3
    want = a @ b.repeat_interleave(2, dim=1)
    assert torch.allclose(grouped_matmul(a, b, 3), want, atol=1e-6)


def test_causal_padding_mask_hides_the_future_and_the_padding():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])          # row 0 left-padded by 2
    m = causal_padding_mask(mask, 2, torch.float32)                   # the last 2 positions query
    allowed = m == 0                                                  # (B, 1, T, S)
    assert allowed[0, 0].tolist() == [[False, False, True, True, False], [False, False, True, True, True]]
    assert allowed[1, 0].tolist() == [[True, True, True, True, False], [True, True, True, True, True]]
    assert torch.isfinite(m).all()                                    # fully padded rows: uniform, never NaN


def test_last_positions_keeps_n_or_all():
    x = torch.arange(2 * 5 * 3.0).view(2, 5, 3)
    assert torch.equal(last_positions(x, torch.tensor(2)), x[:, -2:])
    assert torch.equal(last_positions(x, torch.tensor(0)), x)


def test_first_slots_mark_the_sink_after_left_padding():
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert first_slots(mask).tolist() == [[False, False, True, False], [True, False, False, False]]


@pytest.mark.parametrize("arch,mode", [("llama", "pre-rope"), ("llama", "post-rope"), ("qwen2", "pre-rope"),
                                       ("gpt2", "post-rope")])
def test_folding_a_full_rank_orthonormal_code_changes_nothing(arch, mode, tiny_model_dir):
    """Keys and values coded by a random rotation of full rank: the folded decoder (latent cache, k-space scores
    or rebuilt pre-RoPE keys, values absorbed into o_proj) computes the uncompressed model's logits."""
    hf = load(tiny_model_dir(arch)).model
    full = build_decoder(hf)
    dim = full.cfg.kv_dim
    g = torch.Generator().manual_seed(1)
    code = lambda: Codec(torch.linalg.qr(torch.randn(dim, dim, dtype=torch.float64, generator=g))[0],
                         torch.randn(dim, dtype=torch.float64, generator=g))
    L = full.cfg.num_layers
    folded = build_decoder(hf, Projectors(mode, [code() for _ in range(L)], [code() for _ in range(L)], {}))
    ids = torch.tensor(prompts(None, (30,)))
    args = (ids, torch.ones_like(ids), torch.arange(ids.shape[1])[None])
    with torch.no_grad():
        a = full(*args, *full.empty_past(1))[0]
        b = folded(*args, *folded.empty_past(1))[0]
        assert folded(*args, *folded.empty_past(1))[1].shape == (1, 1, 30, dim)     # a latent cache
    assert (a - b).abs().max().item() <= 1e-4 * a.abs().max().item()


def test_softmax_outside_the_graph_is_the_plain_form_bit_for_bit():
    """Attention._probabilities: in place and 256 query rows at a time under no_grad (calibration's memory),
    the plain softmax(scores * scale + mask) with autograd; the same numbers either way."""
    from exporter.model.attention import Attention
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(1, 9, 600, 900, generator=g) * 5
    mask = torch.triu(torch.full((600, 900), float("-inf")), diagonal=301)[None, None]   # causal, 300 past
    attn = Attention.__new__(Attention)
    attn.scale = 0.125
    plain = Attention._probabilities(attn, scores.clone().requires_grad_(), mask)
    with torch.no_grad():
        in_place = Attention._probabilities(attn, scores.clone(), mask)
    assert torch.equal(plain.detach(), in_place)
