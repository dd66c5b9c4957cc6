"""python -m exporter.analyze (make analyze): the command line of exporter/analyze/run.py.

Entry point: `main(argv)` -> run(parse_args(argv)).
"""
from __future__ import annotations

import argparse
import shlex
import sys

from ..errors import cli_exit
from .options import TAP_TITLES, AnalyzeOptions
from .run import __doc__ as DOC, run


def _numbers(text: str, kind) -> tuple:
    try:
        return tuple(kind(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of {kind.__name__}s, "
                                         "e.g. 1,2,3") from None


def _floats(text: str) -> tuple:
    return _numbers(text, float)


def _ints(text: str) -> tuple:
    return _numbers(text, int)


def _words(text: str) -> tuple:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def parse_args(argv) -> AnalyzeOptions:
    d = AnalyzeOptions()
    p = argparse.ArgumentParser(prog="python -m exporter.analyze", description=DOC,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="HF hub id, local HF directory or .gguf file (default: SmolLM2)")
    p.add_argument("--text", default=d.text, help="text the spectra and PCA fits are measured on "
                                                  "(default: wikitext-103 valid from ../shared/data)")
    p.add_argument("--out", default=None, help="output directory (default build/analyze-<model>)")
    p.add_argument("--eval", default=d.eval, help="perplexity text (default WikiText-2 raw test)")
    p.add_argument("--calib-tokens", type=int, default=d.calib_tokens, help="tokens of --text to analyse")
    p.add_argument("--window", type=int, default=d.window, help="analysis window in tokens (after the sink)")
    p.add_argument("--eval-tokens", type=int, default=d.eval_tokens, help="tokens scored by whole-model rows")
    p.add_argument("--eval-window", type=int, default=d.eval_window, help="perplexity window in tokens")
    p.add_argument("--layer-tokens", type=int, default=d.layer_tokens,
                   help="tokens scored by the sweep and single-layer rows (0: none of them)")
    p.add_argument("--fraction", type=float, default=d.fraction, help="the headline variance fraction (0.95)")
    p.add_argument("--fractions", type=_floats, default=",".join(map(str, d.fractions)),
                   help="variance fractions swept for keys alone and values alone, all layers, on --layer-tokens "
                        "('' for no sweep; --fraction is always among them)")
    p.add_argument("--whole", default=",".join(d.whole),
                   help="kinds scored on --eval-tokens at --fraction: keys, values, keys+values ('' for none)")
    p.add_argument("--layers", default=d.layers, help="single-layer rows: none | all | middle | first,last,3,...")
    p.add_argument("--weight-tokens", type=int, default=d.weight_tokens,
                   help="tokens scored with attention weights truncated to --fraction of their energy (0: skip)")
    p.add_argument("--weight-rows", default=d.weight_rows, choices=("all", "each"),
                   help="truncate q, k, v, o together (all), and also one kind at a time (each)")
    p.add_argument("--probe-ranks", type=_ints, default=",".join(map(str, d.probe_ranks)),
                   help="ranks at which variance/energy kept and reconstruction error are reported")
    p.add_argument("--probe-errors", type=_floats, default=",".join(map(str, d.probe_errors)),
                   help="relative reconstruction errors for which the PCA rank k is reported")
    p.add_argument("--taps", default=",".join(d.taps), help=f"tensors to analyse, from {', '.join(TAP_TITLES)}")
    p.add_argument("--engine", default=d.engine, help="perplexity engine: hf (fast) | decoder (the export's reference)")
    p.add_argument("--skip-quality", action="store_true", help="spectra, weights and memory only (no perplexity)")
    p.add_argument("--sink", default=d.sink, help="sink token at position 0: auto | none | TOKEN | ID")
    p.add_argument("--token-factor", type=float, default=d.token_factor,
                   help="high-norm token: norm over this x its window's median")
    p.add_argument("--dim-factor", type=float, default=d.dim_factor, help="outlier dim: std over this x median std")
    p.add_argument("--seq", type=_ints, default=",".join(map(str, d.seq_lengths)), help="memory table sequence lengths")
    p.add_argument("--batch", type=_ints, default=",".join(map(str, d.batch_sizes)), help="memory table batch sizes")
    p.add_argument("--no-cache", action="store_true", help="capture again even when build/calib has the statistics")
    p.add_argument("--time-budget", type=float, default=d.time_budget,
                   help="seconds from the start; perplexity rows that would overrun it are skipped (0: no limit)")
    p.add_argument("--threads", type=int, default=d.threads,
                   help="torch threads (0: auto, the cores other processes leave free, at least 1)")
    p.add_argument("--trust-remote-code", action="store_true")
    a = p.parse_args(argv)
    return AnalyzeOptions(model=a.model or None, text=a.text or d.text, out=a.out, eval=a.eval,
                          calib_tokens=a.calib_tokens, window=a.window, eval_tokens=a.eval_tokens,
                          eval_window=a.eval_window, layer_tokens=a.layer_tokens, fraction=a.fraction,
                          fractions=a.fractions, whole=_words(a.whole), layers=a.layers,
                          weight_tokens=a.weight_tokens, weight_rows=a.weight_rows, probe_ranks=a.probe_ranks,
                          probe_errors=a.probe_errors, taps=_words(a.taps),
                          engine=a.engine, skip_quality=a.skip_quality, sink=a.sink, token_factor=a.token_factor,
                          dim_factor=a.dim_factor, seq_lengths=a.seq, batch_sizes=a.batch,
                          cache=not a.no_cache, threads=a.threads, time_budget=a.time_budget,
                          trust_remote_code=a.trust_remote_code,
                          command=" ".join(["python -m exporter.analyze"] + [shlex.quote(x) for x in
                                                                            (sys.argv[1:] if argv is None else argv)]))


def main(argv=None) -> int:
    return cli_exit(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
