"""KV_DTYPE=int8: onnxruntime's fused attention stores int8 codes of rotated keys and values and reads them
itself. Parity by the quantized-cache criterion (validate/tolerances.py), the runtime's tokens, bytes, files."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from exporter.codec.store import load_projectors
from exporter.errors import UserError
from runtime import Generator
from tests.helpers import equal_prompts, load_ref, reference_greedy
from validate.tiny_models import UNWINDOWED
from validate.kv_bytes import measured_bytes_per_token
from validate.ort_model import OrtModel
from validate.parity import check_parity, hf_original



def int8_export(tiny_export, arch, rotation="hadamard"):
    return tiny_export(arch, "full", "pre-rope", cache="shared-buffer", kv_dtype="int8", kv_rotation=rotation)


@pytest.mark.parametrize("arch", UNWINDOWED + ("phi4",))
def test_int8_cache_matches_the_reference_and_its_bytes(arch, tiny_export):
    export = int8_export(tiny_export, arch)
    hf, _, ref, meta = load_ref(export)
    assert {s.dtype for s in meta.layout.keys + meta.layout.values} == {"int8"} and meta.layout.quantized
    ort_model = OrtModel(export, meta)
    result = check_parity(ref, ort_model, equal_prompts(meta.sink["token_id"]), meta.pad_token_id,
                          original=hf_original(hf))
    assert result.passed and result.kl_cost > 0, result                # quantized, and ORT computes what PyTorch does
    full = 2 * meta.model["num_layers"] * meta.model["num_kv_heads"] * meta.model["head_dim"]
    assert measured_bytes_per_token(ort_model) == meta.kv_bytes_per_token == full   # one byte a number


def test_the_unrotated_cache_runs_too(tiny_export):
    export = int8_export(tiny_export, "llama", "none")
    hf, _, ref, meta = load_ref(export)
    result = check_parity(ref, OrtModel(export, meta), equal_prompts(meta.sink["token_id"]), meta.pad_token_id,
                          original=hf_original(hf))
    assert result.passed, result


@pytest.mark.parametrize("kernel", ("onnxruntime", "codes"))
def test_runtime_generates_the_reference_tokens_from_an_int8_buffer(kernel, tiny_export):
    export = (int8_export if kernel == "onnxruntime" else codes_export)(tiny_export, "llama")
    _, _, ref, meta = load_ref(export)
    prompts = equal_prompts(meta.sink["token_id"], n=2, length=21, seed=1)
    got = Generator(export, provider="cpu").generate([p[1:] for p in prompts], max_new_tokens=12,
                                                     stop_token_ids=[])
    assert got.tokens == [reference_greedy(ref, p, 12) for p in prompts]


def test_steps_and_rotation_survive_the_projector_file(tiny_export):
    proj = load_projectors(f"{int8_export(tiny_export, 'qwen2')}/projectors")
    q = proj.cache_quant
    assert q.dtype == "int8" and q.rotation == "hadamard" and len(q.key_scales) == len(proj.keys)
    assert all(c is None for c in proj.keys + proj.values)
    assert all((s > 0).all() for s in q.key_scales + q.value_scales)
    assert proj.info["method"] == "cache-int8"


@pytest.mark.parametrize("kw,match", [
    (dict(cache="concat"), "add CACHE=shared-buffer"),
    (dict(cache="shared-buffer", k="8"), "use K=full"),
    (dict(cache="shared-buffer", dtype="float16"), "drop DTYPE"),
    (dict(cache="shared-buffer", kv_rotation="spin"), "KV_ROTATION='spin' is unknown"),
])
def test_int8_cache_settings_refused_with_the_fix(kw, match, tiny_model_dir, tmp_path):
    from exporter.job.run import run_export
    from exporter.options import ExportOptions
    with pytest.raises(UserError, match=match):
        run_export(ExportOptions(model=tiny_model_dir("llama"), kv_dtype="int8", calib_tokens=4096, window=256,
                                 out=str(tmp_path / "x"), build_dir=str(tmp_path), **{"k": "full", **kw}))
    assert not (tmp_path / "x").exists()


def test_the_reference_quantizes_what_the_graph_quantizes(tiny_export):
    """The PyTorch reference's present cache holds the codes ORT writes (up to a code flipped by rounding)."""
    export = int8_export(tiny_export, "gpt2")
    _, _, ref, meta = load_ref(export)
    ids = torch.tensor(equal_prompts(meta.sink["token_id"], n=1, length=17))
    with torch.no_grad():
        out = ref(ids, torch.ones_like(ids), torch.arange(17)[None], *ref.empty_past(1))
    _, present = OrtModel(export, meta)(ids.numpy(), np.ones((1, 17), np.int64), np.arange(17)[None],
                                        OrtModel(export, meta).empty_past(1))
    for a, b in zip(out[1:], present):
        assert a.dtype == torch.int8 and b.dtype == np.int8
        assert np.abs(a.numpy().astype(int) - b.astype(int)).max() <= 1


def test_make_export_alone_builds_the_int8_default_and_any_shaping_flag_turns_it_off():
    from exporter.options import ExportOptions, QuantOptions, with_default_export
    default = with_default_export(ExportOptions(), set())
    assert (default.k, default.cache, default.kv_dtype, default.kv_kernel) == ("full", "shared-buffer", "int8", "codes")
    theirs = with_default_export(ExportOptions(kv_kernel="onnxruntime"), {"kv_kernel"})
    assert (theirs.kv_dtype, theirs.kv_kernel) == ("int8", "onnxruntime")     # KV_KERNEL alone: the default's kernel
    for given in ({"k"}, {"cache"}, {"method"}, {"k_key"}, {"projectors"}):
        assert with_default_export(ExportOptions(), given).kv_dtype is None
    assert with_default_export(ExportOptions(quant=QuantOptions("spectral")), set()).kv_dtype is None
    assert with_default_export(ExportOptions(dtype="float16"), set()).kv_dtype is None


# KV_KERNEL=codes: the same int8 cache read by our kernel (graphs/kernels) instead of onnxruntime's op


def codes_export(tiny_export, arch):
    return tiny_export(arch, "full", "pre-rope", cache="shared-buffer", kv_dtype="int8", kv_rotation="hadamard",
                       kv_kernel="codes")


@pytest.mark.parametrize("arch", ("llama", "qwen3", "phi3", "gpt2"))
def test_our_kernel_computes_what_onnxruntimes_op_computes(arch, tiny_export):
    """Same steps and rotations as the onnxruntime-kernel export (bit-identical projectors), parity against the
    reference by the quantized-cache criterion, and logits and present codes of both graphs on the same inputs."""
    ours, theirs = codes_export(tiny_export, arch), int8_export(tiny_export, arch)
    hf, _, ref, meta = load_ref(ours)
    assert meta.kernels == ["CodesAttention"] and load_ref(theirs)[3].kernels == []
    with open(f"{ours}/projectors.safetensors", "rb") as a, open(f"{theirs}/projectors.safetensors", "rb") as b:
        assert a.read() == b.read()
    ort_model = OrtModel(ours, meta)
    result = check_parity(ref, ort_model, equal_prompts(meta.sink["token_id"]), meta.pad_token_id,
                          original=hf_original(hf))
    assert result.passed and result.kl_cost > 0, result
    assert measured_bytes_per_token(ort_model) == meta.kv_bytes_per_token
    ids = np.array(equal_prompts(meta.sink["token_id"], n=1, length=19))
    args = (ids, np.ones_like(ids), np.arange(19)[None])
    (a, present_a), (b, present_b) = ort_model(*args, ort_model.empty_past(1)), \
        OrtModel(theirs, meta)(*args, ort_model.empty_past(1))
    assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max()
    assert all((x == y).all() for x, y in zip(present_a, present_b))


@pytest.mark.parametrize("kw,match", [
    (dict(kv_kernel="codes"), "add KV_DTYPE=int8 CACHE=shared-buffer"),
    (dict(kv_kernel="cuda", kv_dtype="int8", cache="shared-buffer"), "KV_KERNEL='cuda' is unknown"),
])
def test_kernel_settings_refused_with_the_fix(kw, match, tiny_model_dir, tmp_path):
    from exporter.job.run import run_export
    from exporter.options import ExportOptions
    with pytest.raises(UserError, match=match):
        run_export(ExportOptions(model=tiny_model_dir("llama"), calib_tokens=4096, window=256,
                                 out=str(tmp_path / "x"), build_dir=str(tmp_path), **kw))
    assert not (tmp_path / "x").exists()


def test_without_the_library_an_export_and_a_session_say_how_to_build_it(tiny_export, tiny_model_dir, tmp_path,
                                                                         monkeypatch):
    from exporter.job.run import run_export
    from exporter.options import ExportOptions
    from graphs.metadata import ExportError
    export = codes_export(tiny_export, "llama")
    monkeypatch.setenv("SPECTRAL_KV_KERNELS", str(tmp_path / "missing.so"))
    with pytest.raises(UserError, match="make setup"):
        run_export(ExportOptions(model=tiny_model_dir("llama"), kv_dtype="int8", cache="shared-buffer",
                                 kv_kernel="codes", calib_tokens=4096, window=256, out=str(tmp_path / "x"),
                                 build_dir=str(tmp_path)))
    with pytest.raises(ExportError, match="uses our kernels.*make setup"):
        Generator(export, provider="cpu")
