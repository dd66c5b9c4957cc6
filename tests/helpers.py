"""What many tests share: prompts, the references of an export, a greedy reference loop, a sink check."""
from __future__ import annotations

from pathlib import Path

import numpy as np

REPO = str(Path(__file__).resolve().parents[1])     # the repository root (tests run from anywhere)


def prompts(sink: int | None, lengths=(40, 29), seed=0) -> list[list[int]]:
    g = np.random.default_rng(seed)
    prefix = [] if sink is None else [sink]
    return [prefix + g.integers(3, 300, n).tolist() for n in lengths]


def equal_prompts(sink: int, n: int = 2, length: int = 33, seed: int = 0) -> list[list[int]]:
    """n prompts of one length, sink first: what shared-buffer exports take (no left padding)."""
    rng = np.random.default_rng(seed)
    return [[sink] + rng.integers(3, 250, length - 1).tolist() for _ in range(n)]


CALIB_TOKENS = 4096     # tiny models: enough for rank <= 32 (the min is checked by the exporter)


def load_ref(export_dir: str):
    """(hf model, tokenizer, reference decoder, metadata) for an export."""
    from graphs.metadata import load_metadata
    from validate.reference import load_references
    meta = load_metadata(export_dir)
    return (*load_references(export_dir, meta), meta)


def reference_greedy(ref, prompt: list[int], steps: int) -> list[int]:
    """The reference decoder's greedy continuation of prompt (sink included), each step recomputed from
    scratch without a cache: the independent answer the runtimes' cached generation must reproduce."""
    import torch
    ids = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(steps):
            pos = torch.arange(ids.shape[1])[None]
            nxt = ref(ids, torch.ones_like(ids), pos, *ref.empty_past(1))[0][0, -1].argmax()
            ids = torch.cat([ids, nxt.view(1, 1)], 1)
    return ids[0, len(prompt):].tolist()


def assert_sink_exact_rest_changed(full, coded, sink: int, prompt: list[int]) -> None:
    """The coded decoder's logits equal the full one's at the sink (position 0) and differ elsewhere."""
    import torch
    ids = torch.tensor([prompt])
    mask, pos = torch.ones_like(ids), torch.arange(ids.shape[1])[None]
    with torch.no_grad():
        a = full(ids, mask, pos, *full.empty_past(1))[0]
        b = coded(ids, mask, pos, *coded.empty_past(1))[0]
    scale = a.abs().max().item()
    assert (a[0, 0] - b[0, 0]).abs().max().item() <= 1e-4 * scale       # sink: exact
    assert (a[0, 1:] - b[0, 1:]).abs().max().item() > 1e-2 * scale      # the rest: compressed
