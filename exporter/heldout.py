"""Perplexity of the PyTorch decoder on token windows, with an optional codec hook (train.py, kv_quant.py):
the measure rank searches and benchmarks use before anything is exported."""
from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm


def nll(decoder, windows: list[list[int]], codec=None, desc: str = "perplexity",
        progress: bool = True) -> tuple[float, int]:
    """Summed next-token NLL and token count over the windows (the sink at position 0 is never scored).
    codec(layer) -> an Attention.codec hook for that layer, or None."""
    total, n = 0.0, 0
    for i, blk in enumerate(decoder.blocks):
        blk.attn.codec = codec(i) if codec else None
    try:
        with torch.no_grad():
            for ids in tqdm(windows, desc=desc, unit="window", leave=False, disable=not progress):
                x = torch.tensor([ids])                                                        # (1, T)
                logits = decoder(x, torch.ones_like(x), torch.arange(x.shape[1])[None], *decoder.empty_past(1))[0]
                lp = torch.log_softmax(logits[0, :-1].float(), -1)                             # (T-1, V)
                total -= lp.gather(1, x[0, 1:, None]).double().sum().item()
                n += x.shape[1] - 1
    finally:
        for blk in decoder.blocks:
            blk.attn.codec = None
    return total, n


def perplexity(nll_n: tuple[float, int]) -> float:
    return math.exp(nll_n[0] / nll_n[1])
