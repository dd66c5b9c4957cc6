"""Calibration statistics on disk, so later runs (other ranks, key modes, an analysis) skip the forward passes.

One format for every accumulator: build/calib/<name>.safetensors holds, per (layer, tap), the tensors of the
accumulator's state() as `<layer>.<tap>.<field>`, the sink vector as `<layer>.<tap>.sink`, and whole-file counts
(e.g. `n_tokens`) as one-element int64 tensors. The name hashes everything the statistics depend on (model
fingerprint, text hash, token count, window, sink, and for analysis its taps and outlier factor). A file is
written under a temporary name and renamed, so a kill mid-write leaves the old file or none; one that is
missing or damaged anyway is not an error: the capture simply runs again.

Entry points: `cache_key`, `save_statistics`, `load_statistics`.
"""
from __future__ import annotations

import hashlib
import json
import os

import torch

from .capture import Covariance

VERSION = 4     # 2: query taps (output-aware key metrics), 3: value_mix, 4: query taps as per-head blocks


def cache_key(**parts) -> str:
    return hashlib.sha256(json.dumps({"v": VERSION, **parts}, sort_keys=True).encode()).hexdigest()[:24]


def save_statistics(path: str, accs: dict, sinks: dict, counts: dict[str, int] | None = None) -> None:
    """Write accumulators {(layer, tap): acc with .state()}, sink vectors and whole-file counts, atomically."""
    from safetensors.torch import save_file
    tensors = {name: torch.tensor([value], dtype=torch.int64) for name, value in (counts or {}).items()}
    for (layer, tap), acc in accs.items():
        for field, t in acc.state().items():
            tensors[f"{layer}.{tap}.{field}"] = t.contiguous()
        if (layer, tap) in sinks:
            tensors[f"{layer}.{tap}.sink"] = sinks[(layer, tap)].contiguous()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"      # one per writer: two exports may fill the same cache at once
    try:
        save_file(tensors, tmp)
        os.replace(tmp, path)               # a kill before this line leaves the old file (or none), never half
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_statistics(path: str, accumulator=Covariance) -> tuple[dict, dict, dict] | None:
    """(accumulators rebuilt with accumulator.from_state, sinks, counts), or None when absent or unreadable."""
    from safetensors.torch import load_file
    if not os.path.isfile(path):
        return None
    try:
        t = load_file(path)
    except Exception:   # a damaged cache is not an error: it is recomputed
        return None
    groups: dict[tuple[int, str], dict] = {}
    counts = {}
    for name, tensor in t.items():
        parts = name.split(".", 2)
        if len(parts) < 3:
            counts[name] = int(tensor[0])
            continue
        groups.setdefault((int(parts[0]), parts[1]), {})[parts[2]] = tensor
    sinks = {k: g.pop("sink") for k, g in groups.items() if "sink" in g}
    return {k: accumulator.from_state(g) for k, g in groups.items()}, sinks, counts
