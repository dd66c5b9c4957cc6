"""The float window's default (quant/window.py): QUANT=spectral gets a window of 16 where one bit for every latent
component and the window fit QUANT_RATIO, none elsewhere; a QUANT_WINDOW given stays as it is."""
from __future__ import annotations

import pytest

from exporter.__main__ import options_from, parser
from exporter.model.config import DecoderConfig
from exporter.options import ExportOptions, QuantOptions
from exporter.quant.window import DEFAULT_FLOAT_WINDOW, with_float_window

# SmolLM2-135M's cache: 30 layers of 3 kv heads x 64, 11,520 latent components, 23,040 float16 B/token
SMOLLM2 = DecoderConfig(family="llama", model_type="llama", num_layers=30, hidden_size=576, num_heads=9,
                        num_kv_heads=3, head_dim=64, vocab_size=49152, norm_eps=1e-5, max_positions=8192,
                        qkv_bias=False, tie_embeddings=True)


def settled(cfg=SMOLLM2, **quant) -> int:
    opts = {k: quant.pop(k) for k in ("k", "method", "window_cache") if k in quant}
    return with_float_window(ExportOptions(quant=QuantOptions(**quant), **opts), cfg).quant.float_window


@pytest.mark.parametrize("ratio", [4.0, 8.0])
def test_spectral_gets_the_window_where_it_fits(ratio):
    assert settled(allocation="spectral", ratio=ratio) == DEFAULT_FLOAT_WINDOW == 16


def test_16x_at_full_rank_has_no_room_and_says_so(capsys):
    # one bit for each of 11,520 components is 1,440 B/token: the whole 16x budget, nothing left for a window
    assert settled(allocation="spectral", ratio=16.0) == 0
    assert "a lower K leaves it room" in capsys.readouterr().out
    assert settled(allocation="spectral", ratio=16.0, k="160") == 16      # 9,600 components: 1,200 + 140.6 B


def test_the_plain_quantizer_and_a_given_window_stay_as_they_are():
    assert settled(allocation="uniform", ratio=4.0) == 0
    assert settled(allocation="uniform", ratio=4.0, method="raw") == 0
    assert settled(allocation="spectral", ratio=4.0, float_window=0) == 0
    assert settled(allocation="spectral", ratio=4.0, float_window=32) == 32
    assert settled(allocation=None) == 0


def test_a_shorter_bounded_sliding_window_leaves_none(capsys):
    windowed = DecoderConfig(**{**SMOLLM2.__dict__, "windows": (8,) * 30})
    assert settled(windowed, allocation="spectral", ratio=4.0) == 0
    assert "sliding window of 8 tokens" in capsys.readouterr().out
    assert settled(windowed, allocation="spectral", ratio=4.0, window_cache="full") == 16


def test_the_flag_left_out_is_the_default():
    parse = lambda *argv: options_from(parser().parse_args(["--quant", "spectral", *argv])).quant.float_window
    assert parse() is None
    assert parse("--quant-window", "0") == 0
