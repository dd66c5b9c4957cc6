"""Quantized latents (exporter/quant.py, exporter/quantize.py): the quantizer's math, packing, bit allocation,
and ONNX Runtime against the PyTorch reference with the same quantizer on every architecture."""
from __future__ import annotations


import pytest

from exporter.errors import UserError
from exporter.options import QuantOptions
from graphs.contract import cached_token_bytes
from graphs.metadata import load_metadata
from tests.helpers import assert_sink_exact_rest_changed, load_ref, reference_greedy
from tests.helpers import prompts
from validate.kv_bytes import measured_bytes_per_token
from validate.ort_model import OrtModel
from validate.parity import check_parity, hf_original


# (arch, K, key mode, method, allocation, scales): raw uniform is the plain-quantization baseline
QUANT_CASES = [("llama", "full", "pre-rope", None, "spectral", "static"),
               ("llama", "full", "post-rope", "raw", "uniform", "token"),
               ("qwen2", 8, "pre-rope", "output-aware", "uniform", "static"),
               ("mistral", "full", "post-rope", None, "spectral", "token"),
               ("gpt2", "full", "post-rope", "raw", "uniform", "static"),
               ("gpt2", "full", "post-rope", None, "spectral", "static"),
               ("qwen3", 8, "pre-rope", None, "spectral", "static"),     # the code sits after k_norm
               ("qwen3", "full", "post-rope", None, "spectral", "token"),
               ("phi3", 8, "pre-rope", None, "spectral", "static"),      # LongRoPE
               ("phi3", "full", "post-rope", None, "spectral", "static"),
               ("smollm3", 8, "pre-rope", None, "spectral", "static"),   # its NoPE layer scores in k-space
               ("smollm3", "full", "post-rope", None, "spectral", "token"),
               ("llama3", 8, "pre-rope", None, "spectral", "static"),
               ("qwen2_window", 8, "pre-rope", None, "spectral", "static"),   # codes of a windowed layer
               ("mistral_window", "full", "post-rope", None, "spectral", "token"),
               ("gemma3", 8, "pre-rope", None, "spectral", "static")]


def quant_export(tiny_export, arch, k, mode, method, allocation, scales, ratio=4.0):
    return tiny_export(arch, k, mode, method=method,
                       quant=QuantOptions(allocation, ratio, key_scales=scales, value_scales=scales))


@pytest.mark.parametrize("arch,k,mode,method,allocation,scales", QUANT_CASES)
def test_quantized_export_matches_reference_and_its_bytes(arch, k, mode, method, allocation, scales, tiny_export):
    """ONNX Runtime == the PyTorch reference with the same quantizer (prefill, 64 greedy steps, padded batch);
    the cache is uint8 codes, and its growth per token measured on the ONNX outputs equals the estimator."""
    export = quant_export(tiny_export, arch, k, mode, method, allocation, scales)
    hf, _, ref, meta = load_ref(export)
    assert meta.layout.quantized
    ort = OrtModel(export, meta)
    result = check_parity(ref, ort, prompts(meta.sink["token_id"]), meta.pad_token_id, original=hf_original(hf))
    assert result.greedy_identical and result.passed, result.to_json()
    assert result.kl_mean < 1e-6 < result.kl_cost            # tiny models: no code flips, and a real cost
    assert measured_bytes_per_token(ort) == meta.kv_bytes_per_token
    fp16 = 2 * 2 * meta.model["num_layers"] * meta.model["num_kv_heads"] * meta.model["head_dim"]
    per_token = cached_token_bytes(meta.layout)                # windowed layers' tokens too
    assert per_token <= fp16 / 4                               # the budget holds, scale bytes included
    if k == "full":                                            # and is used (rank 8 cannot use all of it)
        assert per_token >= 0.9 * fp16 / 4


def test_quantization_changes_the_logits_but_not_the_sink(tiny_export):
    """At 16x the logits move away from the float cache's, except at the sink, which is put back exactly."""
    _, _, full, meta = load_ref(tiny_export("llama", "full"))
    _, _, small, _ = load_ref(quant_export(tiny_export, "llama", "full", "pre-rope", None, "spectral", "static",
                                           ratio=16.0))
    assert_sink_exact_rest_changed(full, small, meta.sink["token_id"], prompts(meta.sink["token_id"], (30,))[0])


def test_runtime_generates_from_a_quantized_cache(tiny_export):
    """The runtime allocates uint8 caches from the metadata and its greedy tokens are the reference's."""
    from runtime import Generator
    export = quant_export(tiny_export, "llama", "full", "pre-rope", None, "spectral", "static")
    _, _, ref, meta = load_ref(export)
    ps = [p[1:] for p in prompts(meta.sink["token_id"])]          # the runtime adds the sink itself
    got = Generator(export).generate(ps, max_new_tokens=16, stop_token_ids=[])
    for p, tokens in zip(ps, got.tokens):
        assert tokens == reference_greedy(ref, [meta.sink["token_id"]] + p, 16)


def test_projector_file_carries_the_bits_and_exports_the_same_bytes(tiny_export, tiny_model_dir, tmp_path):
    from exporter.options import ExportOptions
    from exporter.job.run import run_export
    first = quant_export(tiny_export, "qwen2", 8, "pre-rope", "output-aware", "uniform", "static")
    again = run_export(ExportOptions(model=tiny_model_dir("qwen2"), k="8", projectors=f"{first}/projectors",
                                     calib_tokens=4096, window=256, out=str(tmp_path / "again"),
                                     build_dir=str(tmp_path)))
    a, b = (open(f"{d}/model.onnx", "rb").read() for d in (first, again))
    assert a == b
    assert load_metadata(again).layout.quantized


@pytest.mark.parametrize("kw,match", [
    (dict(k="auto", quant=QuantOptions("spectral")), "K=auto and QUANT"),
    (dict(dtype="float16", quant=QuantOptions("spectral")), "DTYPE=float32"),
    (dict(method="raw"), "add QUANT=uniform"),
    (dict(k="8", method="raw", quant=QuantOptions("uniform")), "use K=full"),
    (dict(quant=QuantOptions("spectral", ratio=1.0)), "must be > 1"),
    (dict(quant=QuantOptions("lloyd")), "QUANT='lloyd' is unknown"),
])
def test_quantized_settings_refused_with_the_fix(kw, match, tiny_model_dir, tmp_path):
    from exporter.options import ExportOptions
    from exporter.job.run import run_export
    kw = {"k": "full", **kw}
    with pytest.raises(UserError, match=match):
        run_export(ExportOptions(model=tiny_model_dir("llama"), calib_tokens=4096, window=256,
                                 out=str(tmp_path / "x"), build_dir=str(tmp_path), **kw))


def test_quantized_export_is_deterministic(tiny_model_dir, tmp_path):
    """Same inputs and seed: the same bits, scales and ONNX bytes (sensitivity probes and scale fits included)."""
    from exporter.options import ExportOptions
    from exporter.job.run import run_export
    outs = [run_export(ExportOptions(model=tiny_model_dir("llama"), k="full", calib_tokens=4096, window=256,
                                     out=str(tmp_path / f"e{i}"), build_dir=str(tmp_path),
                                     quant=QuantOptions("spectral", 8.0))) for i in range(2)]
    a, b = (open(f"{d}/model.onnx", "rb").read() for d in outs)
    assert a == b
