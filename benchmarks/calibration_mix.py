"""Calibration that travels: the spectral codec fitted on different calibration texts and token counts, each
scored on more than one text, with the uncompressed model's perplexity on each text in the same run.

    python -m benchmarks.calibration_mix [--model M] [--ratio 4] [--window 0]
        [--calibs "WIKI;WIKI,BOOK@0.5"] [--calib-tokens 16384,65536]
        [--evals WIKI2,BOOK] [--eval-tokens 8192]

The codec is what `make export K=full QUANT=spectral QUANT_RATIO=<ratio> QUANT_WINDOW=<window> CALIB=<spec>
CALIB_TOKENS=<n>` fits
(job/stages.fit_quantized), scored with the PyTorch reference decoder it is built from (the
acceptance figures come from `make validate` on exports). Calibration specs are separated by ';' (a spec is
one file or a mix, calib/text.py: "a.txt,b.txt@0.5" takes turns of 2048 tokens from each, b from half of its
tokens on). An evaluation text is scored on its first --eval-tokens tokens in windows of 2048 after the sink
(the shared/data convention), so a book calibrated from @0.5 on is evaluated on a part it was never fitted to.
The names WIKI, WIKI2 and BOOK stand for the files in ../shared/data. Prints the table and writes
build/calibration-mix-<model>.md / .json.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time

from exporter.calib.text import HELDOUT_WINDOW, token_windows
from exporter.eval.perplexity import nll, perplexity
from exporter.job.job import ExportJob
from exporter.job.stages import fit_quantized
from exporter.model.fold import build_decoder
from exporter.model.load import load
from exporter.options import DATA_DIR, DEFAULT_CALIB, DEFAULT_EVAL, ExportOptions, QuantOptions, parse_rank, per_layer

NAMES = {"WIKI": DEFAULT_CALIB, "WIKI2": DEFAULT_EVAL, "BOOK": DATA_DIR / "pg1342-pride-and-prejudice.txt"}


def expand(spec: str) -> str:
    """'WIKI,BOOK@0.5' -> the files' paths; other paths as given."""
    parts = []
    for part in spec.split(","):
        name, at, start = part.strip().partition("@")
        parts.append(str(NAMES.get(name, name)) + at + start)
    return ",".join(parts)


def codec_decoder(loaded, spec: str, tokens: int, ratio: float, window: int, k: str = "full",
                  method: str | None = None):
    """The reference decoder of the spectral codec (K=k, METHOD=method) fitted on `tokens` tokens of the
    calibration spec, as export_into fits it (job/stages.fit_quantized)."""
    o = ExportOptions(model=loaded.source, calib=expand(spec), calib_tokens=tokens, k=k, method=method,
                      quant=QuantOptions("spectral", ratio, float_window=window))
    job = ExportJob.start(o, loaded)
    cfg = job.config
    rank = per_layer(parse_rank(k, cfg.kv_dim, "K") or cfg.kv_dim, cfg.num_layers)
    return build_decoder(loaded.model, fit_quantized(job, rank, rank))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.calibration_mix", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None)
    p.add_argument("--ratio", type=float, default=4.0)
    p.add_argument("--window", type=int, default=0, help="QUANT_WINDOW of the codec (0: none)")
    p.add_argument("--calibs", default="WIKI;WIKI,BOOK@0.5", help="calibration specs, ';'-separated")
    p.add_argument("--calib-tokens", default="16384", help="calibration token counts, comma-separated")
    p.add_argument("--evals", default="WIKI2,BOOK", help="evaluation texts, comma-separated")
    p.add_argument("--eval-tokens", type=int, default=8192)
    a = p.parse_args(argv)
    loaded = load(ExportOptions(model=a.model).model)
    first = ExportJob.start(ExportOptions(model=loaded.source), loaded)
    evals = {name: token_windows(loaded.tokenizer, expand(name), HELDOUT_WINDOW, a.eval_tokens, first.sink)
             for name in a.evals.split(",")}
    base = {name: perplexity(nll(first.decoder, w, desc=f"uncompressed on {name}")) for name, w in evals.items()}
    print("uncompressed: " + ", ".join(f"{n} {ppl:.3f}" for n, ppl in base.items()), flush=True)
    command = "python -m benchmarks.calibration_mix " + " ".join(shlex.quote(x) for x in (argv or sys.argv[1:]))
    stem = os.path.join("build", f"calibration-mix-{loaded.name}")
    rows = []
    for spec in a.calibs.split(";"):
        for tokens in [int(t) for t in a.calib_tokens.split(",")]:
            t0 = time.time()
            dec = codec_decoder(loaded, spec, tokens, a.ratio, a.window)
            row = {"calib": spec, "calib_tokens": tokens, "seconds": 0.0}
            for name, w in evals.items():
                ppl = perplexity(nll(dec, w, desc=f"{spec} {tokens} on {name}"))
                row[name] = {"ppl": ppl, "increase_pct": 100 * (ppl / base[name] - 1)}
            row["seconds"] = round(time.time() - t0, 1)
            rows.append(row)
            print(f"{spec} {tokens}: " + ", ".join(f"{n} {row[n]['increase_pct']:+.2f} %" for n in evals), flush=True)
            md = write(stem, command, a, base, rows)        # after every row: a stopped run keeps its rows
    print("\n" + md + f"wrote {stem}.md / .json")
    return 0


def write(stem: str, command: str, a, base: dict, rows: list[dict]) -> str:
    """The table so far as build/calibration-mix-<model>.md and .json; returns the markdown."""
    head = "| calibration | tokens | " + " | ".join(f"{n} (orig {base[n]:.3f})" for n in base) + " |"
    lines = [head, "| --- | --- | " + " | ".join("---" for _ in base) + " |"]
    for r in rows:
        lines.append(f"| {r['calib']} | {r['calib_tokens']:,} | "
                     + " | ".join(f"{r[n]['ppl']:.3f} ({r[n]['increase_pct']:+.2f} %)" for n in base) + " |")
    md = "\n".join(lines) + (f"\n\n`{command.strip()}`; spectral codec {a.ratio:g}x"
                             + (f" + float window {a.window}" if a.window else "")
                             + f", first {a.eval_tokens} tokens of each text scored; "
                             + ", ".join(f"{k} = {v.name}" for k, v in NAMES.items()) + ".\n")
    os.makedirs(os.path.dirname(stem), exist_ok=True)
    with open(stem + ".md", "w") as fh:
        fh.write(md)
    with open(stem + ".json", "w") as fh:
        json.dump({"command": command, "original": base, "rows": rows}, fh, indent=1)
    return md


if __name__ == "__main__":
    sys.exit(main())
