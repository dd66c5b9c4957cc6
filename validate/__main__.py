"""python -m validate: parity of an export against PyTorch, and what its compression costs."""
from __future__ import annotations

import argparse
import os
import shlex
import sys

from exporter.calib.text import token_windows
from exporter.codec.store import load_projectors
from exporter.errors import UserError
from exporter.eval.perplexity import measure
from exporter.options import DEFAULT_EVAL
from exporter.quant.rate_distortion import rate_distortion_table
from graphs.contract import CacheLayout, CacheShape, kv_bytes, kv_bytes_per_token
from graphs.metadata import ExportError, ExportMetadata, load_metadata
from .export_files import check_export_files
from .kv_bytes import measured_bytes_at, measured_bytes_per_token
from .ort_model import OrtModel
from .parity import check_parity, hf_original, parity_prompts
from .reference import load_references
from .report import write_reports
from .tolerances import GREEDY_STEPS, QUANTIZED_KL_FRACTION, ROUNDING_FLOOR_FACTOR


def ranks_summary(ranks: list) -> str:
    """One value when every layer has it, else every layer's in order."""
    shown = ["full" if r is None else str(r) for r in ranks]
    return shown[0] if len(set(shown)) == 1 else ",".join(shown)


def check_arguments(a: argparse.Namespace, meta: ExportMetadata) -> None:
    """What the arguments ask of this export is possible: parity prompts within the model's positions, a text file
    to draw them (and the perplexity windows) from."""
    positions = meta.model.get("max_positions")
    if a.prefill < 2 or a.decode < 0:
        raise UserError(f"--prefill {a.prefill} --decode {a.decode}: parity needs a prompt of at least 2 tokens and "
                        "0 or more decode steps")
    if positions and a.prefill + a.decode + 1 > positions:
        raise UserError(f"--prefill {a.prefill} + --decode {a.decode} tokens and the sink exceed the model's "
                        f"{positions} positions: lower --prefill or --decode")
    if not os.path.isfile(a.eval):
        raise UserError(f"no text file at {a.eval}: pass --eval /path/to/text.txt (any UTF-8 text)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m validate", description=__doc__)
    p.add_argument("--export", default="build/latest", help="export directory (default build/latest)")
    p.add_argument("--eval", default=str(DEFAULT_EVAL), help="text for perplexity (default WikiText-2 test)")
    p.add_argument("--eval-tokens", type=int, default=32768)
    p.add_argument("--window", type=int, default=2048)
    p.add_argument("--prefill", type=int, default=300, help="parity prompt length in tokens")
    p.add_argument("--decode", type=int, default=GREEDY_STEPS, help="parity greedy decode steps")
    p.add_argument("--skip-quality", action="store_true", help="parity only")
    p.add_argument("--rd-tokens", type=int, default=2048,
                   help="quantized exports: tokens of the eval text for the rate-distortion table")
    p.add_argument("--max-ppl-increase", type=float, default=None,
                   help="fail (exit 3) when the perplexity increase exceeds this many percent")
    a = p.parse_args(argv)
    try:
        export = os.path.realpath(a.export)
        meta = load_metadata(export)
        check_arguments(a, meta)
        check_export_files(export, meta)
        ort_model = OrtModel(export, meta)
        hf, tok, reference = load_references(export, meta)
        sink = meta.sink.get("token_id")
        prompts = parity_prompts(tok, sink, a.prefill, a.eval, padded=meta.cache_update != "shared-buffer")
        parity = check_parity(reference, ort_model, prompts, meta.pad_token_id, a.decode, original=hf_original(hf))
        held = f"KL {parity.kl_mean:.2g} nats (at most {QUANTIZED_KL_FRACTION:g} x the compression's own "\
            f"{parity.kl_cost:.2g}, or {ROUNDING_FLOOR_FACTOR:g} x float32 rounding's own {parity.kl_floor:.2g}; "\
            "quantized cache)" if parity.quantized \
            else f"relative {parity.rel_diff:.3g} (tolerance {parity.tolerance:g})"
        print(f"parity: prefill {parity.prefill_max_abs_diff:.3g}, decode {parity.decode_max_abs_diff:.3g}, {held}, "
              f"greedy argmax agrees {parity.greedy_agreement}/{parity.decode_steps + 1} -> "
              f"{'PASS' if parity.passed else 'FAIL'}")
        measured = measured_bytes_per_token(ort_model)
        print(f"KV bytes per token: {measured} measured from the ONNX outputs, {meta.kv_bytes_per_token} estimated"
              f" -> {'equal' if measured == meta.kv_bytes_per_token else 'DIFFERENT'}")
        at_context = window_bytes_at(ort_model, meta, export)
        m = meta.model
        original = CacheLayout(*(tuple(CacheShape(m["num_kv_heads"], m["head_dim"], None, s.window) for s in shapes)
                                 for shapes in (meta.layout.keys, meta.layout.values)))  # same sliding windows
        report = {"export": export, "model": m["source"], "key_mode": meta.key_mode, "ranks": meta.ranks,
                  "ranks_summary": {k: ranks_summary(v) for k, v in meta.ranks.items()},
                  "command": "python -m validate " + " ".join(shlex.quote(x) for x in (argv or sys.argv[1:])),
                  "parity": parity.to_json(),
                  "kv": {"original_fp32": kv_bytes_per_token(original),
                         "original_fp16": kv_bytes_per_token(CacheLayout(original.keys, original.values, "float16")),
                         "export": meta.kv_bytes_per_token, "measured": measured,
                         "dtype": f"{meta.layout.keys[0].dtype} codes" if meta.layout.quantized else meta.layout.dtype,
                         **at_context}}
        window = min(a.window, meta.model["max_positions"] - (sink is not None))       # GPT-2 stops at 1024
        proj = load_projectors(os.path.join(export, "projectors")) if meta.layout.quantized else None
        if proj is not None and proj.info.get("quant"):     # packed codes of latents: their rate-distortion table
            rd = rate_distortion_table(hf, proj, token_windows(tok, a.eval, window, a.rd_tokens, sink))
            report["rate_distortion"] = [t.to_json() for t in rd]
            ratios = sorted(t.ratio for t in rd)
            print(f"reconstruction error / Gaussian rate-distortion bound per tensor: median "
                  f"{ratios[len(ratios) // 2]:.2f}, range {ratios[0]:.2f}-{ratios[-1]:.2f} (report.md has each layer)")
        if not a.skip_quality:
            windows = token_windows(tok, a.eval, window, a.eval_tokens, sink)
            q = measure(hf, ort_model.window_logits, windows, sink is not None, a.eval, window, meta.sink.get("token"))
            report["quality"] = q.to_json()
            print(f"perplexity: original {q.ppl_original:.3f}, compressed {q.ppl_compressed:.3f} "
                  f"({q.ppl_increase_pct:+.2f} %), KL {q.kl_mean:.4f}, top-1 {100 * q.top1_agreement:.2f} % "
                  f"over {q.tokens_scored} tokens")
            if a.max_ppl_increase is not None:
                report["budget"] = {"max_ppl_increase_pct": a.max_ppl_increase,
                                    "passed": q.ppl_increase_pct <= a.max_ppl_increase}
        write_reports(export, report)
        print(f"wrote {os.path.join(export, 'report.md')}")
    except (UserError, ExportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not parity.passed:
        print("parity FAILED", file=sys.stderr)
        return 1
    if report["kv"]["measured"] != report["kv"]["export"] or \
            report["kv"].get("context_bytes_measured") != report["kv"].get("context_bytes_estimated"):
        print("the graph's cache grows by other bytes than its metadata says", file=sys.stderr)
        return 1
    if report.get("budget") and not report["budget"]["passed"]:
        print(f"quality budget exceeded: {report['quality']['ppl_increase_pct']:+.2f} % > {a.max_ppl_increase} %",
              file=sys.stderr)
        return 3
    return 0


def window_bytes_at(ort_model, meta, export: str) -> dict:
    """A float window's export: the whole cache at the context its ratio is quoted for, measured on the outputs and
    estimated from the layout ({} without a window: then the growth per token is the whole figure)."""
    if not meta.layout.float_window:
        return {}
    proj = load_projectors(os.path.join(export, "projectors"))
    context = proj.info["quant"]["window_context"]
    measured, estimated = measured_bytes_at(ort_model, context), kv_bytes(meta.layout, context)
    print(f"KV bytes at {context} tokens with the float window of {meta.layout.float_window}: {measured / context:.1f} "
          f"per token measured, {estimated / context:.1f} estimated -> {'equal' if measured == estimated else 'DIFFERENT'}")
    return {"context": context, "context_bytes_measured": measured, "context_bytes_estimated": estimated,
            "per_token_at_context": measured / context, "float_window": meta.layout.float_window}


if __name__ == "__main__":
    sys.exit(main())
