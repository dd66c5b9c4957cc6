"""Calibration statistics on Ray workers against one process: wall time, and whether the statistics match.

    python -m benchmarks.ray_calibration [--model DIR] [--tokens 16384] [--window 1024] [--workers 1,2]
                                         [--modes data,layers]

DIR: a local HF directory with safetensors; by default SmolLM2-135M, written once to build/smollm2-135m-safetensors
from the default GGUF (as `benchmarks.streamed_calibration --from-gguf` does). The export's calibration: the
first --tokens tokens of the default calibration text in windows of --window, the sink first, and the export's
accumulators (`calib/statistics.kv_accumulators`). One local Ray cluster with this machine's cores serves every
row; each Ray row is `calib/sharded.capture_sharded` (the workers load the model themselves, and that is timed),
with the cores split between the workers (torch threads = cores / workers). The one-process row loads the model,
builds the compact decoder and runs `calib/capture.capture` here. Each Ray row's statistics (every covariance's n,
sum and sum of outer products, and the sink vectors) are compared with the one-process ones: the largest
difference relative to the largest entry of its tensor.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_MODEL = os.path.join(REPO, "build", "smollm2-135m-safetensors")


def calibration_windows(model: str, calib: str, tokens: int, window: int):
    from transformers import AutoConfig, AutoTokenizer

    from exporter.calib.text import token_windows
    from exporter.calib.tokens import sink_token_id
    from exporter.model.config import from_hf
    tok = AutoTokenizer.from_pretrained(model)
    cfg = from_hf(AutoConfig.from_pretrained(model))
    return token_windows(tok, calib, min(window, cfg.max_positions - 1), tokens, sink_token_id(tok, "auto"))


def one_process(model: str, windows) -> tuple[dict, dict]:
    from exporter.calib.capture import capture
    from exporter.calib.statistics import kv_accumulators
    from exporter.model.config import from_hf
    from exporter.model.fold import build_decoder
    from exporter.model.load import load
    hf = load(model).model
    accs = kv_accumulators(from_hf(hf.config))
    return accs, capture(build_decoder(hf), windows, accs, progress=False)


def largest_difference(reference: tuple[dict, dict], other: tuple[dict, dict]) -> float:
    """max over tensors of max |a - b| / max |a|: the counts, sums, outer products and sinks."""
    (accs, sinks), (accs2, sinks2) = reference, other
    if accs.keys() != accs2.keys() or sinks.keys() != sinks2.keys():
        return float("inf")
    pairs = [(sinks[k], sinks2[k]) for k in sinks]
    for k, a in accs.items():
        b = accs2[k]
        if a.n != b.n:
            return float("inf")
        pairs += [(a.sum, b.sum), (a.outer, b.outer)]
    return max(((x - y).abs().max() / x.abs().max().clamp(min=1e-300)).item() for x, y in pairs)


def warm_up(ray, cpus: int) -> None:
    """Every pooled Ray worker imports torch and transformers before the timing starts, so no row pays for it."""
    @ray.remote(num_cpus=1)
    def imports():
        import importlib
        for name in ("torch", "transformers", "exporter.model.load"):
            importlib.import_module(name)
    ray.get([imports.remote() for _ in range(cpus)])


def main(argv=None) -> int:
    from exporter.options import DEFAULT_CALIB
    p = argparse.ArgumentParser(prog="python -m benchmarks.ray_calibration", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=DEFAULT_MODEL, help="a local HF directory with safetensors (default: SmolLM2)")
    p.add_argument("--calib", default=str(DEFAULT_CALIB))
    p.add_argument("--tokens", type=int, default=16384)
    p.add_argument("--window", type=int, default=1024)
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    p.add_argument("--modes", default="data,layers", help="data, layers or both")
    a = p.parse_args(argv)
    if a.model == DEFAULT_MODEL and not os.path.isdir(a.model):
        from benchmarks.streamed_calibration import write_safetensors_copy
        from exporter.model.load import default_gguf
        write_safetensors_copy(default_gguf(), a.model)

    from exporter.calib.sharded import capture_sharded, ray_cluster
    from exporter.calib.statistics import kv_accumulators
    windows = calibration_windows(a.model, a.calib, a.tokens, a.window)
    cpus = os.cpu_count() or 1
    t0 = time.perf_counter()
    reference = one_process(a.model, windows)
    rows = [("one process, whole model (`capture`)", 1, cpus, time.perf_counter() - t0, "reference")]
    t0 = time.perf_counter()
    with ray_cluster(cpus) as ray:
        warm_up(ray, cpus)
        startup = time.perf_counter() - t0
        for mode in a.modes.split(","):
            for workers in (int(w) for w in a.workers.split(",")):
                t0 = time.perf_counter()
                stats = capture_sharded(a.model, windows, kv_accumulators, workers=workers, mode=mode)
                seconds = time.perf_counter() - t0
                rows.append((f"Ray, {mode}", workers, max(1, cpus // workers), seconds,
                             f"{largest_difference(reference, stats):.1e}"))
    n_tokens = sum(len(w) - 1 for w in windows)
    print(f"model {a.model}, {n_tokens} calibration tokens in {len(windows)} windows of up to {a.window}, "
          f"{cpus} cores; local Ray cluster started and its workers warmed in {startup:.1f} s (not in the rows)\n")
    print("| run | workers | torch threads each | seconds | statistics vs one process (largest rel. difference) |")
    print("| --- | --- | --- | --- | --- |")
    for name, workers, threads, seconds, diff in rows:
        print(f"| {name} | {workers} | {threads} | {seconds:.1f} | {diff} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
