"""Sliding-window layers (Mistral's sliding_window, Qwen2's use_sliding_window from max_window_layers): masked
to their window in prefill and decode, and a cache that never holds more than the window. Parity with HF and
the reference is in test_fold.py / validate/test_parity.py (the *_window architectures); this is the cache."""
from __future__ import annotations

import os

import numpy as np
import pytest

from exporter.errors import UserError
from graphs.contract import kv_bytes
from graphs.metadata import load_metadata
from runtime import Generator
from tests.helpers import load_ref, prompts, reference_greedy
from validate.kv_bytes import measured_bytes_per_token
from validate.ort_model import OrtModel

WINDOWS = {"mistral_window": (16, 16), "qwen2_window": (None, 12), "gemma3": (16, None)}   # validate/tiny_models.py


@pytest.mark.parametrize("arch,k,mode", [("mistral_window", "full", "pre-rope"), ("qwen2_window", "full", "pre-rope"),
                                         ("qwen2_window", 8, "pre-rope"), ("mistral_window", 8, "post-rope"),
                                         ("gemma3", "full", "pre-rope"), ("gemma3", 8, "post-rope")])
def test_a_windowed_layer_never_holds_more_than_its_window(arch, k, mode, tiny_export):
    """A prompt of 3x the window, then decode steps: every windowed present tensor holds window - 1 tokens,
    every global one all of them; export.json says which layers are windowed."""
    export = tiny_export(arch, k, mode)
    meta = load_metadata(export)
    windows = WINDOWS[arch]
    assert [s.window for s in meta.layout.keys] == list(windows) == [s.window for s in meta.layout.values]
    model = OrtModel(export, meta)
    n = 3 * max(w for w in windows if w)
    ids = np.array([prompts(meta.sink["token_id"], (n - 1,))[0]], np.int64)          # (1, n) with the sink
    _, past = model(ids, np.ones_like(ids), np.arange(n)[None], model.empty_past(1))
    for step in range(3):
        for (layer, kind, _, _), present in zip(meta.layout.names(), past):
            window = windows[layer]
            assert present.shape[2] == (window - 1 if window else n + step), (layer, kind, present.shape)
        total = n + step + 1
        _, past = model(np.array([[7]]), np.ones((1, total), np.int64), np.array([[total - 1]]), past)


def test_windowed_bytes_estimate_measure_and_the_runtime(tiny_export):
    """Per-token growth counts the global layers only (measured past every window), the whole cache counts the
    windows; our runtime generates the reference's tokens; genai is told why it cannot run the export."""
    export = tiny_export("qwen2_window", "full")
    meta = load_metadata(export)
    per_layer = 2 * meta.model["num_kv_heads"] * meta.model["head_dim"] * 4        # keys and values, float32
    assert meta.kv_bytes_per_token == measured_bytes_per_token(OrtModel(export, meta)) == per_layer   # layer 0
    assert kv_bytes(meta.layout, 100) == per_layer * (100 + 11)                    # + layer 1's 11 tokens
    _, _, ref, meta = load_ref(export)
    batch = prompts(meta.sink["token_id"], (35, 22))                               # left-padded together
    got = Generator(export, provider="cpu").generate([p[1:] for p in batch], max_new_tokens=20, stop_token_ids=[])
    assert got.tokens == [reference_greedy(ref, p, 20) for p in batch]
    assert not os.path.exists(os.path.join(export, "genai_config.json"))
    assert "sliding-window" in meta.extra["genai"]


FULL_CASES = [("gemma3", "full", "pre-rope", "concat", None), ("mistral_window", 8, "post-rope", "concat", None),
              ("gemma3", "full", "pre-rope", "shared-buffer", None), ("qwen2_window", 8, "post-rope", "shared-buffer", None),
              ("gemma3", "full", "pre-rope", "shared-buffer", "int8"), ("mistral_window", "full", "pre-rope",
                                                                        "shared-buffer", "int8")]


@pytest.mark.parametrize("arch,k,mode,cache,kv_dtype", FULL_CASES)
def test_a_full_window_cache_keeps_every_token_and_matches_the_reference(arch, k, mode, cache, kv_dtype, tiny_export):
    """WINDOW_CACHE=full: windowed layers keep every token, masked to the window (the fused op masks it itself
    through local_window_size), so the shared buffer and its int8 cache take windowed models too."""
    from tests.helpers import equal_prompts
    from validate.parity import check_parity, hf_original
    kw = {"kv_dtype": kv_dtype} if kv_dtype else {}
    export = tiny_export(arch, k, mode, cache=cache, window_cache="full", **kw)
    hf, _, ref, meta = load_ref(export)
    assert all(s.window is None for s in meta.layout.keys) and meta.model["windows"] == list(WINDOWS[arch] and
                                                                                                [w or 0 for w in WINDOWS[arch]])
    shared = cache == "shared-buffer"
    batch = equal_prompts(meta.sink["token_id"]) if shared else prompts(meta.sink["token_id"])
    result = check_parity(ref, OrtModel(export, meta), batch, meta.pad_token_id,
                          original=hf_original(hf) if kv_dtype else None)
    assert result.passed and (kv_dtype or result.greedy_identical), result.to_json()
    model = OrtModel(export, meta)
    ids = np.array([prompts(meta.sink["token_id"], (47,))[0]], np.int64)                # 3x the window
    _, past = model(ids, np.ones_like(ids), np.arange(48)[None], model.empty_past(1))
    assert {p.shape[2] for p in past} == {48}


def test_a_shared_buffer_cannot_bound_a_window(tiny_export):
    with pytest.raises(UserError, match="sliding-window layer's cache .* use CACHE=concat"):
        tiny_export("mistral_window", "full", "pre-rope", cache="shared-buffer")


def test_the_default_export_of_a_windowed_model_is_a_bounded_concat_cache(tiny_export):
    """`make export` alone asks for the int8 shared buffer, which cannot bound a window: a windowed model gets
    K=full in the concat contract instead (said on the console), not a refusal."""
    default = dict(cache="shared-buffer", kv_dtype="int8", kv_kernel="codes", default_export=True)
    export = tiny_export("gemma3", "full", "pre-rope", **default)
    meta = load_metadata(export)
    assert meta.cache_update == "concat" and not meta.layout.quantized and not meta.kernels
    assert [s.window for s in meta.layout.keys] == [16, None]
    export = tiny_export("gemma3", "full", "pre-rope", **default, window_cache="full")   # asked for: the int8 buffer
    meta = load_metadata(export)
    assert meta.cache_update == "shared-buffer" and meta.layout.quantized and meta.kernels == ["CodesAttention"]
    # our kernel masks the window as the reference does: greedy tokens past 3x the window
    _, _, ref, _ = load_ref(export)
    prompt = prompts(meta.sink["token_id"], lengths=(49,))[0]
    got = Generator(export, provider="cpu").generate([prompt[1:]], max_new_tokens=8, stop_token_ids=[])
    assert got.tokens == [reference_greedy(ref, prompt, 8)]


def test_k_auto_spends_its_budget_on_the_layers_that_grow(tiny_export, tiny_model_dir, tmp_path):
    """A bounded windowed layer adds no bytes per token past its window: K=auto keeps it uncompressed and gives
    the budget to the global layer, whose growth is what the budget bounds (measured on the ONNX outputs)."""
    from exporter.job.run import run_export
    from exporter.options import AutoOptions, ExportOptions
    out = tiny_export("gemma3", "auto", auto=AutoOptions(budget_bytes=24 * 4, probe_tokens=256, heldout_tokens=2048))
    meta = load_metadata(out)
    assert meta.ranks["key"][0] is None and meta.ranks["value"][0] is None          # layer 0: windowed
    assert meta.ranks["key"][1] is not None                                         # layer 1: global, coded
    assert measured_bytes_per_token(OrtModel(out, meta)) == meta.kv_bytes_per_token <= 24 * 4
    with pytest.raises(UserError, match="every layer of this model is windowed .* use K=full, or WINDOW_CACHE=full"):
        run_export(ExportOptions(model=tiny_model_dir("mistral_window"), k="auto", out=str(tmp_path / "x"),
                                 auto=AutoOptions(budget_bytes=100)))
