"""A float window over quantized latents (QUANT_WINDOW=W, model/attention.py float_window, KIVI's residual): the
newest W-1 tokens' exact latents in float16 beside the codes, a query reading its last W tokens exact; in the
PyTorch reference, in the graph, in its bytes, and in the runtime."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from exporter.errors import UserError
from exporter.eval.perplexity import decoder_logits
from exporter.options import QuantOptions
from graphs.contract import bytes_per_token_at, kv_bytes, kv_bytes_per_token
from tests.helpers import load_ref, prompts, reference_greedy
from validate.kv_bytes import measured_bytes_at, measured_bytes_per_token
from validate.ort_model import OrtModel
from validate.parity import check_parity, hf_original

WINDOW = 6


def window_export(tiny_export, arch="llama", mode="pre-rope", scales="static", ratio=4.0, window=WINDOW,
                  context=256):
    return tiny_export(arch, "full", mode, quant=QuantOptions("spectral", ratio, key_scales=scales,
                                                              value_scales=scales, float_window=window,
                                                              window_context=context))


def with_window(decoder, w: int, quantized: bool = True):
    d = copy.deepcopy(decoder)
    for blk in d.blocks:
        blk.attn.float_window = w
        if not quantized:
            blk.attn.key_quant = blk.attn.value_quant = None
    return d


def step_by_step(decoder, ids: list[int], first: int) -> torch.Tensor:
    """Logits (T, V) of a prefill of the first `first` tokens, then one token at a time through the cache."""
    ids = torch.tensor(ids)
    with torch.no_grad():
        logits, *past = decoder(ids[None, :first], torch.ones(1, first, dtype=torch.int64),
                                torch.arange(first)[None], *decoder.empty_past(1))
        rows = [logits[0]]
        for t in range(first, len(ids)):
            logits, *past = decoder(ids[None, t:t + 1], torch.ones(1, t + 1, dtype=torch.int64),
                                    torch.tensor([[t]]), *past)
            rows.append(logits[0])
    return torch.cat(rows)


@pytest.mark.parametrize("arch,mode,scales", [("llama", "pre-rope", "static"), ("mistral", "post-rope", "token"),
                                              ("gpt2", "post-rope", "static")])
def test_a_prefill_reads_what_generation_reads(arch, mode, scales, tiny_export):
    """Each query of a prefill reads its own last W tokens exact: the same logits as a shorter prefill followed by
    one token at a time, whose windows hold the previous steps' exact latents (in float16). Up to float16 rounding:
    a latent the two paths compute a float32 ulp apart may round to neighbouring float16 values (about 3e-5 of the
    logits here), where reading codes instead of the window would move them by percents."""
    _, _, ref, meta = load_ref(window_export(tiny_export, arch, mode, scales))
    assert {b.attn.float_window for b in ref.blocks} == {WINDOW}
    ids = prompts(meta.sink["token_id"], (30,))[0]
    whole = decoder_logits(ref, ids)                                       # (T, V)
    for first in (1, 4, 17):
        assert (step_by_step(ref, ids, first) - whole).abs().max() <= 1e-3 * whole.abs().max()


def test_the_window_sits_between_the_codes_and_the_float_cache(tiny_export):
    """W = 0 is the codes; a window longer than the text is the float cache up to float16 rounding; a window of 8
    leaves the first 8 positions exact and brings the rest closer."""
    _, _, ref, meta = load_ref(window_export(tiny_export))
    ids = prompts(meta.sink["token_id"], (30,))[0]
    coded, exact = decoder_logits(with_window(ref, 0), ids), decoder_logits(with_window(ref, 0, quantized=False), ids)
    with torch.no_grad():
        long = decoder_logits(with_window(ref, len(ids) + 1), ids)
        part = decoder_logits(with_window(ref, 8), ids)                    # (T, V)
    scale = exact.abs().max()
    assert (long - exact).abs().max() < 1e-3 * scale < (coded - exact).abs().max()
    assert (part[:8] - exact[:8]).abs().max() < 1e-3 * scale < (part[8:] - exact[8:]).abs().max()
    assert (part - exact).abs().mean() < (coded - exact).abs().mean()


@pytest.mark.parametrize("arch,mode,scales", [("llama", "pre-rope", "static"), ("mistral", "post-rope", "token"),
                                              ("gpt2", "post-rope", "static"), ("qwen3", "pre-rope", "static")])
def test_the_graph_keeps_a_float16_window_and_matches_the_reference(arch, mode, scales, tiny_export):
    """ONNX Runtime == the reference with the same codes and window (prefill, greedy steps, a padded batch); the
    window tensors hold the last W-1 tokens in float16; the codes grow as the estimator says and the whole cache
    at the quoted context is within the budget."""
    export = window_export(tiny_export, arch, mode, scales)
    hf, _, ref, meta = load_ref(export)
    layout = meta.layout
    assert layout.float_window == WINDOW and all(w.dtype == "float16" for w in layout.key_windows)
    ort = OrtModel(export, meta)
    result = check_parity(ref, ort, prompts(meta.sink["token_id"]), meta.pad_token_id, original=hf_original(hf))
    assert result.greedy_identical and result.passed, result.to_json()
    assert result.kl_mean < 1e-6 < result.kl_cost
    ids = np.array([prompts(meta.sink["token_id"], (20,))[0]])
    _, past = ort(ids, np.ones_like(ids), np.arange(ids.shape[1])[None], ort.empty_past(1))
    windows = {k: p for (_, k, _, _), p in zip(layout.names(), past) if k.endswith("_window")}
    assert windows and all(p.dtype == np.float16 and p.shape[2] == WINDOW - 1 for p in windows.values())
    assert measured_bytes_per_token(ort) == meta.kv_bytes_per_token == kv_bytes_per_token(layout)
    assert measured_bytes_at(ort, 256) == kv_bytes(layout, 256)       # codes and full windows, from the outputs
    fp16 = 2 * 2 * meta.model["num_layers"] * meta.model["num_kv_heads"] * meta.model["head_dim"]
    at_context = bytes_per_token_at(layout, 256)
    assert meta.kv_bytes_per_token < at_context <= fp16 / 4            # the window's bytes come out of the codes'
    assert at_context >= 0.9 * fp16 / 4


def test_validate_measures_the_window_at_its_context(tiny_export, capsys):
    """`python -m validate` passes a window export and reports its bytes at the quoted context, measured on the
    outputs and equal to the estimate."""
    from validate.__main__ import main
    export = window_export(tiny_export)
    assert main(["--export", export, "--skip-quality", "--prefill", "40", "--decode", "4"]) == 0
    assert "KV bytes at 256 tokens with the float window of 6" in capsys.readouterr().out
    report = json.loads((Path(export) / "report.json").read_text())["kv"]
    assert report["context_bytes_measured"] == report["context_bytes_estimated"] == kv_bytes(
        load_ref(export)[3].layout, 256)
    assert "With the float window of 6 tokens" in (Path(export) / "report.md").read_text()


def test_the_runtime_generates_with_a_window(tiny_export):
    """The runtime carries the windows between steps like any cache tensor: its greedy tokens are the reference's."""
    from runtime import Generator
    export = window_export(tiny_export)
    _, _, ref, meta = load_ref(export)
    ps = [p[1:] for p in prompts(meta.sink["token_id"])]          # the runtime adds the sink itself
    got = Generator(export).generate(ps, max_new_tokens=12, stop_token_ids=[])
    for p, tokens in zip(ps, got.tokens):
        assert tokens == reference_greedy(ref, [meta.sink["token_id"]] + p, 12)


def test_same_inputs_same_bytes(tiny_model_dir, tmp_path):
    """Two exports of one window setting, each from scratch, are the same bytes (model.onnx and projectors)."""
    from exporter.job.run import run_export
    from exporter.options import ExportOptions
    from tests.conftest import CALIB_TOKENS
    quant = QuantOptions("spectral", 4.0, float_window=WINDOW, window_context=256, sensitivity="none")
    outs = [run_export(ExportOptions(model=tiny_model_dir("llama"), k="full", calib_tokens=CALIB_TOKENS, window=256,
                                     out=str(tmp_path / f"w{n}"), build_dir=str(tmp_path / f"b{n}"), quant=quant))
            for n in range(2)]
    for name in ("model.onnx", "projectors.safetensors"):
        assert (Path(outs[0]) / name).read_bytes() == (Path(outs[1]) / name).read_bytes()


@pytest.mark.parametrize("window,context,match", [(1, 2048, "0 \\(none\\) or >= 2"), (-2, 2048, ">= 2"),
                                                  (64, 32, "at least QUANT_WINDOW")])
def test_bad_windows_are_refused(window, context, match):
    with pytest.raises(UserError, match=match):
        QuantOptions("spectral", 8.0, float_window=window, window_context=context).check()


def test_a_saved_session_keeps_its_window(tiny_export, tmp_path):
    """The windows go into a saved session with the codes: resuming gives the unbroken call's tokens."""
    from runtime import Generator
    from tests.runtime.test_saved import save_and_resume
    export = window_export(tiny_export)
    meta = load_ref(export)[3]
    gen = Generator(export)
    ps = [p[1:] for p in prompts(meta.sink["token_id"])]
    whole = gen.generate(ps, max_new_tokens=12, stop_token_ids=[])
    a, b = save_and_resume(gen, tmp_path / "s.kvs", ps, 5, 7, stop_token_ids=[])
    assert [x + y for x, y in zip(a.tokens, b.tokens)] == whole.tokens


def test_the_probes_code_without_the_window(tiny_model_dir, tmp_path, monkeypatch):
    """The sensitivity probes measure each tensor's code without the window (probed with it, SmolLM2's allocation
    cost more: docs/quantization.md); the export itself has it."""
    from exporter.job import stages
    from exporter.job.run import run_export
    from exporter.options import ExportOptions
    from tests.conftest import CALIB_TOKENS
    seen = []
    probe = stages.measured_sensitivities

    def recording(hf, decoder, cfg, coded, predicted, windows):
        seen.append(coded.info["quant"].get("float_window", 0))
        return probe(hf, decoder, cfg, coded, predicted, windows)
    monkeypatch.setattr(stages, "measured_sensitivities", recording)
    quant = QuantOptions("spectral", 4.0, float_window=WINDOW, window_context=256)
    out = run_export(ExportOptions(model=tiny_model_dir("llama"), k="full", calib_tokens=CALIB_TOKENS, window=256,
                                   out=str(tmp_path / "w"), build_dir=str(tmp_path / "b"), quant=quant))
    assert seen == [0] and load_ref(out)[3].layout.float_window == WINDOW


def test_a_window_longer_than_a_bounded_sliding_window_is_refused(tiny_model_dir, tmp_path):
    """A sliding-window layer whose cache holds its window only cannot keep a longer float window beside it."""
    from exporter.job.run import run_export
    from exporter.options import ExportOptions
    quant = QuantOptions("spectral", 4.0, float_window=32, window_context=256)
    with pytest.raises(UserError, match=r"QUANT_WINDOW=32 is longer than this model's sliding window of 16 tokens: "
                                        r"use QUANT_WINDOW <= 16, or WINDOW_CACHE=full"):
        run_export(ExportOptions(model=tiny_model_dir("mistral_window"), k="full", window=256,
                                 out=str(tmp_path / "w"), build_dir=str(tmp_path / "b"), quant=quant))
    assert not (tmp_path / "w").exists()
