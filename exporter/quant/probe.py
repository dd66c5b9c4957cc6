"""Sensitivity probes for quantized caches: what one tensor's code costs in KL on probe text, all else exact.

The bit allocation (quant/design.py) predicts each tensor's error as sum_j weight_j 4^-bits_j in its layer's
output-aware metric, but a unit of that error costs the model differently from layer to layer, and a key's
metric (attention logits) and a value's (the residual stream) are not even in the same units. A probe per
tensor measures the exchange rate: code only that tensor as a first allocation would, take the KL of the
model's next-token distribution from the exact model's on probe text (calibration text after the calibration
tokens, never the evaluation file), and divide by the predicted error. The allocation then weighs each
tensor's components by it, so bits go where they buy the most KL.

Entry point: `measured_sensitivities(hf, decoder, cfg, coded, predicted, windows)`.
"""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..codec.linear import Projectors
from ..eval.perplexity import decoder_logits
from ..model.fold import build_attention


def _logprobs(decoder, ids: list[int]) -> torch.Tensor:
    """Log-probabilities (T-1, V) at every position after the sink (the sink's own output is exact anyway)."""
    return torch.log_softmax(decoder_logits(decoder, ids)[1:].float(), -1)


def _kl(decoder, windows, teacher) -> float:
    total, n = 0.0, 0
    for ids, p_log in zip(windows, teacher):
        q_log = _logprobs(decoder, ids)
        total += (p_log.exp() * (p_log - q_log)).sum().item()     # one float32 sum over (T-1, V): the bits
                                                                    # depend on these figures, keep their rounding
        n += len(ids) - 1
    return total / n


def one_tensor(proj: Projectors, layer: int, kind: str) -> Projectors:
    """proj with every tensor but (layer, kind) uncompressed."""
    L = len(proj.keys)
    keep = lambda items, k: [items[i] if (i == layer and k == kind) else None for i in range(L)]
    return Projectors(proj.key_mode, keep(proj.keys, "key"), keep(proj.values, "value"), proj.info)


def measured_sensitivities(hf, decoder, cfg, coded: Projectors, predicted: dict, windows) -> dict:
    """{(layer, kind): KL per unit of predicted error}, each from a probe with only that tensor coded as in
    `coded` (quantized projectors); decoder is the exact compact decoder, its layers swapped one at a time."""
    with torch.no_grad():
        teacher = [_logprobs(decoder, ids) for ids in windows]
        out = {}
        for (i, kind) in tqdm(sorted(predicted), desc="probing quantizer sensitivity", unit="tensor"):
            exact = decoder.blocks[i].attn
            decoder.blocks[i].attn = build_attention(hf, cfg, i, one_tensor(coded, i, kind))
            try:
                out[(i, kind)] = max(_kl(decoder, windows, teacher), 0.0) / max(predicted[(i, kind)], 1e-30)
            finally:
                decoder.blocks[i].attn = exact
    return out
