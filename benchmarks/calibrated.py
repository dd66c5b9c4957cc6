"""What the projector benchmarks share: the model, its sink, the uncompressed decoder and the calibration
statistics (from build/calib when an identical calibration ran before), as `make export` would have them."""
from __future__ import annotations

from dataclasses import dataclass

from exporter.config import DecoderConfig, from_hf
from exporter.fit import kv_statistics
from exporter.fold import build_decoder
from exporter.load import Loaded, load
from exporter.pipeline import ExportOptions, sink_token_id
from exporter.projectors import model_fingerprint


@dataclass
class Calibrated:
    loaded: Loaded
    cfg: DecoderConfig
    options: ExportOptions       # the export defaults (calibration file, tokens, window) the statistics used
    sink: int | None
    fingerprint: str
    decoder: object              # the uncompressed compact decoder
    stats: tuple                 # kv_statistics: (accumulators, sink vectors, calibration info)


def calibrated(model: str | None = None, calib_tokens: int | None = None) -> Calibrated:
    loaded = load(model)
    hf, tok = loaded.model, loaded.tokenizer
    o = ExportOptions(model=model, **({"calib_tokens": calib_tokens} if calib_tokens else {}))
    cfg, sink, fingerprint = from_hf(hf.config), sink_token_id(tok, "auto"), model_fingerprint(hf)
    decoder = build_decoder(hf)
    stats = kv_statistics(decoder, tok, cfg, o.calib, o.calib_tokens, o.window, sink, fingerprint, "build")
    return Calibrated(loaded, cfg, o, sink, fingerprint, decoder, stats)
