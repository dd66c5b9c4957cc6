"""Simulated transform coding of the KV cache against simulated KIVI-like quantization, same model, same text,
same run (groundwork for #6; the ONNX graph with quantized latents is not built yet).

    python -m benchmarks.klt_quant [--model M] [--bits 4,3,2] [--eval-tokens 8192]

KLT: per layer, keys (before RoPE) and values are rotated into the eigenvectors of their calibration
covariance; integer bits per component by allocate_bits (exporter/bits.py) on the eigenvalues for an average of
b bits per dimension; each component with bits is quantized with min/max over groups of 32 tokens (a float16
scale and zero per component per group), the others are dropped (mean); the sink at position 0 stays exact.
KIVI-like: benchmarks/kv_quant.py. Both quantize and dequantize in float32 inside the PyTorch decoder
(attention.Attention's codec hook). Like the issue's own simulation, a group's scale is computed over tokens a
real decoder has not yet seen; a real cache keeps the open group unquantized.
"""
from __future__ import annotations

import argparse
import sys

import torch

from exporter.calib.text import fitting_window, token_windows
from exporter.eval.perplexity import nll, perplexity
from exporter.job.job import ExportJob
from exporter.options import DEFAULT_EVAL, ExportOptions
from exporter.quant.theory import allocate_bits

from . import kv_quant

GROUP = kv_quant.GROUP
SCALE_BYTES = kv_quant.SCALE_BYTES


def spectrum(cov: torch.Tensor) -> tuple[list[float], torch.Tensor]:
    """Eigenvalues (descending, clipped at 0) and eigenvectors as columns (C, C) of a covariance."""
    evals, evecs = torch.linalg.eigh(cov)                                       # ascending
    order = torch.argsort(evals, descending=True, stable=True)
    return evals[order].clamp_min(0).tolist(), evecs[:, order]


class KLTCode:
    """One tensor's transform code: x -> mean + U q(U^T (x - mean)), q quantizing component i with bits[i]."""

    def __init__(self, spec: tuple[list[float], torch.Tensor], mean: torch.Tensor, avg_bits: float):
        lam, u = spec
        self.u, self.mean = u.float(), mean.float()                             # (C, C), (C,)
        self.bits = allocate_bits(lam, int(round(avg_bits * len(lam))))
        self.keep = torch.tensor([b > 0 for b in self.bits])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, C) -> coded (B, T, C); position 0 exact."""
        z = (x[:, 1:] - self.mean) @ self.u                                     # (B, T-1, C)
        out = torch.zeros_like(z)
        for b in sorted(set(self.bits) - {0}):
            cols = torch.tensor([i for i, bi in enumerate(self.bits) if bi == b])
            out[..., cols] = kv_quant.quantize_keys(torch.cat([z[:, :1, cols], z[..., cols]], 1), b)[:, 1:]
        return torch.cat([x[:, :1], self.mean + out @ self.u.T], dim=1)

    def bytes_per_token(self) -> float:
        return sum(self.bits) / 8 + int(self.keep.sum()) * SCALE_BYTES / GROUP


TAPS = {"key": "key_pre", "value": "value"}


def klt_codes(accs, spectra: dict, avg_bits: float) -> dict:
    """(layer, 'key'|'value') -> KLTCode at avg_bits; spectra: the same keys -> spectrum(covariance)."""
    return {(i, k): KLTCode(spec, accs[(i, TAPS[k])].mean, avg_bits) for (i, k), spec in spectra.items()}


def klt_hook(codes: dict):
    """layer -> an Attention.codec hook coding pre-RoPE keys and values with that layer's codes."""
    kind = {tap: k for k, tap in TAPS.items()}
    return lambda i: (lambda name, x: codes[(i, kind[name])](x) if name in kind else None)


def klt_bytes(codes: dict) -> float:
    return sum(c.bytes_per_token() for c in codes.values())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.klt_quant", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None)
    p.add_argument("--bits", default="4,3,2")
    p.add_argument("--eval-tokens", type=int, default=8192)
    a = p.parse_args(argv)
    c = ExportJob.start(ExportOptions(model=a.model))
    cfg, sink, dec, accs, loaded = c.config, c.sink, c.decoder, c.statistics().accumulators, c.loaded
    spectra = {(i, k): spectrum(accs[(i, tap)].covariance()) for i in range(cfg.num_layers) for k, tap in TAPS.items()}
    window = fitting_window(2048, cfg.max_positions, sink)
    windows = token_windows(loaded.tokenizer, DEFAULT_EVAL, window, a.eval_tokens, sink)
    base = perplexity(nll(dec, windows, desc="original"))
    fp16 = cfg.num_layers * 2 * cfg.kv_dim * 2
    print(f"{loaded.name}: {a.eval_tokens} tokens of {DEFAULT_EVAL.name}, windows of {window} after the sink; "
          f"original perplexity {base:.3f}; fp16 cache {fp16} B/token\n")
    print("| cache | bits/dim | B/token | x fewer than fp16 | perplexity | change |")
    print("| --- | --- | --- | --- | --- | --- |")
    for b in (int(x) for x in a.bits.split(",")):
        kivi = kv_quant.codec(b)
        nbytes = kv_quant.bytes_per_token(b, cfg.num_layers, cfg.kv_dim)
        rows = [("KIVI-like (raw keys per channel, values per token)", lambda i: kivi, nbytes)]
        codes = klt_codes(accs, spectra, b)
        rows.append(("KLT + spectral bits (pre-RoPE keys)", klt_hook(codes), klt_bytes(codes)))
        lo, hi = 0.0, float(b)                          # the same at KIVI's bytes, scales counted: bisect avg bits
        for _ in range(12):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if klt_bytes(klt_codes(accs, spectra, mid)) <= nbytes else (lo, mid)
        codes = klt_codes(accs, spectra, lo)
        rows.append((f"KLT + spectral bits at KIVI's bytes ({lo:.2f} bits/dim)", klt_hook(codes), klt_bytes(codes)))
        for label, make, nb in rows:
            ppl = perplexity(nll(dec, windows, codec=make, desc=label[:12]))
            print(f"| {label} | {b} | {nb:.0f} | {fp16 / nb:.2f} | {ppl:.3f} | {100 * (ppl / base - 1):+.2f} % |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
