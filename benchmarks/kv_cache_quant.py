"""Which int8/int4 cache the fused attention should hold: simulated in the PyTorch reference, scored by perplexity.

    python -m benchmarks.kv_cache_quant [--eval-tokens 8192] [--configs 8:none:absmax,8:hadamard:mse,...]

A config is BITS:ROTATION:SCALES. BITS 8 or 4 (KEY/VALUE for mixed, e.g. 8/4); ROTATION none | hadamard | klt
(per KV head, of the keys after RoPE and of the values) | values (Hadamard on the values only); SCALES absmax | mse (static per channel, fitted to the
rotated keys and values of the first 4,096 calibration tokens: onnxruntime's GroupQueryAttention takes only
these) | token[G] (a scale per token and group of G channels, G = head_dim by default: what the fused op cannot
hold, for comparison). Quantization follows the op's arithmetic (codec/cache_quant.py: symmetric, reciprocal
multiply, round half to even, saturate), keys after RoPE, every token including the sink. Perplexity: WikiText-2
test in windows of 2048 after the sink, the original model in the same run.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from exporter.calib.text import token_windows
from exporter.codec.cache_quant import code_range, dequantize, fit_scales, quantize, rotation_matrix
from exporter.eval.perplexity import nll, perplexity
from exporter.job.job import ExportJob
from exporter.options import DEFAULT_EVAL, ExportOptions


def codes(x: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """Quantize-dequantize with the op's arithmetic at `bits` (scale broadcasts against x)."""
    return dequantize(quantize(x.float(), scale, bits), scale)


def static_scale(z: torch.Tensor, bits: int, fit: str) -> torch.Tensor:
    """Per channel of samples z (N, C): absmax / qmax, or the multiple of it with the least squared error."""
    return fit_scales(z, bits, torch.ones(1) if fit == "absmax" else None)


def token_codes(x: torch.Tensor, bits: int, group: int) -> torch.Tensor:
    """A symmetric absmax scale per token and group of channels (what a static-scale op cannot hold)."""
    g = x.float().reshape(*x.shape[:-1], x.shape[-1] // group, group)
    return codes(g, (g.abs().amax(-1, keepdim=True) / code_range(bits)[1]).clamp_min(1e-8), bits).reshape(x.shape)


def rotation(kind: str, cov: torch.Tensor, G: int, d: int) -> torch.Tensor:
    """(G*d, G*d) block-diagonal orthogonal, one (d, d) block per KV head."""
    if kind == "none":
        return torch.eye(G * d, dtype=torch.float64)
    blocks = []
    for g in range(G):
        if kind == "hadamard":
            blocks.append(rotation_matrix(d))
        else:                                   # klt: the head's principal axes
            blocks.append(torch.linalg.eigh(cov[g * d:(g + 1) * d, g * d:(g + 1) * d])[1].flip(1).T)
    return torch.block_diag(*blocks)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.kv_cache_quant", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None)
    p.add_argument("--eval-tokens", type=int, default=8192)
    p.add_argument("--configs", default="8:none:absmax,8:hadamard:absmax,8:hadamard:mse,4:hadamard:mse,"
                                        "4:hadamard:token")
    a = p.parse_args(argv)
    job = ExportJob.start(ExportOptions(model=a.model))
    cfg, dec, stats = job.config, job.decoder, job.statistics()
    G, d = cfg.num_kv_heads, cfg.head_dim
    samples = job.samples("post-rope")
    tap_of = job.tap_of("post-rope")
    windows = token_windows(job.tokenizer, DEFAULT_EVAL, 2048, a.eval_tokens, job.sink)
    base = perplexity(nll(dec, windows, desc="original"))
    print(f"| config | perplexity | increase |  (original {base:.3f}, {sum(len(w) - 1 for w in windows)} tokens of "
          f"WikiText-2 test)\n| --- | --- | --- |", flush=True)
    for spec in a.configs.split(","):
        bits, kind, fit = spec.split(":")
        key_bits, _, value_bits = bits.partition("/")
        width = {"key": int(key_bits), "value": int(value_bits or key_bits)}
        setup = {}
        for i in range(cfg.num_layers):
            for k in ("key", "value"):
                tap = tap_of(k)
                rot = "none" if kind == "values" and k == "key" else "hadamard" if kind == "values" else kind
                R = rotation(rot, stats.covariance(i, tap), G, d).float()
                scale = None if fit.startswith("token") else static_scale(samples[(i, tap)].float() @ R.T, width[k],
                                                                          fit)
                setup[(i, tap)] = R, scale, width[k]
        group = int(fit[5:] or d) if fit.startswith("token") else 0

        def codec(i):
            def code(name, x):
                if (i, name) not in setup:
                    return None
                R, scale, b = setup[(i, name)]
                z = x.float() @ R.T
                return (token_codes(z, b, group) if scale is None else codes(z, scale, b)) @ R
            return code
        t0 = time.time()
        ppl = perplexity(nll(dec, windows, codec=codec, desc=spec))
        print(f"| {spec} | {ppl:.3f} | {100 * (ppl / base - 1):+.2f} % |  ({time.time() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
