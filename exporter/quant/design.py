"""Quantized projectors: bits per latent component for a byte budget, from calibration statistics .

Each compressed tensor (a layer's keys or values) caches latents c = encode (x - mean). An error e_j in
component j reaches the layer's output as decode_j e_j, weighed by the output-aware metric M (projectors/metric.py:
what attention scores and o_proj feel), so at b bits component j costs

    gain_j D_j(b) s_t,   gain_j = decode_j^T M decode_j

D_j(b): the squared error the static quantizer leaves in it, measured on calibration samples at every width
with the step fitted for that width (quant/scales.py: keys and values are heavier-tailed than a Gaussian, and a
Gaussian step clips them), or the Gaussian quantizer's var_j x gaussian_mse(b) without samples or with token
scales. s_t: the tensor's measured KL per unit of that error (quant/probe.py). The bits go where they cut it most
(quant/allocation.py: spectral or uniform), within the budget counted in packed bytes, scale bytes included.
A float window (q.float_window = W) keeps the exact latents of the last W-1 tokens in float16 beside the codes;
its bytes, spread over q.window_context tokens (the context the ratio is quoted for), come out of the budget:
(W-1) x 2 x (the kept components) / context per token. The probes code their tensor without the window: probed with
it in place, the exchange rates put SmolLM2's 8x codes (2,762 B + a 16-token window) at +14.03 % on WikiText-2
where the same budget probed without it costs less (docs/quantization.md).

Entry point: `quantize_projectors(proj, options, Sources(...), refit, sensitivity)`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..calib.statistics import Statistics
from ..codec.linear import Projectors
from ..codec.scalar import gaussian_mse
from ..errors import UserError
from ..model.config import DecoderConfig
from ..options import QuantOptions
from .allocation import MAX_BITS, CodedTensor, spectral_bits, uniform_bits
from .scales import latent_statistics, scale_search


def float16_bytes(cfg) -> int:
    """Bytes per token of the model's uncompressed float16 cache, every layer, keys and values."""
    return 2 * cfg.num_layers * cfg.kv_dim * 2


@dataclass(frozen=True)
class Sources:
    """What the design reads about the tensors it codes, beside the projectors themselves."""
    stats: Statistics                   # calibration covariances and sink vectors
    cfg: DecoderConfig
    tap_of: Callable[[str], str]        # 'key' | 'value' -> the calibration tap its codec codes
    sink_id: int | None
    metric: Callable | None = None      # (layer, kind) -> (covariance, output-aware metric M), or None (M = I)
    samples: dict | None = None         # {(layer, tap): (N, dim)} calibration vectors, for fitted static steps


def quantize_projectors(proj: Projectors, q: QuantOptions, src: Sources, refit=None,
                        sensitivity=None) -> Projectors:
    """Projectors whose codecs carry bits, scales and the sink's exact latent, for q's byte budget.

    refit(key_ranks, value_ranks) -> projectors fitted at those ranks: when spectral bits drop components, the
    code is fitted again at the ranks kept (so the sink, whose directions each fit includes, stays exact) and
    the bits allocated again, every component at least one bit. With src.samples and static scales each
    component's error at every bit width is measured on them (quant/scales.py) instead of taken from the
    Gaussian. sensitivity(coded projectors, {(layer, kind): predicted error}) -> {(layer, kind): factor}:
    measured exchange rates (quant/probe.py) the predicted errors are multiplied by, from a first allocation."""
    q.check()
    cfg = src.cfg
    curves, sigmas, scales = _curves(proj, src, q)
    factors = None
    for _ in range(q.probe_rounds if sensitivity is not None else 0):
        bits = _allocate(_times(curves, factors), cfg, q, min_bits=1)   # every tensor coded and probed
        predicted = {t: sum(c[b] for c, b in zip(curves[t], bits[t])) for t in bits}
        factors = sensitivity(_coded(proj, bits, sigmas, scales, src, replace(q, float_window=0)), predicted)
    bits = _allocate(_times(curves, factors), cfg, q)
    kept = {kind: [max(1, sum(b > 0 for b in bits[(i, kind)])) for i in range(cfg.num_layers)]
            for kind in ("key", "value")}
    if refit is not None and q.allocation == "spectral" and kept != proj.ranks():
        proj = refit(kept["key"], kept["value"])
        curves, sigmas, scales = _curves(proj, src, q)
        bits = _allocate(_times(curves, factors), cfg, q, min_bits=1)
    out = _coded(proj, bits, sigmas, scales, src, q)
    if factors is not None:
        out.info["quant"]["sensitivity"] = {f"{i}.{kind}": f for (i, kind), f in sorted(factors.items())}
    return out


def sink_latent(c, src: Sources, layer: int, kind: str):
    """The sink's exact latent under codec c (r,), or None without a sink token."""
    return None if src.sink_id is None else c.encode @ (src.stats.sinks[(layer, src.tap_of(kind))] - c.mean)


def with_exact_sinks(proj: Projectors, src: Sources) -> Projectors:
    """The projectors with every quantized codec's sink latent computed again (after its encode changed)."""
    fix = lambda i, kind, c: c if c is None or c.bits is None else replace(c, sink=sink_latent(c, src, i, kind))
    return replace(proj, keys=[fix(i, "key", c) for i, c in enumerate(proj.keys)],
                   values=[fix(i, "value", c) for i, c in enumerate(proj.values)])


def _times(curves: dict, factors: dict | None) -> dict:
    return curves if factors is None else {t: [[e * factors[t] for e in c] for c in cs] for t, cs in curves.items()}


def _coded(proj, bits, sigmas, scales, src: Sources, q: QuantOptions) -> Projectors:
    """The projectors with each codec cut to its components with bits, carrying bits, scales and sink.
    scales {(layer, kind): (MAX_BITS, r)} fitted static scales per bit width, or None (the sigmas)."""
    keys, values = list(proj.keys), list(proj.values)
    for (i, kind), b in bits.items():
        c = proj.key(i) if kind == "key" else proj.value(i)
        keep = [j for j, x in enumerate(b) if x > 0]
        if not keep:
            raise UserError(f"QUANT_RATIO={q.ratio:g} leaves layer {i}'s {kind}s no bits: lower QUANT_RATIO")
        sink = sink_latent(c, src, i, kind)
        sigma = sigmas[(i, kind)]
        if scales is not None and (i, kind) in scales:
            sigma = torch.stack([scales[(i, kind)][max(x, 1) - 1, j] for j, x in enumerate(b)])
        coded = replace(c, bits=torch.tensor(b, dtype=torch.long), sigma=sigma, sink=sink).select(keep)
        (keys if kind == "key" else values)[i] = coded
    info = {**proj.info, "quant": {"allocation": q.allocation, "ratio": q.ratio,
                                   "target_bytes": int(float16_bytes(src.cfg) // q.ratio),
                                   "scales": {"key": q.key_scales, "value": q.value_scales}, "group": q.group,
                                   "weights": q.weights}}
    if q.float_window:
        kept = sum(len(keep) for keep in ([j for j, x in enumerate(b) if x > 0] for b in bits.values()))
        info["quant"].update(float_window=q.float_window, window_context=q.window_context,
                             window_bytes_per_token=window_bytes(kept, q))
    return Projectors(proj.key_mode, keys, values, info)


def _curves(proj: Projectors, src: Sources, q: QuantOptions):
    """Per tensor: each component's predicted error at 0..MAX_BITS bits {(layer, kind): [[9 floats]]}, its
    sigma (r,), and with samples and static scales the fitted scale per bit width (MAX_BITS, r)."""
    accs, cfg, tap_of, metric, samples = src.stats.accumulators, src.cfg, src.tap_of, src.metric, src.samples
    slots = [(i, kind) for i in range(cfg.num_layers) for kind in ("key", "value")
             if (proj.key(i) if kind == "key" else proj.value(i)) is not None]
    if len(slots) < 2 * cfg.num_layers:
        raise UserError("a quantized cache codes every layer's keys and values: use K (or K_KEY/K_VALUE) "
                        "'full' or a rank for all of them, not a mix with uncompressed layers")
    curves, sigmas, scales = {}, {}, {}
    for i, kind in tqdm(slots, desc="quantizer errors", unit="tensor", leave=False):
        M = metric(i, kind)[1] if metric is not None and q.weights == "output" else None
        codec = proj.key(i) if kind == "key" else proj.value(i)
        sigma, gain = latent_statistics(codec, accs[(i, tap_of(kind))].covariance(), M)
        sigmas[(i, kind)] = sigma
        if samples is not None and q.scales(kind) == "static":
            z = ((samples[(i, tap_of(kind))] - codec.mean) @ codec.encode.T).float()            # (N, r)
            errors, scales[(i, kind)] = scale_search(z, sigma.float(), list(range(1, MAX_BITS + 1)))
            table = torch.cat([z.pow(2).mean(0)[None], errors]).double() * gain             # (9, r)
        else:
            table = torch.tensor([gaussian_mse(b) for b in range(MAX_BITS + 1)], dtype=torch.float64)[:, None] \
                * (sigma.pow(2) * gain)                                                      # (9, r)
        curves[(i, kind)] = table.T.tolist()
    return curves, sigmas, (scales or None)


def window_bytes(components: int, q: QuantOptions) -> float:
    """Bytes per token a float window of `components` latent components costs at q.window_context tokens."""
    if not q.float_window:
        return 0.0
    held = min(q.float_window - 1, q.window_context)
    return held * 2 * components / q.window_context                   # float16


def _allocate(curves: dict, cfg, q: QuantOptions, min_bits: int = 0) -> dict:
    """Bits per component of every tensor, {(layer, kind): [bits]}, for q's budget: the codes' bytes plus the
    float window's (of the components the bits keep) within float16 bytes / ratio."""
    slots = list(curves)
    tensors = [CodedTensor(curves[t], q.scales(t[1]), [0] * len(curves[t])) for t in slots]
    target = int(float16_bytes(cfg) // q.ratio)
    budget = target
    for _ in range(16):              # the window's bytes depend on the components kept, which the budget sets
        if q.allocation == "spectral":
            spectral_bits(tensors, budget, q.group, min_bits)
        else:
            uniform_bits(tensors, budget, q.group)
        window = window_bytes(sum(b > 0 for t in tensors for b in t.bits), q)
        if budget + window <= target:
            return {t: x.bits for t, x in zip(slots, tensors)}
        budget = min(budget - 1, target - math.ceil(window))
    raise UserError(f"QUANT_WINDOW={q.float_window} leaves the codes no room within QUANT_RATIO={q.ratio:g}: "
                    "use a shorter window or a lower ratio")
