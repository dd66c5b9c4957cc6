"""One export job: what every stage of an export reads, made once and carried from stage to stage.

    job = ExportJob.start(options)         load the model, build the uncompressed decoder, pick the sink
    job.statistics()                       calibration statistics (cached in build/calib, and on the job)
    job.metric(key_mode)                   the output-aware metric function (computed once per key mode)
    job.samples(key_mode)                  calibration vectors for fitted quantizer steps (once per key mode)

A job of a model bigger than memory (job/streamed.py) carries a LayerStream: its statistics, samples and metric
read the model one layer at a time, and its decoder is a skeleton on the meta device (no weights).

The stages (job/stages.py) take a job and return projectors; job/run.py strings them together. Benchmarks use
the same object and stages, so what they measure is what `make export` builds.

Entry point: `ExportJob.start(options)`.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from ..calib.capture import key_tap
from ..calib.statistics import SpilledSamples, Statistics, calibration_samples, kv_statistics
from ..calib.tokens import sink_token_id
from ..model.config import DecoderConfig, from_hf
from ..model.decoder import Decoder
from ..model.fold import build_decoder
from ..model.load import Loaded, load
from ..model.stream import LayerStream
from ..model.weights import model_fingerprint
from ..options import ExportOptions, default_for_windows
from ..projectors.metric import output_metrics
from ..quant.window import with_float_window
from .checks import check_against_model, check_options


@dataclass
class ExportJob:
    options: ExportOptions        # with method resolved (pca, or output-aware for K=auto)
    loaded: Loaded                # the HF model and tokenizer, and the names the user gave
    config: DecoderConfig
    key_mode: str                 # the key mode codes are fitted in ('post-rope' for models without RoPE)
    sink: int | None              # the constant token at position 0 of every sequence
    fingerprint: str              # model_fingerprint: projector files and statistics are keyed by it
    decoder: Decoder              # the uncompressed compact decoder: calibration, probes, training
    provenance: dict              # what projector files record of where they come from (model, seed, K=auto)
    stream: LayerStream | None = None    # the model read one layer at a time (job/streamed.py), or None
    _statistics: Statistics | None = field(default=None, repr=False)
    _metrics: dict = field(default_factory=dict, repr=False)
    _samples: dict = field(default_factory=dict, repr=False)

    @classmethod
    def start(cls, o: ExportOptions, loaded: Loaded | None = None) -> "ExportJob":
        """Check the options, load the model (unless given: one process exporting several settings), and build
        what every stage needs."""
        check_options(o)
        torch.manual_seed(o.seed)
        loaded = loaded or load(o.model, trust_remote_code=o.trust_remote_code)
        cfg = from_hf(loaded.model.config)
        if o.default_export and cfg.windows:
            o = default_for_windows(o)
            print("sliding-window layers: the default export is K=full with a concat cache, whose windowed layers "
                  "keep only their window", flush=True)
        o = with_float_window(o, cfg)
        check_against_model(o, cfg)
        if o.method is None:
            o = replace(o, method="output-aware" if o.is_auto else "pca")
        return cls.of(o, loaded, cfg, model_fingerprint(loaded.model), build_decoder(loaded.model))

    @classmethod
    def of(cls, o: ExportOptions, loaded: Loaded, cfg: DecoderConfig, fingerprint: str, decoder,
           stream: LayerStream | None = None) -> "ExportJob":
        """The job of checked options and a model already read (job/streamed.py reads it layer by layer)."""
        key_mode = o.key_mode if cfg.has_rope else "post-rope"   # without RoPE both modes are k-space scores
        return cls(o, loaded, cfg, key_mode, sink_token_id(loaded.tokenizer, o.sink), fingerprint, decoder,
                   {"model": loaded.source, "model_fingerprint": fingerprint, "seed": o.seed}, stream)

    @property
    def hf(self):
        return self.loaded.model

    @property
    def tokenizer(self):
        return self.loaded.tokenizer

    @property
    def capture_source(self):
        """What calibration runs the text through: the compact decoder, or the LayerStream."""
        return self.stream if self.stream is not None else self.decoder

    def statistics(self) -> Statistics:
        if self._statistics is None:
            o = self.options
            self._statistics = kv_statistics(self.capture_source, self.tokenizer, self.config, o.calib, o.calib_tokens,
                                             o.window, self.sink, self.fingerprint, o.build_dir)
        return self._statistics

    def metric(self, key_mode: str):
        """metric(layer, kind) -> (covariance, output-aware metric) for codes of keys in key_mode."""
        if key_mode not in self._metrics:
            weights_of = self.stream.attention_weights if self.stream is not None else None
            self._metrics[key_mode] = output_metrics(self.hf, self.config, self.statistics(), key_mode, weights_of)
        return self._metrics[key_mode]

    def tap_of(self, key_mode: str):
        """'key' | 'value' -> the calibration tap a code of that kind is fitted on."""
        return lambda kind: key_tap(self.config, key_mode) if kind == "key" else "value"

    def release_samples(self) -> None:
        """Forget the quantizer's samples once the design is made (TinyLlama-1.1B's shapes: 0.36 GiB)."""
        self._samples.clear()

    def samples(self, key_mode: str) -> dict | None:
        """{(layer, tap): (N, dim)} keys and values of the first quant.fit_tokens calibration tokens, the
        samples static quantizer steps are fitted to; None when fit_tokens is 0."""
        o = self.options
        if not o.quant.fit_tokens:
            return None
        if key_mode not in self._samples:
            tap_of = self.tap_of(key_mode)
            samples = calibration_samples(self.capture_source, self.tokenizer, self.config, o.calib,
                                          o.quant.fit_tokens, o.window, self.sink, (tap_of("key"), tap_of("value")))
            # a model bigger than memory: on disk between uses, out of the probes' way
            self._samples[key_mode] = SpilledSamples(samples) if self.stream is not None else samples
        return self._samples[key_mode]
