"""Calibration statistics computed by Ray workers: the accumulators and sinks of one process's `capture`
(calib/capture.py), from W workers of a local Ray cluster (this machine's cores) or of a running one.

Every statistic is a sum over tokens (Covariance: count n, sum of x, sum of x x^T), so the work splits two ways:

    data    the windows cut into W contiguous shards; worker k loads the whole model, captures shard k, and the
            sums add in shard order,  S = S_0 + S_1 + ... + S_{W-1};  the sink vectors (position 0 of the first
            window) are shard 0's. For models that fit one worker.
    layers  the layers cut into W contiguous ranges; worker k loads only its layers (model/stream.LayerStream),
            takes each window's hidden states (1, T, D) from worker k-1, runs its layers, keeps their statistics
            and passes the hidden states on. While worker 1 runs window w, worker 0 runs window w+1: a pipeline.
            For models that do not fit one worker.

Float64 addition is not associative, so data-parallel sums equal the one-process ones to rounding (relative
~1e-15), not bit for bit. In `layers` mode each layer's accumulators see the windows in `capture_streamed`'s order,
through the same blocks, so they differ only where float32 kernels round differently with another thread count.
Workers get the model by path and send back plain dicts of tensors (Covariance.state()), never our classes.

Ray is imported inside functions only: without it the one-process path works, and this module says how to
install it.

Entry points: `capture_sharded(model_dir, windows, accumulators, workers, mode)`, `ray_cluster(cpus)`.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import torch

from ..errors import UserError
from .capture import _tap_for, capture

MODES = ("data", "layers")
INSTALL = "pip install ray==2.60.0 (`make setup` installs it from requirements.txt)"
REPO = str(Path(__file__).resolve().parents[2])


def capture_sharded(model_dir: str, windows, accumulators, workers: int = 2, mode: str = "data",
                    threads: int | None = None) -> tuple[dict, dict]:
    """`capture` on Ray: (accumulators filled, sinks), as `accs = accumulators(cfg); sinks = capture(...)` gives.

    model_dir: a local HF directory (safetensors for mode='layers'), which every worker loads itself.
    accumulators: cfg -> {(layer, tap): an empty Covariance or HeadCovariance}, e.g. statistics.kv_accumulators
    (an importable function: the workers call it too). threads: torch threads per worker (default: the cluster's
    CPUs / workers, so workers do not oversubscribe the cores).
    """
    if mode not in MODES:
        raise UserError(f"mode {mode!r}: choose one of {', '.join(MODES)}")
    from transformers import AutoConfig

    from ..model.config import from_hf
    cfg = from_hf(AutoConfig.from_pretrained(model_dir))
    windows = [list(w) for w in windows]
    workers = max(1, min(workers, len(windows) if mode == "data" else cfg.num_layers))
    with ray_cluster() as ray:
        threads = threads or max(1, int(ray.cluster_resources().get("CPU", 1)) // workers)
        run = _data_parallel if mode == "data" else _layer_pipeline
        results, sinks = run(ray, model_dir, windows, accumulators, workers, threads, cfg.num_layers)
    accs = accumulators(cfg)
    for states in results:                         # shard (or stage) order: S_0 + S_1 + ...
        for key, state in states.items():
            _add(accs[key], state)
    return accs, sinks


@contextmanager
def ray_cluster(cpus: int | None = None):
    """Ray, connected: the running session if there is one, the cluster at $RAY_ADDRESS if set, else a local
    cluster of `cpus` CPUs (default: this machine's cores), shut down on exit (only what was started here)."""
    try:
        import ray
    except ImportError:
        raise UserError(f"sharded calibration needs Ray, which is not installed: {INSTALL}") from None
    started = not ray.is_initialized()
    if started and os.environ.get("RAY_ADDRESS"):
        ray.init(logging_level="ERROR")                # an existing cluster: its nodes have the code already
    elif started:
        path = os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)
        ray.init(num_cpus=cpus or os.cpu_count(), include_dashboard=False, logging_level="ERROR",
                 runtime_env={"env_vars": {"PYTHONPATH": path}})      # workers import exporter from this tree
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def _ranges(n: int, parts: int) -> list[tuple[int, int]]:
    """n items cut into `parts` contiguous ranges as equal as can be."""
    cuts = [round(k * n / parts) for k in range(parts + 1)]
    return list(zip(cuts[:-1], cuts[1:]))


def _data_parallel(ray, model_dir, windows, accumulators, workers, threads, num_layers):
    shard = ray.remote(num_cpus=threads)(_capture_shard)
    results = ray.get([shard.remote(model_dir, windows[a:b], accumulators, threads)
                       for a, b in _ranges(len(windows), workers)])            # in shard order
    return [states for states, _ in results], results[0][1]                   # sinks: the first window's


def _capture_shard(model_dir: str, windows: list[list[int]], accumulators, threads: int):
    """On a worker: the whole model over a shard of the windows -> ({(layer, tap): state}, sinks)."""
    from ..model.config import from_hf
    from ..model.fold import build_decoder
    from ..model.load import load
    torch.set_num_threads(threads)
    hf = load(model_dir).model                              # the exporter's own loading path
    accs = accumulators(from_hf(hf.config))
    sinks = capture(build_decoder(hf), windows, accs, progress=False)
    return _states(accs), sinks


def _layer_pipeline(ray, model_dir, windows, accumulators, workers, threads, num_layers):
    Stage = ray.remote(LayerStage)
    stages = [Stage.options(num_cpus=threads).remote(model_dir, list(range(a, b)), accumulators, threads)
              for a, b in _ranges(num_layers, workers)]
    last = []
    for ids in windows:                # each stage runs its calls in submission order: windows stay in order
        x = ids
        for stage in stages:
            x = stage.run.remote(x)    # an ObjectRef: the hidden states go from stage to stage, not via here
        last.append(x)
    ray.get(last)                      # an error in any stage surfaces here
    results = ray.get([stage.statistics.remote() for stage in stages])
    return [states for states, _ in results], {k: v for _, sinks in results for k, v in sinks.items()}


class LayerStage:
    """A Ray actor holding layers [first, last] of the model (only those weights, plus the input embeddings it
    builds its shell from) and their accumulators."""

    def __init__(self, model_dir: str, layers: list[int], accumulators, threads: int):
        from ..model.fold import build_block, decoder_shell
        from ..model.stream import LayerStream
        torch.set_num_threads(threads)
        stream = LayerStream(model_dir)
        with stream.loaded(*stream.input_names()):
            self.shell = decoder_shell(stream.hf, stream.cfg, [], head=False).eval()   # embeds; masks and RoPE
        with stream.loaded(*(stream.layer_prefix(i) for i in layers)):
            self.blocks = {i: build_block(stream.hf, stream.cfg, i).eval() for i in layers}
        self.first, self.last = layers[0] == 0, layers[-1] == stream.cfg.num_layers - 1
        self.accs = {k: a for k, a in accumulators(stream.cfg).items() if k[0] in self.blocks}
        self.sinks = {}
        for i, block in self.blocks.items():
            block.attn.tap = _tap_for(i, self.accs, self.sinks)

    def run(self, x):
        """x: a window's token ids (the first stage) or its hidden states (1, T, D) -> the hidden states after
        this stage's layers (None from the last stage: nobody reads them)."""
        with torch.no_grad():
            t = torch.tensor([x]) if self.first else None                      # (1, T)
            T = len(x) if self.first else x.shape[1]
            pos = torch.arange(T)[None]                                         # (1, T)
            if self.first:
                x = self.shell.embed(t, pos)                                    # (1, T, D)
            step = self.shell.step(torch.ones(1, T, dtype=torch.long), pos, T, torch.float32)
            for i, block in self.blocks.items():
                empty = torch.zeros(1, block.attn.G, 0, block.attn.d)          # (1, G, 0, d): no past
                x, _ = self.shell.run_block(block, i, x, step, (empty, empty))
        return None if self.last else x

    def statistics(self):
        return _states(self.accs), self.sinks


def _states(accs: dict) -> dict:
    """{(layer, tap): {'n', 'sum', 'outer'} tensors} of the accumulators that saw any token."""
    return {key: acc.state() for key, acc in accs.items() if acc.n}


def _add(acc, state: dict) -> None:
    """acc += a worker's sums (Covariance and HeadCovariance alike). A received tensor may be read-only: add,
    never add in place."""
    acc.n += int(state["n"][0])
    acc.sum = state["sum"].clone() if acc.sum is None else acc.sum + state["sum"]
    acc.outer = state["outer"].clone() if acc.outer is None else acc.outer + state["outer"]
