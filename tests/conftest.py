"""Shared fixtures: tiny random models of every architecture and their exports, made once per test session."""
from __future__ import annotations

import pytest

from tests import tiny_models

CALIB_TOKENS = 4096     # tiny models: enough for rank <= 32 (the min is checked by the exporter)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """tiny_model_dir(arch) -> a local HF directory with a random model of that architecture."""
    root = tmp_path_factory.mktemp("tiny-models")
    made = {}

    def get(arch: str) -> str:
        if arch not in made:
            made[arch] = tiny_models.make(arch, str(root / arch))
        return made[arch]
    return get


@pytest.fixture(scope="session")
def tiny_export(tiny_model_dir, tmp_path_factory):
    """tiny_export(arch, k, key_mode) -> export directory (cached per argument tuple)."""
    from exporter.pipeline import ExportOptions, run_export
    root = tmp_path_factory.mktemp("tiny-exports")
    made = {}

    def get(arch: str, k="full", key_mode: str = "pre-rope", **kw) -> str:
        key = (arch, str(k), key_mode, tuple(sorted((n, repr(v)) for n, v in kw.items())))
        if key not in made:
            out = str(root / f"{arch}-{k}-{key_mode}-{len(made)}")
            made[key] = run_export(ExportOptions(model=tiny_model_dir(arch), k=str(k), key_mode=key_mode,
                                                 calib_tokens=CALIB_TOKENS, window=256, out=out,
                                                 build_dir=str(root), **kw))
        return made[key]
    return get


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
