"""How much an export's perplexity increase varies across text: per-window figures on windows spread over the
calibration file (after its calibration tokens, as K=auto holds out) and on the first windows of the evaluation
file, with the PyTorch reference of the export.

    python -m benchmarks.heldout_spread --export DIR [--windows 12] [--eval-windows 0]

Prints one line per window (NLL increase per token, the original model's NLL) and, per text, the perplexity
increase with its standard error over windows. Why it exists: a K=auto run scored on one contiguous slice of
the calibration file chose ranks that slice put at +1.98 % and WikiText-2 test at +3.6 % (docs/projectors.md).
"""
from __future__ import annotations

import argparse
import sys

from exporter.calib.text import spread_windows, token_windows
from exporter.eval.perplexity import nll
from exporter.model.fold import build_decoder
from exporter.options import DEFAULT_EVAL
from exporter.ranks.auto import increase_with_margin
from graphs.metadata import load_metadata
from validate.reference import load_references


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.heldout_spread", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--export", required=True)
    p.add_argument("--windows", type=int, default=12, help="calibration-file windows of 2048, spread")
    p.add_argument("--eval-windows", type=int, default=0, help="first windows of the evaluation file too")
    p.add_argument("--eval", default=str(DEFAULT_EVAL))
    a = p.parse_args(argv)
    meta = load_metadata(a.export)
    hf, tok, compressed = load_references(a.export, meta)
    original = build_decoder(hf)
    sink = meta.sink["token_id"]
    calib = meta.calibration
    texts = {"calibration file, spread": spread_windows(tok, calib["file"], calib["tokens"], a.windows * 2048, sink)}
    if a.eval_windows:
        texts["evaluation file"] = token_windows(tok, a.eval, 2048, a.eval_windows * 2048, sink)
    for name, windows in texts.items():
        base, coded = [], []
        for w in windows:
            base.append(nll(original, [w], progress=False))
            coded.append(nll(compressed, [w], progress=False))
            print(f"  {name}: NLL +{(coded[-1][0] - base[-1][0]) / base[-1][1]:.4f} per token "
                  f"(original {base[-1][0] / base[-1][1]:.3f})", flush=True)
        inc, bound = increase_with_margin(base, coded, 1.0)
        print(f"{name}: {len(windows)} windows of 2048, perplexity increase {inc:+.2f} % "
              f"(+1 standard error: {bound:+.2f} %)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
