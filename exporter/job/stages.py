"""The stages of an export between loading and writing, each taking the job and returning what it makes:

    choose_auto_ranks(job)                   K=auto: per-layer ranks from a byte or perplexity budget
    fit_projectors(job, key_ranks, ...)      PCA, output-aware, trained or raw codes at given ranks
    quantize(job, projectors)                bits, steps and the sink's latent for a quantized cache
    fit_quantized(job, key_ranks, ...)       both for a quantized cache; METHOD=trained trains through the
                                             quantizer (train_through_quantizer)
    fit_cache_quant(job)                     steps of the int8 cache onnxruntime's fused attention writes

Statistics, metrics and samples come from the job, computed once however many stages read them.

Entry point: `choose_auto_ranks`, `fit_projectors`, `quantize`, `fit_quantized`.
"""
from __future__ import annotations

from dataclasses import asdict, replace

from graphs.contract import DTYPE_BYTES

from ..calib.capture import key_tap
from ..calib.text import fitting_window, probe_windows, training_windows
from ..codec.cache_quant import CacheQuant, fit_scales, rotation_matrix
from ..codec.linear import Projectors
from ..options import QuantOptions, TrainOptions
from ..projectors.metric import output_whitening
from ..projectors.pca import fit_pca, fit_raw
from ..projectors.train import train_projectors
from ..quant.design import Sources, quantize_projectors, with_exact_sinks
from ..quant.probe import measured_sensitivities, measured_sensitivities_streamed
from ..ranks.auto import Search, choose_ranks
from .job import ExportJob


def choose_auto_ranks(job: ExportJob) -> tuple[list, list, dict]:
    """(key ranks, value ranks, the search's record for the projector file) for the job's K=auto budget."""
    o = job.options
    metric = job.metric(job.key_mode) if o.method != "pca" else None
    # bounded sliding-window layers stop growing at their window: no bytes per token to save there
    bounded = [i for i in range(job.config.num_layers) if job.config.window(i)] if o.window_cache == "bounded" else []
    search = Search(job.decoder, job.tokenizer, job.config, job.statistics(), job.key_mode, job.sink, o.auto,
                    calib=o.calib, calib_tokens=o.calib_tokens, metric=metric, info=job.provenance,
                    uncounted=bounded)
    choice, reference = choose_ranks(search, DTYPE_BYTES[o.dtype])
    record = {"options": asdict(o.auto), "heldout_tokens": sum(len(w) - 1 for w in search.heldout),
              "uncounted_layers": bounded,
              "heldout_ppl_original": search.base,
              "choice": asdict(choice), "uniform_pca_reference": asdict(reference) if reference else None}
    return choice.key_ranks, choice.value_ranks, record


def fit_projectors(job: ExportJob, key_ranks: list, value_ranks: list, method: str | None = None,
                   key_mode: str | None = None, train: TrainOptions | None = None) -> Projectors:
    """The projectors `method` asks for (default: the job's): PCA, output-aware PCA, output-aware PCA then
    training, or raw (no transform); keys coded in `key_mode` (default: the job's)."""
    method = method or job.options.method
    mode = key_mode or job.key_mode
    cfg, stats = job.config, job.statistics()
    if method == "raw":
        return fit_raw(stats, cfg, mode, job.sink, job.provenance)
    metric = job.metric(mode) if method != "pca" else None
    proj = fit_pca(stats, cfg, key_ranks, value_ranks, mode, job.sink, job.provenance, metric)
    if method != "trained":
        return proj
    return _train(job, proj, metric, train)


def _train(job: ExportJob, proj: Projectors, metric, train: TrainOptions | None = None) -> Projectors:
    """proj trained (projectors/train.py) on the calibration text, in the output-aware metric's coordinates."""
    o, cfg = job.options, job.config
    t = replace(train or o.train, window=fitting_window((train or o.train).window, cfg.max_positions, job.sink))
    train_windows, heldout = training_windows(job.tokenizer, o.calib, o.calib_tokens, t, job.sink)
    return train_projectors(job.decoder, proj, key_tap(cfg, proj.key_mode), train_windows, heldout, t,
                            whitening=output_whitening(metric))


def fit_quantized(job: ExportJob, key_ranks: list, value_ranks: list, q: QuantOptions | None = None,
                  train: TrainOptions | None = None) -> Projectors:
    """A quantized cache's codes at these ranks (before the bits drop components): fitted, then bits by q
    (quantize). METHOD=trained starts from the output-aware code and is trained after the bits are chosen,
    through the quantizer (train_through_quantizer): training for a float cache first would be undone by the
    rounding it never saw."""
    method = job.options.method
    proj = fit_projectors(job, key_ranks, value_ranks, "output-aware" if method == "trained" else method)
    proj = quantize(job, proj, q)
    return train_through_quantizer(job, proj, train) if method == "trained" else proj


def train_through_quantizer(job: ExportJob, proj: Projectors, train: TrainOptions | None = None) -> Projectors:
    """Quantized codes (bits, steps) trained with the rounding in the forward pass (projectors/coded.py), bits
    and steps fixed; each sink latent computed again for the trained encode."""
    mode = proj.key_mode
    trained = _train(job, proj, job.metric(mode), train)
    return with_exact_sinks(trained, Sources(job.statistics(), job.config, job.tap_of(mode), job.sink))


def quantize(job: ExportJob, proj: Projectors, q: QuantOptions | None = None) -> Projectors:
    """Bits for a quantized cache (quant/design.py), by q (default: the job's). PCA and output-aware codes are
    fitted again at the ranks the bits keep, so the sink stays exact; trained ones are not retrained (the sink's
    latent is put back exactly, but a trained code need not reconstruct the sink's vector from it; fit_quantized
    trains after this instead)."""
    o = job.options
    q = q or o.quant
    mode, method = proj.key_mode, proj.info.get("method")
    cfg, stats = job.config, job.statistics()
    metric = job.metric(mode)
    refit = None
    if method in ("pca", "output-aware"):
        refit = lambda kr, vr: fit_pca(stats, cfg, kr, vr, mode, job.sink, job.provenance,
                                       metric if method != "pca" else None)
    sensitivity = None
    if q.sensitivity == "measured" and q.allocation == "spectral":     # uniform: the plain quantizer
        probe = probe_windows(job.tokenizer, o.calib, o.calib_tokens, cfg.max_positions, job.sink, q.probe_tokens)
        if job.stream is not None:          # a model bigger than memory: the same probes, layer by layer
            sensitivity = lambda coded, predicted: measured_sensitivities_streamed(job.stream, coded, predicted,
                                                                                   probe)
        else:
            sensitivity = lambda coded, predicted: measured_sensitivities(job.hf, job.decoder, cfg, coded,
                                                                          predicted, probe)
    src = Sources(stats, cfg, job.tap_of(mode), job.sink, metric if q.weights == "output" else None,
                  job.samples(mode))
    return quantize_projectors(proj, q, src, refit, sensitivity)


def fit_cache_quant(job: ExportJob) -> Projectors:
    """Static per-channel steps for the int8 cache onnxruntime's fused attention writes (codec/cache_quant.py):
    fitted to the rotated keys (after RoPE) and values of the first quant.fit_tokens calibration tokens. The
    projectors carry no linear code (keys and values stay full), only the steps and the rotation."""
    o, cfg = job.options, job.config
    G, d = cfg.num_kv_heads, cfg.head_dim
    samples = job.samples("post-rope")
    tap_of = job.tap_of("post-rope")
    rotation = rotation_matrix(d, o.kv_rotation).float() if o.kv_rotation != "none" else None
    scales = {}
    for i in range(cfg.num_layers):
        for kind in ("key", "value"):
            x = samples[(i, tap_of(kind))].float()                                     # (N, G*d)
            if rotation is not None:
                x = (x.view(-1, G, d) @ rotation.T).reshape(-1, G * d)
            scales[(i, kind)] = fit_scales(x)
    cache_quant = CacheQuant(o.kv_dtype, o.kv_rotation, [scales[(i, "key")] for i in range(cfg.num_layers)],
                             [scales[(i, "value")] for i in range(cfg.num_layers)])
    calibration = {k: v for k, v in job.statistics().calibration.items() if k != "cached"}
    info = {**job.provenance, "method": f"cache-{o.kv_dtype}", "sink_token_id": job.sink,
            "calibration": {**calibration, "scale_tokens": o.quant.fit_tokens}}
    L = cfg.num_layers
    return Projectors(job.key_mode, [None] * L, [None] * L, info, cache_quant)
