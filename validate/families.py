"""Parity per model family: a tiny random model of each architecture the exporter takes, exported and checked.

    python -m validate.families [--arch NAME ...] [--out DIR] [--json FILE]

For each family (validate/tiny_models.py: its quirks at toy size, no hub), one row of figures:
  HF          the reference decoder at K=full against HF transformers (64 cached greedy steps against HF
              recomputing the sequence; validate/parity.check_hf_parity)
  K=full, K=8 pre-rope, K=8 post-rope
              ONNX Runtime against the reference (prefill of a left-padded batch of 2, 64 greedy decode steps;
              validate/parity.check_parity): the largest logit difference relative to the largest logit
  int8        the KV_DTYPE=int8 shared-buffer export, by the quantized-cache criterion: mean KL(reference ||
              ORT) as a fraction of what the int8 cache itself costs (families with sliding windows:
              WINDOW_CACHE=full, every token kept and the op masking the window)
  windows     the sliding-window layers, and the largest cache a windowed layer returned after a prompt of 3x
              its window (it must be window - 1)
  genai       whether onnxruntime-genai can be given the K=full export (genai_config.json); windowed families
              only with WINDOW_CACHE=full (tests/validate/test_interop.py runs genai on both)
Tolerances: validate/tolerances.py. The same checks run in `make test` (tests/validate/test_parity.py and its
neighbours); this prints them as one table, the figures docs/families.md quotes.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile

import numpy as np

from graphs.metadata import load_metadata

from . import tiny_models
from .tolerances import LOGIT_RTOL, QUANTIZED_KL_FRACTION

SETTINGS = (("full", "pre-rope"), ("8", "pre-rope"), ("8", "post-rope"))   # GPT-2: 8 in k-space both ways
CALIB_TOKENS = 4096


def _export(model_dir: str, out: str, k: str, mode: str, **kw) -> str:
    from exporter.job.run import run_export
    from exporter.options import ExportOptions
    return run_export(ExportOptions(model=model_dir, k=k, key_mode=mode, calib_tokens=CALIB_TOKENS, window=256,
                                    out=out, build_dir=os.path.dirname(out), **kw))


def _prompts(sink: int, lengths=(40, 29)) -> list[list[int]]:
    g = np.random.default_rng(0)
    return [[sink] + g.integers(3, 300, n).tolist() for n in lengths]


def _largest_windowed_cache(export: str) -> int | None:
    """After a prompt of 3x the largest window: the longest present tensor of a windowed layer, or None."""
    from .ort_model import OrtModel
    meta = load_metadata(export)
    windows = [s.window for s in meta.layout.keys if s.window]
    if not windows:
        return None
    model = OrtModel(export, meta)
    n = 3 * max(windows)
    ids = np.array([_prompts(meta.sink["token_id"], (n - 1,))[0]], np.int64)
    _, past = model(ids, np.ones_like(ids), np.arange(n)[None], model.empty_past(1))
    return max(p.shape[2] for (layer, kind, _, _), p in zip(meta.layout.names(), past)
               if meta.layout.shape(layer, kind).window)


def family_row(arch: str, root: str) -> dict:
    """Every figure of one family's row (see the module's docstring)."""
    from exporter.errors import UserError
    from .ort_model import OrtModel
    from .parity import check_hf_parity, check_parity, hf_original
    from .reference import load_references
    model_dir = tiny_models.make(arch, os.path.join(root, arch))
    row = {"arch": arch, "model_type": tiny_models.config(arch).model_type}
    for k, mode in SETTINGS:
        export = _export(model_dir, os.path.join(root, f"{arch}-{k}-{mode}"), k, mode)
        meta = load_metadata(export)
        hf, _, ref = load_references(export, meta)
        if k == "full":
            hf_result = check_hf_parity(hf, ref, _prompts(meta.sink["token_id"]), meta.pad_token_id)
            row["hf"] = {"rel_diff": hf_result.rel_diff, "greedy": hf_result.greedy_identical,
                         "passed": hf_result.passed}
            row["windows"] = sorted({s.window for s in meta.layout.keys if s.window})
            row["largest_windowed_cache"] = _largest_windowed_cache(export)
            row["genai"] = "yes" if os.path.isfile(os.path.join(export, "genai_config.json")) else \
                meta.extra.get("genai", "no")
        result = check_parity(ref, OrtModel(export, meta), _prompts(meta.sink["token_id"]), meta.pad_token_id)
        row[f"{k} {mode}"] = {"rel_diff": result.rel_diff, "greedy": f"{result.greedy_agreement}/"
                              f"{result.decode_steps + 1}", "passed": result.passed}
    try:
        export = _export(model_dir, os.path.join(root, f"{arch}-int8"), "full", "pre-rope", cache="shared-buffer",
                         kv_dtype="int8", kv_rotation="hadamard", window_cache="full")
    except UserError as e:
        row["int8"] = {"refused": str(e)}
    else:
        meta = load_metadata(export)
        hf, _, ref = load_references(export, meta)
        prompts = _prompts(meta.sink["token_id"], (33, 33))                      # shared buffer: one length
        result = check_parity(ref, OrtModel(export, meta), prompts, meta.pad_token_id, original=hf_original(hf))
        row["int8"] = {"kl_fraction": result.kl_mean / result.kl_cost, "passed": result.passed}
    return row


def _figure(cell: dict) -> str:
    return f"{cell['rel_diff']:.1e}, greedy {cell['greedy']}" + ("" if cell.get("passed", True) else " **FAIL**")


def markdown(rows: list[dict]) -> str:
    head = ["family (model_type)", "HF vs reference, K=full",
            *(f"ORT, K={k}" + ("" if k == "full" else f" {m}") for k, m in SETTINGS),
            "ORT, int8 cache (KL / its cost)", "windows (largest windowed cache)", "genai config"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        int8 = r["int8"]
        int8_cell = f"refused: {int8['refused']}" if "refused" in int8 else \
            f"{int8['kl_fraction']:.1e}" + (" (WINDOW_CACHE=full)" if r["windows"] else "") \
            + ("" if int8["passed"] else " **FAIL**")
        windows = ", ".join(map(str, r["windows"])) + f" ({r['largest_windowed_cache']})" if r["windows"] else "-"
        genai = "yes" if r["genai"] == "yes" else "WINDOW_CACHE=full" if "sliding" in r["genai"] else "no"
        lines.append(f"| {r['arch']} ({r['model_type']}) | {r['hf']['rel_diff']:.1e}, greedy "
                     f"{'equal' if r['hf']['greedy'] else 'DIFFERENT'} | "
                     + " | ".join(_figure(r[f"{k} {m}"]) for k, m in SETTINGS)
                     + f" | {int8_cell} | {windows} | {genai} |")
    return "\n".join(lines) + (f"\n\nTolerances: ORT and HF logits within {LOGIT_RTOL:g} of the largest logit and "
                               f"identical greedy tokens; the int8 cache's KL within {QUANTIZED_KL_FRACTION:g} of "
                               "its own cost.")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m validate.families", description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", action="append", choices=tiny_models.ARCHS + tiny_models.EXTRA,
                   help="one family (repeatable); default: all")
    p.add_argument("--out", default=None, help="where the tiny models and exports go (default: a temporary folder)")
    p.add_argument("--json", default=None, help="also write the rows as JSON here")
    a = p.parse_args(argv)
    archs = a.arch or list(tiny_models.ARCHS + tiny_models.EXTRA)
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(sys.stderr):   # the table alone on stdout
        root = a.out or tmp
        rows = []
        for arch in archs:
            print(f"{arch} ...", flush=True)
            rows.append(family_row(arch, root))
    print(markdown(rows))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    failed = [r["arch"] for r in rows if not all(r[f"{k} {m}"]["passed"] for k, m in SETTINGS)
              or not r["int8"].get("passed", True) or not r["hf"]["passed"]]
    if failed:
        print(f"parity FAILED for {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
