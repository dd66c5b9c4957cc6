"""Quantized projectors: bits per latent component for a byte budget, from calibration statistics (issue #6).

Each compressed tensor (a layer's keys or values) caches latents c = encode (x - mean). An error e_j in
component j reaches the layer's output as decode_j e_j, weighed by the output-aware metric M (whiten.py: what
attention scores and o_proj feel), so at b bits component j costs

    gain_j D_j(b) s_t,   gain_j = decode_j^T M decode_j

D_j(b): the squared error the static quantizer leaves in it, measured on calibration samples at every width
with the step fitted for that width (scale_search: keys and values are heavier-tailed than a Gaussian, and a
Gaussian step clips them), or the Gaussian quantizer's var_j x gaussian_mse(b) without samples or with token
scales. s_t: the tensor's measured KL per unit of that error (probe.py). The bits go where they cut it most:
  spectral  greedy reverse water-filling over every component of every layer at once: components whose next
            bit buys least get none and are dropped.
  uniform   the same bits for every component of the code (its rank fixed by K), the bits left over one
            more each for the heaviest components: the plain quantizer, for comparison at equal bytes.
Both stop at the budget counted in packed bytes, scale bytes included (quant.bytes_per_token).
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass, replace

import torch
from tqdm.auto import tqdm

from .errors import UserError
from .projectors import Codec, Projectors
from .quant import SCALES, bytes_per_token, gaussian_mse, gaussian_step

ALLOCATIONS = ("spectral", "uniform")
MAX_BITS = 8
SCALE_MULTIPLIERS = torch.logspace(-0.5, 3, 36, base=2, dtype=torch.float64)   # 0.71 .. 8 x the std


@dataclass
class QuantOptions:
    allocation: str | None = None    # None: a float cache; 'spectral' | 'uniform'
    ratio: float = 4.0               # the cache is this many times smaller than a float16 one (scales counted)
    key_scales: str = "static"       # 'static' | 'token' (quant.py)
    value_scales: str = "static"
    group: int = 64                  # components per token scale
    weights: str = "output"          # 'output': weights in the output-aware metric; 'variance': var_j alone
    fit_tokens: int = 4096           # calibration tokens the static scales are fitted to (0: Gaussian steps)
    sensitivity: str = "measured"    # 'measured': weights times each tensor's probed KL per unit (probe.py);
                                     # 'none': the weights as they are
    probe_tokens: int = 1024         # calibration text after the calibration tokens, for the probes
    probe_rounds: int = 1            # probe again at the allocation the last probes gave, this many times in all

    def scales(self, kind: str) -> str:
        return self.key_scales if kind == "key" else self.value_scales

    def check(self) -> None:
        if self.allocation not in ALLOCATIONS:
            raise UserError(f"QUANT={self.allocation!r} is unknown: use {' or '.join(ALLOCATIONS)}")
        if not self.ratio > 1:
            raise UserError(f"QUANT_RATIO={self.ratio:g} must be > 1 (times fewer bytes than a float16 cache)")
        for s in (self.key_scales, self.value_scales):
            if s not in SCALES:
                raise UserError(f"quantizer scales {s!r} are unknown: use {' or '.join(SCALES)}")
        if self.group < 1:
            raise UserError(f"QUANT_GROUP={self.group} must be >= 1")
        if self.sensitivity not in ("measured", "none"):
            raise UserError(f"quantizer sensitivity {self.sensitivity!r} is unknown: use measured or none")
        if self.weights not in ("output", "variance"):
            raise UserError(f"quantizer weights {self.weights!r} are unknown: use output or variance")


def float16_bytes(cfg) -> int:
    """Bytes per token of the model's uncompressed float16 cache, every layer, keys and values."""
    return 2 * cfg.num_layers * cfg.kv_dim * 2


def latent_statistics(codec: Codec, cov: torch.Tensor, metric: torch.Tensor | None):
    """(sigma (r,), gain (r,)) of a codec's latents: their standard deviations under a covariance (dim, dim),
    and what a unit of squared error in each costs in the metric (decode_j^T M decode_j; M = I without one)."""
    var = torch.einsum("rd,de,re->r", codec.encode, cov, codec.encode).clamp_min(0)       # (r,)
    gain = (codec.decode * (metric @ codec.decode)).sum(0) if metric is not None else \
        codec.decode.pow(2).sum(0)                                                         # (r,)
    return var.sqrt(), gain


def distortion(weight: float, bits: int) -> float:
    """The error a Gaussian component of this weight (variance x gain) keeps at `bits` with the Gaussian
    quantizer: not the high-rate 4^-b, which puts the first bit at 3/4 of the variance where the quantizer
    removes 64 %, and so spreads bits too thin at low rates."""
    return weight * gaussian_mse(bits)


@dataclass
class _Tensor:
    curves: list[list[float]]       # per component, its predicted error at 0..MAX_BITS bits
    scales: str
    bits: list[int]

    @classmethod
    def gaussian(cls, weights: list[float], scales: str) -> "_Tensor":
        return cls([[distortion(w, b) for b in range(MAX_BITS + 1)] for w in weights], scales, [0] * len(weights))

    def nbytes(self, group: int) -> int:
        return bytes_per_token(self.bits, self.scales, group)

    def gain(self, j: int) -> float:
        """What the next bit of component j removes."""
        b = self.bits[j]
        return self.curves[j][b] - self.curves[j][b + 1]


def spectral_bits(tensors: list[_Tensor], target: int, group: int, min_bits: int = 0) -> None:
    """Greedy reverse water-filling across all tensors within `target` packed bytes (sets each .bits), every
    component starting from min_bits."""
    for t in tensors:
        t.bits = [min_bits] * len(t.curves)
    total = sum(t.nbytes(group) for t in tensors)
    if total > target:
        raise UserError(f"{target} bytes per token cannot hold {min_bits} bit(s) for each latent component: "
                        "lower K or QUANT_RATIO")
    heap = [(-t.gain(j), ti, j) for ti, t in enumerate(tensors) for j in range(len(t.curves)) if t.gain(j) > 0]
    heapq.heapify(heap)
    while heap:
        gain, ti, j = heapq.heappop(heap)
        t = tensors[ti]
        before = t.nbytes(group)
        t.bits[j] += 1
        after = t.nbytes(group)
        if total - before + after > target:
            t.bits[j] -= 1              # this bit does not fit; smaller ones elsewhere still may
            continue
        total += after - before
        if t.bits[j] < MAX_BITS and t.gain(j) > 0:
            heapq.heappush(heap, (-t.gain(j), ti, j))


def uniform_bits(tensors: list[_Tensor], target: int, group: int) -> None:
    """Every component the same bits, the most that fit, then one more for the heaviest while they fit."""
    n = sum(len(t.curves) for t in tensors)
    for b in range(MAX_BITS, 0, -1):
        for t in tensors:
            t.bits = [b] * len(t.curves)
        if sum(t.nbytes(group) for t in tensors) <= target:
            break
    else:
        raise UserError(f"{target} bytes per token cannot hold one bit for each of {n} latent components: "
                        "lower K or QUANT_RATIO")
    if b == MAX_BITS:
        return
    total = sum(t.nbytes(group) for t in tensors)
    order = sorted(((c[0], ti, j) for ti, t in enumerate(tensors) for j, c in enumerate(t.curves)), reverse=True)
    for _, ti, j in order:
        t = tensors[ti]
        before = t.nbytes(group)
        t.bits[j] += 1
        if total - before + t.nbytes(group) > target:
            t.bits[j] -= 1
            continue
        total += t.nbytes(group) - before


def scale_search(z: torch.Tensor, sigma: torch.Tensor, bits: list[int]):
    """For each bit width in `bits` and each component of the samples z (N, r): the least squared error of a
    static quantizer over step multiples gaussian_step(b) x sigma x SCALE_MULTIPLIERS, and the scale
    (sigma x the best multiplier) that gives it. Returns errors, scales, both (len(bits), r)."""
    errors, scales = [], []
    for b in bits:
        half = 2.0 ** b / 2
        best = torch.full_like(sigma, float("inf"))
        scale = sigma.clone()
        for m in SCALE_MULTIPLIERS:
            step = gaussian_step(b) * sigma * m
            k = torch.clamp(torch.floor(z / step), -half, half - 1)
            err = ((k + 0.5) * step - z).pow(2).mean(0)                             # (r,)
            better = err < best
            best, scale = torch.where(better, err, best), torch.where(better, sigma * m, scale)
        errors.append(best)
        scales.append(scale)
    return torch.stack(errors), torch.stack(scales)


def quantize_projectors(proj: Projectors, stats, metric, cfg, tap_of, sink_id, q: QuantOptions,
                        refit=None, samples=None, sensitivity=None) -> Projectors:
    """Projectors whose codecs carry bits, scales and the sink's exact latent, for q's byte budget.

    stats: kv_statistics' (accumulators, sinks, info); metric(layer, kind) -> (cov, M) or None (variance
    weights); tap_of(kind) -> the calibration tap the codec codes. refit(key_ranks, value_ranks) -> projectors
    fitted at those ranks: when spectral bits drop components, the code is fitted again at the ranks kept (so
    the sink, whose directions each fit includes, stays exact) and the bits allocated again, every component
    at least one bit. samples {(layer, tap): (N, dim)}: calibration vectors; with static scales each
    component's error at every bit width is measured on them (scale_search) instead of taken from the Gaussian.
    sensitivity(coded projectors, {(layer, kind): predicted error}) -> {(layer, kind): factor}: measured
    exchange rates (probe.py) the predicted errors are multiplied by, from a first allocation."""
    q.check()
    curves, sigmas, scales = _curves(proj, stats, metric, cfg, tap_of, q, samples)
    factors = None
    for _ in range(q.probe_rounds if sensitivity is not None else 0):
        bits = _allocate(_times(curves, factors), cfg, q, min_bits=1)   # every tensor coded and probed
        predicted = {t: sum(c[b] for c, b in zip(curves[t], bits[t])) for t in bits}
        factors = sensitivity(_coded(proj, bits, sigmas, scales, cfg, stats, tap_of, sink_id, q), predicted)
    bits = _allocate(_times(curves, factors), cfg, q)
    kept = {kind: [max(1, sum(b > 0 for b in bits[(i, kind)])) for i in range(cfg.num_layers)]
            for kind in ("key", "value")}
    if refit is not None and q.allocation == "spectral" and kept != proj.ranks():
        proj = refit(kept["key"], kept["value"])
        curves, sigmas, scales = _curves(proj, stats, metric, cfg, tap_of, q, samples)
        bits = _allocate(_times(curves, factors), cfg, q, min_bits=1)
    out = _coded(proj, bits, sigmas, scales, cfg, stats, tap_of, sink_id, q)
    if factors is not None:
        out.info["quant"]["sensitivity"] = {f"{i}.{kind}": f for (i, kind), f in sorted(factors.items())}
    return out


def _times(curves: dict, factors: dict | None) -> dict:
    return curves if factors is None else {t: [[e * factors[t] for e in c] for c in cs] for t, cs in curves.items()}


def _coded(proj, bits, sigmas, scales, cfg, stats, tap_of, sink_id, q: QuantOptions) -> Projectors:
    """The projectors with each codec cut to its components with bits, carrying bits, scales and sink.
    scales {(layer, kind): (MAX_BITS, r)} fitted static scales per bit width, or None (the sigmas)."""
    sinks = stats[1]
    keys, values = list(proj.keys), list(proj.values)
    for (i, kind), b in bits.items():
        c = proj.key(i) if kind == "key" else proj.value(i)
        keep = [j for j, x in enumerate(b) if x > 0]
        if not keep:
            raise UserError(f"QUANT_RATIO={q.ratio:g} leaves layer {i}'s {kind}s no bits: lower QUANT_RATIO")
        sink = None if sink_id is None else c.encode @ (sinks[(i, tap_of(kind))] - c.mean)
        sigma = sigmas[(i, kind)]
        if scales is not None and (i, kind) in scales:
            sigma = torch.stack([scales[(i, kind)][max(x, 1) - 1, j] for j, x in enumerate(b)])
        coded = replace(c, bits=torch.tensor(b, dtype=torch.long), sigma=sigma, sink=sink).select(keep)
        (keys if kind == "key" else values)[i] = coded
    info = {**proj.info, "quant": {"allocation": q.allocation, "ratio": q.ratio,
                                   "target_bytes": int(float16_bytes(cfg) // q.ratio),
                                   "scales": {"key": q.key_scales, "value": q.value_scales}, "group": q.group,
                                   "weights": q.weights}}
    return Projectors(proj.key_mode, keys, values, info)


def _curves(proj: Projectors, stats, metric, cfg, tap_of, q: QuantOptions, samples):
    """Per tensor: each component's predicted error at 0..MAX_BITS bits {(layer, kind): [[9 floats]]}, its
    sigma (r,), and with samples and static scales the fitted scale per bit width (MAX_BITS, r)."""
    accs = stats[0]
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


def _allocate(curves: dict, cfg, q: QuantOptions, min_bits: int = 0) -> dict:
    """Bits per component of every tensor, {(layer, kind): [bits]}, for q's budget."""
    slots = list(curves)
    tensors = [_Tensor(curves[t], q.scales(t[1]), [0] * len(curves[t])) for t in slots]
    target = int(float16_bytes(cfg) // q.ratio)
    if q.allocation == "spectral":
        spectral_bits(tensors, target, q.group, min_bits)
    else:
        uniform_bits(tensors, target, q.group)
    return {t: x.bits for t, x in zip(slots, tensors)}
