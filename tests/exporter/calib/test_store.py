"""The one statistics format: any accumulator with state()/from_state(), sinks and counts survive the file."""
from __future__ import annotations

import pytest
import torch

from exporter.calib.capture import Covariance
from exporter.calib.store import load_statistics, save_statistics


def test_covariances_sinks_and_counts_round_trip(tmp_path):
    g = torch.Generator().manual_seed(0)
    accs = {(i, tap): Covariance() for i in range(2) for tap in ("key_pre", "value_mix")}
    for acc in accs.values():
        acc.update(torch.randn(9, 4, generator=g))
    sinks = {(0, "key_pre"): torch.randn(4, dtype=torch.float64, generator=g)}
    path = str(tmp_path / "calib" / "x.safetensors")
    save_statistics(path, accs, sinks, {"n_tokens": 18})
    back, back_sinks, counts = load_statistics(path)
    assert counts == {"n_tokens": 18} and set(back) == set(accs)
    for k, acc in accs.items():
        assert back[k].n == acc.n and torch.equal(back[k].covariance(), acc.covariance())
    assert torch.equal(back_sinks[(0, "key_pre")], sinks[(0, "key_pre")])


def test_a_missing_or_damaged_file_is_recomputed_not_an_error(tmp_path):
    assert load_statistics(str(tmp_path / "none.safetensors")) is None
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    assert load_statistics(str(bad)) is None


def test_query_moments_are_kept_as_per_head_blocks_and_survive_the_file(tmp_path):
    """HeadCovariance keeps each head's (d, d) block of the whole moments, equal to the whole's blocks, and the
    file brings it back as one (the key metric reads it as is)."""
    from exporter.calib.capture import HeadCovariance
    from exporter.projectors.metric import head_blocks
    g = torch.Generator().manual_seed(1)
    whole, blocks = Covariance(), HeadCovariance(3)
    for _ in range(4):
        x = torch.randn(11, 3 * 5, generator=g)
        whole.update(x)
        blocks.update(x)
    for centered in (False, True):
        assert torch.allclose(blocks.covariance(centered), head_blocks(whole.covariance(centered), 3), atol=1e-12)
    assert blocks.outer.numel() == 3 * 5 * 5
    path = str(tmp_path / "q.safetensors")
    save_statistics(path, {(0, "query_pre"): blocks}, {})
    back = load_statistics(path)[0][(0, "query_pre")]
    assert isinstance(back, HeadCovariance)
    assert all(torch.equal(back.covariance(c), blocks.covariance(c)) for c in (False, True))


def test_spilled_samples_read_back_the_same_tensors():
    """calib/statistics.SpilledSamples: what a streamed export keeps on disk reads back equal, key by key."""
    import torch
    from exporter.calib.statistics import SpilledSamples
    samples = {(0, "key_pre"): torch.randn(50, 8, dtype=torch.float64), (3, "value"): torch.randn(7, 4).double()}
    spilled = SpilledSamples(samples)
    assert list(spilled) == list(samples) and len(spilled) == 2
    assert all(torch.equal(spilled[k], v) for k, v in samples.items())
    with pytest.raises(KeyError):
        spilled[(1, "value")]
