"""Quantized latents (exporter/quant.py, exporter/quantize.py): the quantizer's math, packing, bit allocation,
and ONNX Runtime against the PyTorch reference with the same quantizer on every architecture."""
from __future__ import annotations

import itertools
import math
import random

import pytest
import torch

from exporter.config import from_hf
from exporter.errors import UserError
from exporter.probe import measured_sensitivities, one_tensor
from exporter.projectors import load_projectors
from exporter.quant import LatentQuantizer, Packing, gaussian_mse, gaussian_step, packed_bytes, planes
from exporter.quantize import QuantOptions, _Tensor, distortion, spectral_bits, uniform_bits
from graphs.metadata import load_metadata
from tests.conftest import assert_sink_exact_rest_changed, load_ref, reference_greedy
from tests.test_parity import prompts
from validate.kv_bytes import measured_bytes_per_token
from validate.ort_model import OrtModel
from validate.parity import check_parity, hf_original


def test_gaussian_steps_match_max_1960():
    """Max (1960), optimum uniform quantizer steps and their errors for a unit Gaussian, 2..256 levels."""
    for bits, step in zip(range(1, 9), (1.596, 0.9957, 0.5860, 0.3352, 0.1881, 0.1041, 0.0569, 0.0308)):
        assert gaussian_step(bits) == pytest.approx(step, rel=2e-3)
    for bits, mse in zip(range(1, 5), (0.3634, 0.1188, 0.03744, 0.01154)):
        assert gaussian_mse(bits) == pytest.approx(mse, rel=3e-3)
    assert gaussian_mse(0) == 1.0


def test_planes_are_the_binary_digits():
    assert planes(7) == [(0, 1), (1, 2), (3, 4)]
    assert planes(8) == [(0, 8)] and planes(5) == [(0, 1), (1, 4)]
    assert all(sum(w for _, w in planes(b)) == b for b in range(1, 9))


def test_packing_is_tight_and_counted_alike():
    rng = random.Random(0)
    for _ in range(500):
        widths = [rng.randint(1, 8) for _ in range(rng.randint(1, 60))]
        n = Packing(widths).nbytes
        assert n == packed_bytes(widths) == math.ceil(sum(widths) / 8)


@pytest.mark.parametrize("scales", ["static", "token"])
def test_codes_round_trip_through_bytes(scales):
    """decode(encode(c)) is the mid-rise quantizer's output, computed here directly from its definition."""
    g = torch.Generator().manual_seed(0)
    bits = [8, 7, 5, 3, 2, 1, 1, 4, 6] * 9
    sigma = (torch.rand(len(bits), generator=g) + 0.5).tolist()
    q = LatentQuantizer(bits, sigma, scales, group=32)
    c = torch.randn(2, 1, 7, len(bits), generator=g) * torch.tensor(sigma) * 2       # some beyond static range
    codes = q.encode(c)
    assert codes.dtype == torch.uint8 and codes.shape == (2, 1, 7, q.nbytes)
    levels = torch.tensor([2.0 ** b for b in bits])
    if scales == "static":
        step = torch.tensor([gaussian_step(b) for b in bits]) * torch.tensor(sigma)
    else:
        u = (c / torch.tensor(sigma)).abs()
        m = torch.stack([u[..., j:j + 32].amax(-1) for j in range(0, len(bits), 32)], -1)   # (2, 1, 7, 3)
        s = q.table[torch.searchsorted(q.table, m.contiguous())]                           # smallest >= m
        assert (s >= m).all()
        step = 2 * s[..., torch.arange(len(bits)) // 32] * torch.tensor(sigma) / levels
    k = torch.clamp(torch.floor(c / step), -levels / 2, levels / 2 - 1)
    torch.testing.assert_close(q.decode(codes), (k + 0.5) * step, rtol=1e-6, atol=1e-6)
    if scales == "token":       # nothing clipped: every error within half a step
        assert ((q.decode(codes) - c).abs() <= step / 2 * (1 + 1e-5)).all()


def test_sink_slot_gets_its_exact_latent():
    sink = torch.tensor([50.0, -40.0, 3.0])
    q = LatentQuantizer([2, 2, 2], [1.0, 1.0, 1.0], "static", sink=sink)
    c = torch.zeros(1, 1, 4, 3)
    c[0, 0, 1] = sink                                      # the sink, left-padded by one slot
    slots = torch.tensor([[False, True, False, False]])
    out = q.decode(q.encode(c), slots)
    assert torch.equal(out[0, 0, 1], sink)
    assert out[0, 0, 0].abs().max() < 1                    # others quantized as usual


def _tensors(weights_per_tensor, scales="static"):
    return [_Tensor.gaussian(list(w), scales) for w in weights_per_tensor]


def test_spectral_bits_fill_the_budget_by_weight():
    weights = [100.0, 10.0, 1.0, 0.01, 50.0, 5.0, 0.5, 0.0]
    one = _tensors([weights[:4]])
    spectral_bits(one, target=2, group=64)                 # one tensor: the least predicted error in 16 bits
    best = min((b for b in itertools.product(range(9), repeat=4) if sum(b) <= 16),
               key=lambda b: sum(distortion(w, x) for w, x in zip(weights, b)))
    assert tuple(one[0].bits) == best
    two = _tensors([weights[:4], weights[4:]])
    spectral_bits(two, target=3, group=64)                 # two: each rounds up to whole bytes
    assert sum(t.nbytes(64) for t in two) <= 3 and sum(map(sum, (t.bits for t in two))) >= 24 - 7
    assert two[1].bits[3] == 0                             # zero variance: no bits


def test_uniform_bits_are_equal_up_to_one_extra():
    tensors = _tensors([[3.0] * 10, [1.0] * 6], "token")
    uniform_bits(tensors, target=8, group=64)
    bits = tensors[0].bits + tensors[1].bits
    assert sum(t.nbytes(64) for t in tensors) <= 8
    assert max(bits) - min(bits) <= 1 and min(bits) >= 2
    assert tensors[0].bits[0] >= tensors[1].bits[0]       # extras go to the heavier components first
    with pytest.raises(UserError, match="lower K or QUANT_RATIO"):
        uniform_bits(_tensors([[1.0] * 64]), target=4, group=64)


# (arch, K, key mode, method, allocation, scales): raw uniform is the plain-quantization baseline
QUANT_CASES = [("llama", "full", "pre-rope", None, "spectral", "static"),
               ("llama", "full", "post-rope", "raw", "uniform", "token"),
               ("qwen2", 8, "pre-rope", "output-aware", "uniform", "static"),
               ("mistral", "full", "post-rope", None, "spectral", "token"),
               ("gpt2", "full", "post-rope", "raw", "uniform", "static"),
               ("gpt2", "full", "post-rope", None, "spectral", "static")]


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
    assert meta.kv_bytes_per_token <= fp16 / 4                  # the budget holds, scale bytes included
    if k == "full":                                            # and is used (rank 8 cannot use all of it)
        assert meta.kv_bytes_per_token >= 0.9 * fp16 / 4


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
    from exporter.pipeline import ExportOptions, run_export
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
    from exporter.pipeline import ExportOptions, run_export
    kw = {"k": "full", **kw}
    with pytest.raises(UserError, match=match):
        run_export(ExportOptions(model=tiny_model_dir("llama"), calib_tokens=4096, window=256,
                                 out=str(tmp_path / "x"), build_dir=str(tmp_path), **kw))


def test_sensitivity_probes_code_one_tensor_at_a_time(tiny_export):
    """Each probe codes only its tensor (the decoder is exact again afterwards) and measures a positive KL;
    the export keeps the exchange rates it used."""
    export = quant_export(tiny_export, "llama", "full", "pre-rope", None, "spectral", "static", ratio=8.0)
    hf, _, full, meta = load_ref(tiny_export("llama", "full"))
    proj = load_projectors(f"{export}/projectors")
    single = one_tensor(proj, 1, "value")
    assert [c is not None for c in single.values] == [i == 1 for i in range(len(proj.values))]
    assert all(c is None for c in single.keys)
    predicted = {(0, "key"): 1.0, (1, "value"): 2.0}
    windows = [prompts(meta.sink["token_id"], (40,))[0]]
    before = [b.attn for b in full.blocks]
    rates = measured_sensitivities(hf, full, from_hf(hf.config), proj, predicted, windows)
    assert [b.attn for b in full.blocks] == before
    assert set(rates) == set(predicted) and all(r > 0 for r in rates.values())
    assert len(proj.info["quant"]["sensitivity"]) == 2 * len(proj.keys)


def test_scale_search_finds_the_gaussian_optimum_and_widens_for_heavy_tails():
    from exporter.quantize import scale_search
    g = torch.Generator().manual_seed(0)
    z = torch.randn(200_000, 1, generator=g) * 2.0                          # Gaussian, sigma 2
    errors, scales = scale_search(z, torch.tensor([2.0]), [1, 2, 4])
    for row, bits in enumerate((1, 2, 4)):
        assert scales[row, 0].item() == pytest.approx(2.0, rel=0.1)
        assert errors[row, 0].item() == pytest.approx(4.0 * gaussian_mse(bits), rel=0.05)
    laplace = torch.distributions.Laplace(0.0, 2 ** -0.5).sample((200_000, 1))   # unit variance, heavy tails
    _, scales = scale_search(laplace, torch.tensor([1.0]), [4])
    assert scales[0, 0].item() > 1.2                                         # a wider step clips less


def test_quantized_export_is_deterministic(tiny_model_dir, tmp_path):
    """Same inputs and seed: the same bits, scales and ONNX bytes (sensitivity probes and scale fits included)."""
    from exporter.pipeline import ExportOptions, run_export
    outs = [run_export(ExportOptions(model=tiny_model_dir("llama"), k="full", calib_tokens=4096, window=256,
                                     out=str(tmp_path / f"e{i}"), build_dir=str(tmp_path),
                                     quant=QuantOptions("spectral", 8.0))) for i in range(2)]
    a, b = (open(f"{d}/model.onnx", "rb").read() for d in outs)
    assert a == b
