"""A float window over quantized latents (model/attention.py float_window, the PyTorch screen of KIVI's residual):
a query reads its last W tokens exact and the older ones decoded."""
from __future__ import annotations

import copy

import pytest
import torch

from exporter.eval.perplexity import decoder_logits
from tests.exporter.quant.test_design import quant_export
from tests.helpers import load_ref, prompts


def with_window(decoder, w: int, quantized: bool = True):
    d = copy.deepcopy(decoder)
    for blk in d.blocks:
        blk.attn.float_window = w
        if not quantized:
            blk.attn.key_quant = blk.attn.value_quant = None
    return d


@pytest.mark.parametrize("arch,mode,scales", [("llama", "pre-rope", "static"), ("mistral", "post-rope", "token")])
def test_a_window_as_long_as_the_text_is_the_float_cache_and_none_is_the_codes(arch, mode, scales, tiny_export):
    _, _, ref, meta = load_ref(quant_export(tiny_export, arch, "full", mode, None, "spectral", scales, ratio=8.0))
    ids = prompts(meta.sink["token_id"], (30,))[0]
    coded, exact = decoder_logits(ref, ids), decoder_logits(with_window(ref, 0, quantized=False), ids)
    with torch.no_grad():
        assert torch.equal(decoder_logits(with_window(ref, 0), ids), coded)
        assert torch.allclose(decoder_logits(with_window(ref, len(ids)), ids), exact, atol=1e-5)
        part = decoder_logits(with_window(ref, 8), ids)                # (T, V)
    # the first 8 positions see only exact latents; later ones some codes
    assert torch.allclose(part[:8], exact[:8], atol=1e-5) and not torch.allclose(part[8:], exact[8:], atol=1e-3)
    assert (part - exact).abs().mean() < (coded - exact).abs().mean()


def test_the_window_is_a_screen_of_prefills_only(tiny_export):
    _, _, ref, _ = load_ref(quant_export(tiny_export, "llama", "full", "pre-rope", None, "spectral", "static",
                                         ratio=8.0))
    attn = with_window(ref, 4).blocks[0].attn
    assert attn._windowed(attn.key_quant, torch.zeros(1, 1, 0, 8)) and not attn._windowed(None, torch.zeros(1, 1, 0, 8))
    with pytest.raises(NotImplementedError, match="empty cache"):     # older exact latents are kept nowhere
        attn._windowed(attn.key_quant, torch.zeros(1, 1, 3, 8))
