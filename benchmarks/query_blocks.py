"""Output-aware projectors from the queries' whole moments against their per-head blocks, one capture feeding both.

    python -m benchmarks.query_blocks [MODEL] [TOKENS] [K]       (default: SmolLM2, 16384 tokens, K=128)

calib/statistics keeps the queries' second moments as per-head (d, d) blocks (calib/capture.HeadCovariance),
H times smaller than the whole (H*d, H*d) matrices it kept before; the key metric reads only those blocks. This
prints the largest difference of the K=128 output-aware projectors fitted both ways, in both key modes.
"""
import os
import sys
import time

from exporter.calib.capture import Covariance, capture
from exporter.calib.statistics import Statistics, kv_accumulators
from exporter.calib.text import token_windows
from exporter.calib.tokens import sink_token_id
from exporter.model.config import from_hf
from exporter.model.fold import build_decoder
from exporter.model.load import load
from exporter.projectors.metric import output_metrics
from exporter.projectors.pca import fit_pca

CALIB = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data",
                     "wikitext-103-valid.tokens.txt")


class Both:
    """One tap's vectors to two accumulators (the same one for every tap but the queries')."""

    def __init__(self, a, b):
        self.a, self.b = a, b

    def update(self, x):
        self.a.update(x)
        if self.b is not self.a:
            self.b.update(x)


def main(argv=None) -> int:
    argv = sys.argv if argv is None else [""] + list(argv)
    model = argv[1] if len(argv) > 1 and argv[1] else None
    tokens = int(argv[2]) if len(argv) > 2 else 16384
    k = int(argv[3]) if len(argv) > 3 else 128
    loaded = load(model)
    cfg = from_hf(loaded.model.config)
    sink = sink_token_id(loaded.tokenizer, "auto")
    windows = token_windows(loaded.tokenizer, CALIB, 1024, tokens, sink)
    blocks = kv_accumulators(cfg)
    whole = {key: (Covariance() if key[1].startswith("query") else acc) for key, acc in blocks.items()}
    t0 = time.time()
    sinks = capture(build_decoder(loaded.model), windows, {key: Both(blocks[key], whole[key]) for key in blocks})
    info = {"file": "wikitext", "window": 1024, "tokens": sum(len(w) - 1 for w in windows)}
    out = {}
    for name, accs in (("blocks", blocks), ("whole", whole)):
        stats = Statistics(accs, sinks, info)
        for mode in ("pre-rope", "post-rope"):
            m = output_metrics(loaded.model, cfg, stats, mode)
            out[(name, mode)] = fit_pca(stats, cfg, [k] * cfg.num_layers, [k] * cfg.num_layers, mode, sink, {}, m)
    for mode in ("pre-rope", "post-rope"):
        a, b = out[("blocks", mode)], out[("whole", mode)]
        diff = max(max((x.encode - y.encode).abs().max().item(), (x.decode - y.decode).abs().max().item())
                   for x, y in zip(a.keys + a.values, b.keys + b.values))
        print(f"{mode}: K={k} output-aware projectors, blocks vs whole query moments: max abs difference {diff:.3g}")
    print(f"({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
