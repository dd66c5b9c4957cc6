"""python -m exporter.analyze: spectra of activations and weights, robust to sinks and outlier dimensions, what
PCA at "k for 95 % variance" costs in perplexity, and the KV memory it saves.

    python -m exporter.analyze [--model M] [--text FILE] [--out DIR] ...      (make analyze MODEL=... TEXT=...)

Writes build/analyze-<model>/ (spectrum.json, report.md, eigenvalues.npz, PNG plots) through a temp directory
renamed when complete (and deleted when the analysis fails), and prints the memory table. See docs/analyze.md.

Entry point: `run(AnalyzeOptions)`, stage by stage: capture (statistics.py), activation spectra (activations.py),
weight spectra (weights.py), perplexity rows (plan.py, scoring.py), memory (memory.py), report and plots.
"""
from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import time
from dataclasses import asdict

import numpy as np
import torch

from ..calib.statistics import Statistics
from ..calib.tokens import sink_token_id
from ..files import write_text
from ..model.config import from_hf
from ..model.fold import build_decoder
from ..model.load import load
from ..model.weights import model_fingerprint
from . import plots
from .activations import activation_spectra
from .memory import memory
from .options import AnalyzeOptions, check_options
from .plan import plan_settings
from .report import report_md
from .scoring import engine_for, score
from .statistics import tap_statistics
from .threads import busy_cores, pick_threads
from .weights import weight_spectra


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2     # Linux reports KiB


def save_eigenvalues(path: str, eigs: dict, sigmas: dict) -> None:
    arrays = {f"{tap}.{v}.{i}": e for (tap, v), es in eigs.items() for i, e in enumerate(es)}
    arrays.update({f"weight.{name}.{i}": s for name, ss in sigmas.items() for i, s in enumerate(ss)})
    np.savez_compressed(path, **arrays)


@contextlib.contextmanager
def scratch_dir(path: str):
    """A fresh directory at path for the block, deleted when the block fails (a UserError or Ctrl-C included)."""
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    try:
        yield path
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise


def run(o: AnalyzeOptions) -> str:
    """The whole analysis; returns the output directory."""
    check_options(o)
    start, timings = time.time(), {}
    load_at_start, busy = os.getloadavg()[0], busy_cores()
    threads = pick_threads(o.threads, busy)
    torch.set_num_threads(threads)
    print(f"using {threads} torch thread(s): {busy:.1f} of {os.cpu_count()} cores busy with other work "
          f"(load average {load_at_start:.1f})", flush=True)

    def stage(name, t0):
        timings[name] = time.time() - t0
        return time.time()

    t0 = time.time()
    loaded = load(o.model, trust_remote_code=o.trust_remote_code)
    hf, tok = loaded.model, loaded.tokenizer
    cfg = from_hf(hf.config)
    sink_id = sink_token_id(tok, o.sink)
    fingerprint = model_fingerprint(hf)
    out = (o.out or os.path.join(o.build_dir, f"analyze-{loaded.name}")).rstrip("/")
    tmp = out + ".tmp"
    t0 = stage("load", t0)
    with scratch_dir(tmp):
        accs, sinks, windows, info = tap_statistics(build_decoder(hf), tok, cfg, o, sink_id, fingerprint)
        t0 = stage("capture", t0)
        acts, eigs = activation_spectra(accs, sinks, cfg, o, tok, windows, sink_id is not None)
        t0 = stage("activation spectra", t0)
        weights, sigmas = weight_spectra(hf, cfg, o.probe_ranks, o.fraction)
        t0 = stage("weight spectra", t0)
        spectrum_stage = {"seconds": sum(timings[k] for k in ("capture", "activation spectra", "weight spectra")),
                          "peak_rss_gib": peak_rss_gib()}

        quality = None
        if not o.skip_quality:
            settings = plan_settings(cfg, eigs, weights, o)
            print(f"scoring {len(settings)} settings ({engine_for(o.engine, cfg)} engine)", flush=True)
            deadline = start + o.time_budget if o.time_budget > 0 else None
            quality = score(settings, hf, tok, cfg, Statistics(accs, sinks, info), sink_id, o, tmp, deadline)
            t0 = stage("perplexity", t0)

        mem_js, table_md = memory(cfg, quality, o)
        print(table_md, flush=True)
        sink_token = tok.convert_ids_to_tokens(sink_id) if sink_id is not None else None
        model = {"source": loaded.source, "name": loaded.name, "fingerprint": fingerprint, **cfg.to_json()}
        result = {"model": model, "command": o.command, "options": asdict(o),
                  "text": {**info, "windows": len(windows), "sink_token": sink_token, "sink_token_id": sink_id},
                  "activations": acts, "weights": weights, "quality": quality, "memory": mem_js,
                  "spectrum_stage": spectrum_stage,
                  "machine": {"cores": os.cpu_count(), "threads": threads, "load_average_at_start": load_at_start,
                              "busy_cores_at_start": busy}}
        result["plots"] = plots.write_all(result, eigs, sigmas, tmp)
        save_eigenvalues(os.path.join(tmp, "eigenvalues.npz"), eigs, sigmas)
        t0 = stage("plots", t0)
        timings["total"] = time.time() - start
        result["timings_s"], result["peak_rss_gib"] = timings, peak_rss_gib()
        write_text(os.path.join(tmp, "spectrum.json"), json.dumps(result, indent=1) + "\n")
        write_text(os.path.join(tmp, "report.md"), report_md(result, table_md))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    print(f"wrote {out} (spectrum.json, report.md, {len(result['plots'])} plots) in {timings['total']:.0f} s")
    return out
