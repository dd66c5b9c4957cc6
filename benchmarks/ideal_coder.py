"""What a better quantizer could buy at the codec's own bits: the spectral codec, next to Gaussian test channels
standing in for its scalar quantizer, scored in perplexity with the uncompressed model in the same run.

    python -m benchmarks.ideal_coder [--model M] [--ratios 8,16] [--window 0] [--k full] [--methods pca,trained]
        [--quantizers "codec,scalar model,ideal code,lloyd-max,outliers"] [--eval-tokens 8192] [--fit-tokens 16384]
        [--outlier-fraction 0.01]

For each METHOD and ratio the codec is fitted as `make export K=<k> QUANT=spectral QUANT_RATIO=<ratio>
QUANT_WINDOW=<window> METHOD=<method>` fits it (trained: through the quantizer, job/stages.fit_quantized); then
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

And one real code of the same bits, not run in the graph:

    lloyd-max      per component, 2^b_j levels and the thresholds between them (nearest level), fitted by
                   Lloyd's algorithm on the latents the codec itself sees on its first --fit-tokens calibration
                   tokens, started from the codec's own uniform levels (so never worse on those latents): the
                   non-uniform scalar quantizer (Lloyd 1957 / Max 1960; KVQuant's per-channel codebooks are one).
                   It also prints how much it lowers the calibration latents' squared error.
    outliers       the codec's codes, except a token whose code errs most (its squared error over the components,
                   each in units of its scale, above the (1 - f) quantile of the calibration latents', f =
                   --outlier-fraction) is kept exact: outlier tokens beyond the sink. The exact tokens' bytes
                   (float16 latents and a 4-byte position) are not taken from the codes' budget: the row prints
                   them, so it bounds what the lever buys at those extra bytes.

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
from exporter.codec.scalar import rounded
from exporter.codec.scalar import gaussian_mse
from exporter.eval.perplexity import nll, perplexity
from exporter.job.job import ExportJob
from exporter.model.load import load
from exporter.options import DEFAULT_CALIB, DEFAULT_EVAL, ExportOptions

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


class LloydMaxChannel(nn.Module):
    """Stands in for a LatentQuantizer: each component rounded to the nearest of its own 2^b_j levels (fitted by
    `lloyd_max`); the 'codes' are the rounded float latents."""

    def __init__(self, quant, thresholds: torch.Tensor, levels: torch.Tensor):
        super().__init__()
        self.sink, self.nbytes = quant.sink, quant.rank
        self.thresholds, self.levels = thresholds, levels                     # (r, Lmax - 1), (r, Lmax)

    def encode(self, c: torch.Tensor) -> torch.Tensor:
        flat = c.reshape(-1, c.shape[-1]).T.contiguous()                      # (r, B*T)
        index = torch.searchsorted(self.thresholds, flat, right=True)        # (r, B*T) each latent's level
        return self.levels.gather(1, index).T.reshape(c.shape)

    decode = GaussianChannel.decode


class LatentRecorder(nn.Module):
    """A LatentQuantizer that keeps what it encodes (the sink's position left out): the latents (N, r)."""

    def __init__(self, quant):
        super().__init__()
        self.quant, self.sink, self.nbytes, self.seen = quant, quant.sink, quant.nbytes, []

    def encode(self, c: torch.Tensor) -> torch.Tensor:
        others = c[:, :, 1:] if self.sink is not None and c.shape[2] > 1 else c
        self.seen.append(others.reshape(-1, c.shape[-1]).clone())
        return self.quant.encode(c)

    def decode(self, codes, sink_slots=None):
        return self.quant.decode(codes, sink_slots)


def lloyd_max(quant, x: torch.Tensor, iterations: int = 40) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Per component of x (N, r): 2^b_j levels by Lloyd's algorithm started from the quantizer's uniform levels,
    padded to the widest component (thresholds +inf past a component's last); (thresholds, levels, the squared
    error it leaves as a fraction of the uniform levels' on x)."""
    bits = torch.log2(quant.levels).round().to(torch.int64)                   # (r,)
    width = int(2 ** bits.max())
    k = torch.arange(width, dtype=torch.float32)                              # (Lmax,)
    used = k[None, :] < quant.levels[:, None]                                 # (r, Lmax)
    levels = (k[None, :] - quant.levels[:, None] / 2 + 0.5) * quant.step[:, None]   # the uniform levels
    levels = torch.where(used, levels, torch.inf)
    xt = x.T.contiguous()                                                     # (r, N)

    def thresholds_of(levels):
        mid = (levels[:, 1:] + levels[:, :-1]) / 2                            # (r, Lmax - 1)
        return torch.where(used[:, 1:], mid, torch.inf)

    for _ in range(iterations):
        index = torch.searchsorted(thresholds_of(levels), xt, right=True)    # (r, N)
        sums = torch.zeros(levels.shape).scatter_add_(1, index, xt)
        counts = torch.zeros(levels.shape).scatter_add_(1, index, torch.ones_like(xt))
        levels = torch.where(counts > 0, sums / counts.clamp(min=1), levels)  # an empty level stays put
    thresholds = thresholds_of(levels)
    fitted = levels.gather(1, torch.searchsorted(thresholds, xt, right=True))
    uniform = rounded(xt, quant.step[:, None], quant.levels[:, None])
    error = float(((xt - fitted) ** 2).sum() / ((xt - uniform) ** 2).sum())
    return thresholds, torch.where(used, levels, 0.0), error


def record_latents(decoder, quants: dict, windows) -> dict:
    """The latents (N, r) each quantizer of `quants` encodes while the codec decoder reads the windows."""
    recorders = {}
    for (i, name), quant in quants.items():
        recorders[i, name] = LatentRecorder(quant)
        setattr(decoder.blocks[i].attn, name, recorders[i, name])
    nll(decoder, windows, desc="latents of the calibration text")
    for (i, name), quant in quants.items():
        setattr(decoder.blocks[i].attn, name, quant)
    return {key: torch.cat(r.seen) for key, r in recorders.items()}


def with_lloyd_max(decoder, quants: dict, latents: dict) -> float:
    """Put a LloydMaxChannel fitted on `latents` in place of each quantizer; the squared error it leaves on them
    as a fraction of the codec's, over all components."""
    fitted_sum, uniform_sum = 0.0, 0.0
    for (i, name), quant in quants.items():
        thresholds, levels, fraction = lloyd_max(quant, latents[i, name])
        uniform = float(((latents[i, name] - rounded(latents[i, name], quant.step, quant.levels)) ** 2).sum())
        fitted_sum, uniform_sum = fitted_sum + fraction * uniform, uniform_sum + uniform
        setattr(decoder.blocks[i].attn, name, LloydMaxChannel(quant, thresholds, levels))
    return fitted_sum / uniform_sum


def token_error(quant, c: torch.Tensor, coded: torch.Tensor) -> torch.Tensor:
    """Each token's squared coding error, components in units of their scale: (..., r) -> (..., 1)."""
    return (((c - coded) / quant.sigma) ** 2).sum(-1, keepdim=True)


class OutlierChannel(nn.Module):
    """Stands in for a LatentQuantizer: its codes decoded, except tokens whose error exceeds `threshold`, which
    come back exact; the 'codes' are those float latents."""

    def __init__(self, quant, threshold: float):
        super().__init__()
        self.quant, self.sink, self.nbytes, self.threshold = quant, quant.sink, quant.rank, threshold

    def encode(self, c: torch.Tensor) -> torch.Tensor:
        coded = self.quant.decode(self.quant.encode(c))                       # (B, 1, T, r)
        return torch.where(token_error(self.quant, c, coded) > self.threshold, c, coded)

    decode = GaussianChannel.decode


def with_outliers(decoder, quants: dict, latents: dict, fraction: float) -> float:
    """Put an OutlierChannel in place of each quantizer, its threshold the (1 - fraction) quantile of the token
    errors on `latents`; the bytes per token its exact tokens add (float16 latents, a 4-byte position)."""
    extra = 0.0
    for (i, name), quant in quants.items():
        x = latents[i, name][None, None]                                      # (1, 1, N, r)
        errors = token_error(quant, x, quant.decode(quant.encode(x))).flatten()
        setattr(decoder.blocks[i].attn, name, OutlierChannel(quant, float(torch.quantile(errors, 1 - fraction))))
        extra += fraction * (2 * quant.rank + 4)
    return extra


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
    p.add_argument("--quantizers", default=",".join(("codec", *DISTORTIONS, "lloyd-max", "outliers")),
                   help="rows per ratio: codec (the codec itself), the channels, lloyd-max and outliers, "
                   "comma-separated")
    p.add_argument("--eval-tokens", type=int, default=8192)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fit-tokens", type=int, default=16384, help="calibration tokens lloyd-max and outliers "
                   "are fitted on")
    p.add_argument("--outlier-fraction", type=float, default=0.01, help="share of tokens outliers keeps exact")
    a = p.parse_args(argv)
    quantizers = a.quantizers.split(",")
    if set(quantizers) - {"codec", "lloyd-max", "outliers", *DISTORTIONS}:
        p.error(f"--quantizers {a.quantizers}: use codec, {', '.join(DISTORTIONS)}, lloyd-max, outliers")
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
        latents = {}                            # the calibration latents, recorded when a quantizer needs them
        for quantizer in quantizers:
            extra = {}
            for (i, name), quant in quants.items():
                setattr(dec.blocks[i].attn, name, quant)
            if quantizer in ("lloyd-max", "outliers") and not latents:
                calib = token_windows(loaded.tokenizer, DEFAULT_CALIB, HELDOUT_WINDOW, a.fit_tokens, first.sink)
                latents = record_latents(dec, quants, calib)
            if quantizer == "lloyd-max":
                error = with_lloyd_max(dec, quants, latents)
                extra = {"calib_error_vs_codec": error}
                print(f"{label} lloyd-max: {100 * error:.1f} % of the codec's squared error on its calibration "
                      f"latents", flush=True)
            elif quantizer == "outliers":
                codes = sum(quant.nbytes for quant in quants.values())
                added = with_outliers(dec, quants, latents, a.outlier_fraction)
                extra = {"outlier_fraction": a.outlier_fraction, "added_bytes_per_token": added,
                         "code_bytes_per_token": codes}
                print(f"{label} outliers: {100 * a.outlier_fraction:g} % of tokens exact add {added:.1f} B/token "
                      f"to the codes' {codes} ({100 * added / codes:.1f} %)", flush=True)
            elif quantizer != "codec":
                with_channels(dec, quants, DISTORTIONS[quantizer], a.seed)
            ppl = perplexity(nll(dec, windows, desc=f"{label} {quantizer}"))
            rows.append({"setting": label, "quantizer": quantizer, "ppl": ppl, "increase_pct": 100 * (ppl / base - 1),
                         **extra})
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
