"""The analysis end to end: its perplexity engine (HF with edited weights) against the reference decoder, and
the CLI writing spectrum.json, report.md and plots."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from exporter.analyze import edits as E
from exporter.analyze.__main__ import main as analyze_main
from exporter.analyze.options import TAPS, VARIANTS
from exporter.analyze.scoring import decoder_forward, hf_forward, window_logits

F64 = torch.float64


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _projectors(cfg, rank, skip_layer=None, seed=5):
    from exporter.codec.linear import Codec, Projectors
    g = _gen(seed)
    make = lambda: Codec(torch.linalg.qr(torch.randn(cfg.kv_dim, rank, dtype=F64, generator=g))[0],
                         torch.randn(cfg.kv_dim, dtype=F64, generator=g) * 0.3)
    keys = [None if i == skip_layer else make() for i in range(cfg.num_layers)]
    values = [make() for _ in range(cfg.num_layers)]
    return Projectors("pre-rope" if cfg.has_rope else "post-rope", keys, values, {})


def _logits(lm, ids):
    return lm(ids[0].tolist()).numpy()


@pytest.mark.parametrize("arch", ["llama", "llama3", "qwen2", "phi3", "smollm3", "gpt2"])
def test_hf_engine_equals_the_reference_decoder(arch, tiny_model_dir):
    from exporter.model.config import from_hf
    from exporter.model.fold import build_decoder
    from exporter.model.load import load
    hf = load(tiny_model_dir(arch)).model
    cfg = from_hf(hf.config)
    ids = np.array([np.random.default_rng(0).integers(3, 300, 60)], np.int64)
    hf_lm = window_logits(hf_forward(hf))
    before = _logits(hf_lm, ids)
    proj = _projectors(cfg, 5, skip_layer=0)
    with E.edited_attention(hf, cfg, E.pca_edits(hf, cfg, proj)):
        edited = _logits(hf_lm, ids)
    ref = _logits(window_logits(decoder_forward(build_decoder(hf, proj))), ids)
    assert np.abs(edited - ref).max() <= 1e-4 * np.abs(ref).max()
    assert np.abs(edited - before).max() > 1e-2 * np.abs(before).max()       # the edit did something
    ranks = [{"q": 3, "k": 2, "v": 4, "o": 5} for _ in range(cfg.num_layers)]
    edits = E.truncation_edits(hf, cfg, ranks)
    with E.edited_attention(hf, cfg, edits):
        truncated = _logits(hf_lm, ids)
        ref_t = _logits(window_logits(decoder_forward(build_decoder(hf))), ids)
    assert np.abs(truncated - ref_t).max() <= 1e-4 * np.abs(ref_t).max()
    assert np.array_equal(_logits(hf_lm, ids), before)                       # every weight restored


def test_analyze_cli_writes_json_report_and_plots(tiny_model_dir, tmp_path, capsys):
    out = str(tmp_path / "analysis")
    args = ["--model", tiny_model_dir("llama"), "--out", out, "--calib-tokens", "2048", "--window", "128",
            "--skip-quality", "--seq", "512,1024", "--batch", "1", "--no-cache"]
    assert analyze_main(args) == 0
    r = json.load(open(os.path.join(out, "spectrum.json")))
    assert set(r["activations"]) == set(TAPS) and len(r["activations"]["value"]) == 2
    layer = r["activations"]["key_pre"][1]
    assert set(layer["variants"]) == set(VARIANTS) and len(layer["heads"]["raw"]) == 2
    assert r["weights"][0]["q"]["shape"] == [64, 64]
    assert r["memory"]["bytes_per_token"]["original float32"] == 2 * 2 * 32 * 4
    for name in r["plots"]:
        assert open(os.path.join(out, name), "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert "## 1. Effective dimension" in open(os.path.join(out, "report.md")).read()
    assert "bytes per token" in capsys.readouterr().out
    assert not os.path.exists(out + ".tmp")
    assert analyze_main(["--model", tiny_model_dir("llama"), "--out", out, "--whole", "everything"]) == 2
    assert "error: --whole 'everything' is unknown" in capsys.readouterr().err


@pytest.mark.parametrize("arch,quality", [("qwen3", True), ("phi3", False), ("smollm3", False), ("gemma3", True)])
def test_analysis_runs_on_the_newer_families(arch, quality, tiny_model_dir, tmp_path):
    """Phi-3's fused weights reach the weight spectra; Qwen3's key codes sit after k_norm, which no k_proj edit
    can hold, so its perplexity rows run on the reference decoder, and the report says so."""
    out = str(tmp_path / "analysis")
    args = ["--model", tiny_model_dir(arch), "--out", out, "--calib-tokens", "2048", "--window", "128",
            "--seq", "512", "--batch", "1", "--no-cache"] + ([] if quality else ["--skip-quality"])
    assert analyze_main(args) == 0
    r = json.load(open(os.path.join(out, "spectrum.json")))
    assert set(r["weights"][0]) >= {"q", "k", "v", "o", "gate", "up", "down"}
    if quality:
        assert r["quality"]["engine"] == "decoder" and r["quality"]["rows"]
