"""Calibration statistics on disk, so exports at other ranks or key modes skip the forward passes.

build/calib/<key>.safetensors holds, per (layer, tap), the running sums of a Covariance and the sink vector.
The key hashes everything the statistics depend on: model fingerprint, text hash, token count, window, sink.
"""
from __future__ import annotations

import hashlib
import json
import os

import torch

from .calibrate import Covariance

VERSION = 3     # 2: query taps (output-aware key metrics), 3: value_mix


def cache_key(**parts) -> str:
    return hashlib.sha256(json.dumps({"v": VERSION, **parts}, sort_keys=True).encode()).hexdigest()[:24]


def save_stats(path: str, accs: dict, sinks: dict, n_tokens: int) -> None:
    from safetensors.torch import save_file
    tensors = {"n_tokens": torch.tensor([n_tokens], dtype=torch.int64)}
    for (layer, tap), acc in accs.items():
        tensors[f"{layer}.{tap}.n"] = torch.tensor([acc.n], dtype=torch.int64)
        tensors[f"{layer}.{tap}.sum"] = acc.sum
        tensors[f"{layer}.{tap}.outer"] = acc.outer
        if (layer, tap) in sinks:
            tensors[f"{layer}.{tap}.sink"] = sinks[(layer, tap)]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file(tensors, path + ".tmp")
    os.replace(path + ".tmp", path)


def load_stats(path: str) -> tuple[dict, dict, int] | None:
    """(accumulators, sinks, tokens) or None when absent or unreadable (then calibration simply runs again)."""
    from safetensors.torch import load_file
    if not os.path.isfile(path):
        return None
    try:
        t = load_file(path)
    except Exception:   # a damaged cache is not an error: it is recomputed
        return None
    accs, sinks = {}, {}
    for name in t:
        if name.endswith(".n"):
            layer, tap = name[:-2].split(".", 1)
            acc = Covariance()
            acc.n, acc.sum, acc.outer = int(t[name][0]), t[f"{layer}.{tap}.sum"], t[f"{layer}.{tap}.outer"]
            accs[(int(layer), tap)] = acc
            if f"{layer}.{tap}.sink" in t:
                sinks[(int(layer), tap)] = t[f"{layer}.{tap}.sink"]
    return accs, sinks, int(t["n_tokens"][0])
