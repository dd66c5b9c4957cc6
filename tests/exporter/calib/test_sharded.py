"""Calibration sharded on a local Ray cluster of 2 workers (calib/sharded.py): the statistics of one process's
capture, data-parallel over windows and layer-pipelined. Under CI=true a missing Ray is a failure, not a skip."""
from __future__ import annotations

import os
import sys

import pytest
import torch

from exporter.calib.capture import capture, capture_streamed
from exporter.calib.sharded import capture_sharded, ray_cluster
from exporter.calib.statistics import kv_accumulators
from exporter.errors import UserError
from exporter.model.fold import build_decoder
from exporter.model.load import load
from exporter.model.stream import LayerStream

CI = os.environ.get("CI") == "true"       # CI must have Ray (`make setup` installs it): without it the tests fail
WORKERS = 2
# Data mode: float64 sums of the same float32 vectors added in another order (shard by shard, then the shards)
# differ by rounding, ~1e-16 of the largest term per addition over a few hundred tokens (1.9e-16 measured on
# llama), far below 1e-9 of the tensor's largest entry (not of each entry: an entry near 0 is a cancellation).
# Layers mode: each layer sees the windows in capture_streamed's order through the same blocks, so the same
# bits. Both hold because the reference's float32 forward passes run with the workers' thread count (1).
RTOL = 1e-9


def _windows(n=4, length=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [[1] + torch.randint(3, 300, (length,), generator=g).tolist() for _ in range(n)]


@pytest.fixture(scope="module")
def cluster():
    if not CI:
        pytest.importorskip("ray")
    with ray_cluster(cpus=WORKERS):                # one local cluster for the module, one CPU per worker
        yield


@pytest.fixture
def one_thread():
    """The reference capture with the workers' torch threads (cpus / workers = 1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _one_process(path: str, mode: str):
    accs = kv_accumulators(LayerStream(path).cfg)
    if mode == "data":
        sinks = capture(build_decoder(load(path).model), _windows(), accs, progress=False)
    else:
        sinks = capture_streamed(LayerStream(path), _windows(), accs, progress=False)
    return accs, sinks


@pytest.mark.parametrize("mode", ["data", "layers"])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_sharded_statistics_equal_one_process(arch, mode, tiny_model_dir, cluster, one_thread):
    path = tiny_model_dir(arch)
    ref, ref_sinks = _one_process(path, mode)
    accs, sinks = capture_sharded(path, _windows(), kv_accumulators, workers=WORKERS, mode=mode)
    assert accs.keys() == ref.keys() and sinks.keys() == ref_sinks.keys()
    for key, a in ref.items():
        b = accs[key]
        assert type(b) is type(a) and b.n == a.n, key
        same = torch.equal if mode == "layers" else _close
        assert same(b.sum, a.sum) and same(b.outer, a.outer) and same(sinks[key], ref_sinks[key]), key


def _close(x, reference) -> bool:
    return (x - reference).abs().max().item() <= RTOL * reference.abs().max().item()


def test_missing_ray_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)          # `import ray` raises ImportError
    with pytest.raises(UserError, match="pip install ray"):
        with ray_cluster():
            pass
