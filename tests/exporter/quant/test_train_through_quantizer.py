"""METHOD=trained with QUANT (job/stages.fit_quantized): the bits are chosen on the output-aware code, then encode
and decode are trained with the export's rounding in the forward pass (projectors/coded.py, straight-through);
bits and steps stay, each sink latent follows the trained encode, and the export matches its reference."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from exporter.calib.capture import key_tap
from exporter.calib.text import training_windows
from exporter.codec.linear import Codec
from exporter.codec.quantizer import LatentQuantizer
from exporter.errors import UserError
from exporter.job.checks import is_quantized
from exporter.job.job import ExportJob
from exporter.job.stages import fit_projectors, quantize, train_through_quantizer
from exporter.model.fold import build_decoder
from exporter.options import ExportOptions, QuantOptions, TrainOptions
from exporter.projectors.coded import CodedDecoder, TrainableCodec
from exporter.projectors.train import train_projectors
from tests.helpers import CALIB_TOKENS, load_ref, prompts
from validate.ort_model import OrtModel
from validate.parity import check_parity, hf_original
from validate.tolerances import within

TRAIN = TrainOptions(max_steps=8, window=128, eval_every=4, patience=10, heldout_tokens=512)


def test_the_forward_pass_rounds_as_the_export_stores():
    """TrainableCodec's rounded latents are LatentQuantizer's decode(encode(c)), the sink's row left exact, and
    the gradient passes the rounding unchanged."""
    torch.manual_seed(0)
    dim, r = 12, 5
    basis = torch.linalg.qr(torch.randn(dim, r, dtype=torch.float64))[0]
    bits, sigma = torch.tensor([1, 2, 3, 4, 1]), torch.rand(r, dtype=torch.float64) + 0.5
    codec = Codec(basis, torch.zeros(dim, dtype=torch.float64), bits=bits, sigma=sigma, sink=torch.zeros(r))
    trainable = TrainableCodec(codec)
    c = (torch.randn(1, 40, r) * 2).requires_grad_()
    rounded = trainable.rounded(c)
    quant = LatentQuantizer(bits.tolist(), sigma.tolist())
    stored = quant.decode(quant.encode(c.detach()[:, None]))[:, 0]          # (1, 40, r)
    assert torch.equal(rounded[:, 0], c[:, 0]) and torch.allclose(rounded[:, 1:], stored[:, 1:], atol=1e-6)
    rounded.sum().backward()
    assert torch.equal(c.grad, torch.ones_like(c))


@pytest.fixture(scope="module")
def job(tiny_model_dir):
    o = ExportOptions(model=tiny_model_dir("llama"), k="full", calib_tokens=CALIB_TOKENS, window=256,
                      method="trained", quant=QuantOptions("spectral", 4.0), train=TRAIN)
    return ExportJob.start(o)


def quantized_code(job, float_window: int = 0):
    full = [job.config.kv_dim] * job.config.num_layers
    q = replace(job.options.quant, float_window=float_window)
    return quantize(job, fit_projectors(job, full, full, "output-aware"), q)


def test_training_computes_what_the_export_computes(job):
    """The coded model training differentiates (the uncompressed decoder, each tensor coded and rounded) gives the
    logits of the export's reference decoder, with a float window too (each query reads its last W exact): so
    training optimises the cache the export has, the window's band included."""
    train, _ = training_windows(job.tokenizer, job.options.calib, job.options.calib_tokens, TRAIN, job.sink)
    ids = torch.tensor([train[0][:96]])
    logits = {}
    for window in (0, 6):
        proj = quantized_code(job, window)
        assert proj.info["quant"].get("float_window", 0) == window
        ref = build_decoder(job.hf, proj)
        with torch.no_grad():
            exported = ref(ids, torch.ones_like(ids), torch.arange(ids.shape[1])[None], *ref.empty_past(1))[0]
            trained = CodedDecoder(job.decoder, proj, key_tap(job.config, proj.key_mode))(ids)[0]
        assert within((trained - exported).abs().max().item(), exported.abs().max().item())
        logits[window] = trained
    assert (logits[6] - logits[0]).abs().max() > 1e-2      # the window changes what is computed


def test_training_through_the_quantizer_lowers_the_coded_kl(job):
    """On the training windows (a random tiny model need not generalise): the KL of the quantized model falls."""
    init = quantized_code(job)
    train, _ = training_windows(job.tokenizer, job.options.calib, job.options.calib_tokens,
                                TRAIN, job.sink)
    trained = train_projectors(job.decoder, init, key_tap(job.config, init.key_mode), train, train, TRAIN,
                               progress=False)
    curve = [c["heldout"] for c in trained.info["training"]["curve"]]
    assert min(curve[1:]) < curve[0]
    assert trained.info["training"]["through_quantizer"] and trained.info["training"]["float_window"] == 0


def test_bits_and_steps_stay_and_the_sink_follows_the_encode(job):
    init = quantized_code(job)
    trained = train_through_quantizer(job, init)
    stats, tap_of = job.statistics(), job.tap_of(init.key_mode)
    moved = False
    for i in range(job.config.num_layers):
        for kind, before, after in (("key", init.key(i), trained.key(i)), ("value", init.value(i), trained.value(i))):
            assert torch.equal(before.bits, after.bits) and torch.equal(before.sigma, after.sigma)
            sink = after.encode @ (stats.sinks[(i, tap_of(kind))] - after.mean)
            assert torch.allclose(after.sink, sink)
            moved |= not torch.allclose(before.encode, after.encode)
    assert moved
    assert trained.info["quant"] == init.info["quant"] and trained.info["method"] == "trained"


def test_the_export_matches_its_reference(tiny_export):
    """ONNX Runtime == the reference of the trained codes by the quantized parity criterion, greedy identical."""
    export = tiny_export("llama", "full", method="trained", quant=QuantOptions("spectral", 4.0), train=TRAIN)
    hf, _, ref, meta = load_ref(export)
    info = json.loads((Path(export) / "projectors.json").read_text())
    assert info["method"] == "trained" and info["training"]["through_quantizer"] and info["quant"]["ratio"] == 4.0
    result = check_parity(ref, OrtModel(export, meta), prompts(meta.sink["token_id"]), meta.pad_token_id,
                          original=hf_original(hf))
    assert result.greedy_identical and result.passed, result.to_json()


def test_token_scales_are_refused():
    o = ExportOptions(method="trained", quant=QuantOptions("spectral", 4.0, value_scales="token"))
    with pytest.raises(UserError, match="METHOD=trained trains through a quantizer of static steps: use "
                                        "QUANT_SCALES=static"):
        is_quantized(o)
