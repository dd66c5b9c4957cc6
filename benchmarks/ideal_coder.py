"""What a better quantizer could buy at the codec's own bits: the spectral codec, next to Gaussian test channels
standing in for its scalar quantizer, scored in perplexity with the uncompressed model in the same run.

    python -m benchmarks.ideal_coder [--model M] [--ratios 8,16] [--window 0] [--k full] [--methods pca,trained]
        [--quantizers "codec,scalar model,ideal code"] [--eval-tokens 8192]

For each METHOD and ratio the codec is fitted as `make export K=full QUANT=spectral QUANT_RATIO=<ratio>
METHOD=<method>` fits it (trained: through the quantizer, job/stages.fit_quantized); then
every quantized component j (b_j bits) is replaced by a channel that returns

    c^ = mu + a (c - mu) + sqrt(a D) z,   a = 1 - D / var,   z ~ N(0, 1)

whose error has mean square D and is uncorrelated with c^: the backward channel that reaches the Gaussian
rate-distortion bound (Cover & Thomas 10.3.2). mu and var are the component's mean and variance over the
window being scored (the sink left out; it stays exact, as in the codec). Two distortions:

    scalar model   D = var x gaussian_mse(b_j): the codec's own quantizer's error, as noise. Its row next to
                   the codec's says how well noise of the right size predicts what quantizing does.
    ideal code     D = var x 4^-b_j: the least error any code of b_j bits a component reaches on a Gaussian
                   source; non-uniform, vector and lattice quantizers approach it from above on Gaussian
                   latents (heavier-tailed ones could in principle go below it).

The same components, the same allocation, the same float window (if any): only the quantizer changes. A
reference for what the levers "non-uniform / vector codes" can buy, not a coder that runs in the graph.
Perplexity is the PyTorch reference's on the first --eval-tokens tokens of WikiText-2 test (windows of 2048
after the sink). Prints the table and writes build/ideal-coder-<model>.md / .json.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys

import torch
from torch import nn

from benchmarks.calibration_mix import codec_decoder
from exporter.calib.text import HELDOUT_WINDOW, token_windows
from exporter.codec.scalar import gaussian_mse
from exporter.eval.perplexity import nll, perplexity
from exporter.job.job import ExportJob
from exporter.model.load import load
from exporter.options import DEFAULT_EVAL, ExportOptions

DISTORTIONS = {"scalar model": gaussian_mse, "ideal code": lambda b: 4.0 ** -b}


class GaussianChannel(nn.Module):
    """Stands in for a LatentQuantizer (same encode/decode/sink/nbytes): the latents (B, 1, T, r) come back
    through the test channel above; the 'codes' are those float latents, so the cache holds them as they are."""

    def __init__(self, quant, fraction, seed: int):
        super().__init__()
        bits = torch.log2(quant.levels).round().to(torch.int64).tolist()
        self.fraction = torch.tensor([fraction(b) for b in bits])             # (r,) D / var per component
        self.sink, self.nbytes = quant.sink, quant.rank
        self.generator = torch.Generator().manual_seed(seed)

    def encode(self, c: torch.Tensor) -> torch.Tensor:
        others = c[:, :, 1:] if c.shape[2] > 1 else c                         # (B, 1, T-1, r) without the sink
        mu, var = others.mean(2, keepdim=True), others.var(2, keepdim=True)   # (B, 1, 1, r)
        d = var * self.fraction
        a = 1 - self.fraction
        z = torch.randn(c.shape, generator=self.generator)
        return mu + a * (c - mu) + (a * d).sqrt() * z

    def decode(self, codes: torch.Tensor, sink_slots: torch.Tensor | None = None) -> torch.Tensor:
        if self.sink is not None and sink_slots is not None:
            return torch.where(sink_slots[:, None, :, None], self.sink, codes)
        return codes


QUANTS = ("key_quant", "value_quant")


def with_channels(decoder, quants: dict, fraction, seed: int) -> None:
    """Put a GaussianChannel in place of each quantizer of `quants` {(layer, attribute): LatentQuantizer}."""
    for (i, name), quant in quants.items():
        setattr(decoder.blocks[i].attn, name, GaussianChannel(quant, fraction, seed + 2 * i + QUANTS.index(name)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ideal_coder", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None)
    p.add_argument("--ratios", default="8,16")
    p.add_argument("--window", type=int, default=0, help="QUANT_WINDOW of the codec (0: none)")
    p.add_argument("--k", default="full", help="K of the codec (full: the bits choose the ranks)")
    p.add_argument("--methods", default="pca", help="METHODs of the codec, comma-separated (trained: trained "
                   "through the quantizer)")
    p.add_argument("--quantizers", default=",".join(("codec", *DISTORTIONS)),
                   help="rows per ratio: codec (the codec itself) and the channels, comma-separated")
    p.add_argument("--eval-tokens", type=int, default=8192)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    quantizers = a.quantizers.split(",")
    if set(quantizers) - {"codec", *DISTORTIONS}:
        p.error(f"--quantizers {a.quantizers}: use codec, {', '.join(DISTORTIONS)}")
    loaded = load(ExportOptions(model=a.model).model)
    first = ExportJob.start(ExportOptions(model=loaded.source), loaded)
    windows = token_windows(loaded.tokenizer, DEFAULT_EVAL, HELDOUT_WINDOW, a.eval_tokens, first.sink)
    base = perplexity(nll(first.decoder, windows, desc="uncompressed"))
    rows = [{"setting": "uncompressed", "ppl": base, "increase_pct": 0.0}]
    print(f"uncompressed: {base:.3f}", flush=True)
    for method, ratio in [(m, float(r)) for m in a.methods.split(",") for r in a.ratios.split(",")]:
        label = f"{ratio:g}x" + (f" + window {a.window}" if a.window else "") \
            + (f" K={a.k}" if a.k != "full" else "") + f" METHOD={method}"
        dec = codec_decoder(loaded, "WIKI", ExportOptions.calib_tokens, ratio, a.window, a.k, method)
        quants = {(i, name): getattr(blk.attn, name) for i, blk in enumerate(dec.blocks) for name in QUANTS
                  if getattr(blk.attn, name) is not None}
        for quantizer in quantizers:
            if quantizer == "codec":
                for (i, name), quant in quants.items():
                    setattr(dec.blocks[i].attn, name, quant)
            else:
                with_channels(dec, quants, DISTORTIONS[quantizer], a.seed)
            ppl = perplexity(nll(dec, windows, desc=f"{label} {quantizer}"))
            rows.append({"setting": label, "quantizer": quantizer, "ppl": ppl, "increase_pct": 100 * (ppl / base - 1)})
            print(f"{label} {quantizer}: {ppl:.3f} ({rows[-1]['increase_pct']:+.2f} %)", flush=True)
    lines = ["| cache | quantizer | perplexity | change |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['setting']} | {r.get('quantizer', '-')} | {r['ppl']:.3f} | {r['increase_pct']:+.2f} % |"
              for r in rows]
    command = "python -m benchmarks.ideal_coder " + " ".join(shlex.quote(x) for x in (argv or sys.argv[1:]))
    md = "\n".join(lines) + f"\n\n`{command.strip()}`; first {a.eval_tokens} tokens of WikiText-2 test scored.\n"
    stem = os.path.join("build", f"ideal-coder-{loaded.name}")
    with open(stem + ".md", "w") as fh:
        fh.write(md)
    with open(stem + ".json", "w") as fh:
        json.dump({"command": command, "rows": rows}, fh, indent=1)
    print("\n" + md + f"wrote {stem}.md / .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
