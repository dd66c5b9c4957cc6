"""What the spectrum allows at a few bits per dimension: the Gaussian rate-distortion bound of each layer's key
and value covariance, next to integer bits allocated by the spectrum, and uniform bits (the same b for every
raw dimension, no transform), all as error left / total variance. Groundwork for quantized latents (#6); a
model of the error, not a measurement of perplexity.

    python -m benchmarks.bits_bound [--model M] [--bits 4,3,2] [--mode pre-rope]

Per tensor kind and average bits b per dimension: the mean over layers of
  bound    rate_distortion_bound(eigenvalues, b * dim) / trace   (no code of that rate does better, Gaussian)
  KLT      integer bits by allocate_bits on the eigenvalues, error model l 4^-bits            / trace
  raw      b bits on every raw dimension, error model var 4^-b (no transform, no allocation)    / trace
and how many KLT components get any bits at all (the rank the budget buys).
"""
from __future__ import annotations

import argparse
import sys

import torch

from benchmarks.klt_quant import spectrum
from exporter.calib.capture import key_tap
from exporter.job.job import ExportJob
from exporter.options import ExportOptions
from exporter.quant.theory import allocate_bits, quantized_mse, rate_distortion_bound

def rows(cov: torch.Tensor, bits: float) -> dict:
    lam, _ = spectrum(cov)                                               # descending
    var = torch.diagonal(cov).clamp_min(0).tolist()
    trace, total = sum(lam), int(round(bits * len(lam)))
    alloc = allocate_bits(lam, total)
    return {"bound": rate_distortion_bound(lam, total) / trace,
            "klt": sum(quantized_mse(x, b) for x, b in zip(lam, alloc)) / trace,
            "raw": sum(quantized_mse(v, round(bits)) for v in var) / sum(var),
            "coded": sum(b > 0 for b in alloc)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bits_bound", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None)
    p.add_argument("--bits", default="4,3,2")
    p.add_argument("--mode", default="pre-rope", help="which keys: pre-rope or post-rope")
    a = p.parse_args(argv)
    c = ExportJob.start(ExportOptions(model=a.model))
    cfg, accs, info = c.config, c.statistics().accumulators, c.statistics().calibration
    print(f"{c.loaded.name}, calibration {info['file']} ({info['tokens']} tokens); error left / total variance, "
          f"mean over {cfg.num_layers} layers\n")
    print("| tensor | bits/dim | Gaussian bound | KLT + spectral bits | raw uniform bits | KLT components coded |")
    print("| --- | --- | --- | --- | --- | --- |")
    for kind, tap in (("keys", key_tap(cfg, a.mode)), ("values", "value")):
        for b in (float(x) for x in a.bits.split(",")):
            r = [rows(accs[(i, tap)].covariance(), b) for i in range(cfg.num_layers)]
            mean = lambda k: sum(x[k] for x in r) / len(r)
            print(f"| {kind} | {b:g} | {mean('bound'):.2e} | {mean('klt'):.2e} | {mean('raw'):.2e} | "
                  f"{mean('coded'):.0f} of {cfg.kv_dim} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
