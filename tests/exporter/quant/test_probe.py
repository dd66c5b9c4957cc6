"""Quantized latents (exporter/quant.py, exporter/quantize.py): the quantizer's math, packing, bit allocation,
and ONNX Runtime against the PyTorch reference with the same quantizer on every architecture."""
from __future__ import annotations



from exporter.codec.store import load_projectors
from exporter.model.config import from_hf
from exporter.options import QuantOptions
from exporter.quant.probe import measured_sensitivities, one_tensor
from tests.helpers import load_ref
from tests.helpers import prompts


def quant_export(tiny_export, arch, k, mode, method, allocation, scales, ratio=4.0):
    return tiny_export(arch, k, mode, method=method,
                       quant=QuantOptions(allocation, ratio, key_scales=scales, value_scales=scales))


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
