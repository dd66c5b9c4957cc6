"""Ranks x key modes on one model: parity, perplexity, KL, top-1, KV bytes and decode speed, in one run.

    python -m benchmarks.sweep [--model M] [--k full,128,96,64] [--modes pre-rope,post-rope] [--eval-tokens 32768]
    python -m benchmarks.sweep --exports DIR,DIR,... [--no-speed]     # score existing exports of any method

Exports each setting into build/ (reused when already there, unless --fresh), computes the original model's
logits once per window, then scores every export against them with ONNX Runtime. Decode speed: the runtime
(IO binding, CPU), a 128-token prompt (sink included), 64 greedy tokens, median of 3. Writes
build/sweep-<model>.md / .json (with --exports: build/sweep-<model>-exports.*) and prints the table.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys


from exporter.calib.text import fitting_window, token_windows
from exporter.codec.store import load_projectors
from exporter.eval.perplexity import hf_logits, measure
from exporter.job.run import default_out, run_export
from exporter.model.fold import build_decoder
from exporter.model.load import load
from exporter.options import DEFAULT_EVAL, ExportOptions
from graphs.contract import CacheLayout, CacheShape, kv_bytes_per_token
from graphs.metadata import load_metadata
from validate.kv_bytes import measured_bytes_per_token
from validate.ort_model import OrtModel
from validate.parity import check_parity, hf_original, parity_prompts


def decode_speed(export: str, prompt: list[int], runs: int = 3, new_tokens: int = 64) -> float:
    from runtime import Generator
    gen = Generator(export)
    rates = [gen.generate([prompt], max_new_tokens=new_tokens, stop_token_ids=[]).timings.decode_tokens_per_s
             for _ in range(runs)]
    return statistics.median(rates)


def ranks_label(key_ranks: list, value_ranks: list) -> str:
    """'96', 'full', '96/192', or 'per-layer' for an export's ranks."""
    one = lambda rs: ("full" if rs[0] is None else str(rs[0])) if len(set(rs)) == 1 else "per-layer"
    k, v = one(key_ranks), one(value_ranks)
    return k if k == v else f"{k}/{v}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None)
    p.add_argument("--k", default="full,128,96,64")
    p.add_argument("--modes", default="pre-rope,post-rope")
    p.add_argument("--eval", default=str(DEFAULT_EVAL))
    p.add_argument("--eval-tokens", type=int, default=32768)
    p.add_argument("--window", type=int, default=2048)
    p.add_argument("--fresh", action="store_true", help="export again even when build/ has the setting")
    p.add_argument("--exports", default=None, help="comma-separated export directories to score instead")
    p.add_argument("--no-speed", action="store_true", help="skip the decode-speed column")
    a = p.parse_args(argv)
    if a.exports:
        a.model = load_metadata(a.exports.split(",")[0]).model["source"]
    loaded = load(a.model)
    hf, tok = loaded.model, loaded.tokenizer
    settings = []
    for out in (a.exports.split(",") if a.exports else []):
        meta = load_metadata(out)
        ranks = meta.ranks
        k = ranks_label(ranks["key"], ranks["value"])
        q = meta.extra.get("quant")
        bits = f", {q['allocation']} bits {q['ratio']:g}x {'/'.join(sorted(set(q['scales'].values())))}" if q else ""
        settings.append((f"{k} ({meta.extra.get('projector_method') or 'none'}{bits})", meta.key_mode, out))
    for k in ([] if a.exports else a.k.split(",")):
        for mode in (["pre-rope"] if k == "full" else a.modes.split(",")):
            o = ExportOptions(model=a.model, k=k, key_mode=mode)
            out = default_out(o, loaded.name, None if k == "full" else int(k), None if k == "full" else int(k))
            if a.fresh or not os.path.isfile(os.path.join(out, "export.json")):
                run_export(o, loaded)
            settings.append((k, "—" if k == "full" else mode, out))
    meta0 = load_metadata(settings[0][2])
    sink = meta0.sink["token_id"]
    window = fitting_window(a.window, meta0.model["max_positions"], sink)
    windows = token_windows(tok, a.eval, window, a.eval_tokens, sink)
    print(f"original model logits for {len(windows)} windows ...", flush=True)
    original = [hf_logits(hf, w) for w in windows]
    m = meta0.model
    full = CacheLayout.uniform(m["num_layers"], CacheShape(m["num_kv_heads"], m["head_dim"]),
                               CacheShape(m["num_kv_heads"], m["head_dim"]), "float16")
    fp16_bytes = kv_bytes_per_token(full)
    speed_prompt = parity_prompts(tok, sink, 127, a.eval)[0][1:]     # 127 tokens + the sink = 128
    rows = []
    for k, mode, out in settings:
        meta = load_metadata(out)
        stem = os.path.join(out, "projectors")
        proj = load_projectors(stem, meta.model["fingerprint"]) if os.path.isfile(stem + ".json") else None
        ref = build_decoder(hf, proj)
        ort_model = OrtModel(out, meta)
        par = check_parity(ref, ort_model, parity_prompts(tok, sink, 300, a.eval), meta.pad_token_id,
                           original=hf_original(hf))
        measured = measured_bytes_per_token(ort_model)
        del ref
        q = measure(lambda i, ids: original[i], ort_model.window_logits, windows, sink is not None, a.eval, window,
                    meta.sink["token"])
        del ort_model
        tps = float("nan") if a.no_speed else decode_speed(out, speed_prompt)
        row = {"k": k, "key_mode": mode, "export": out, "ppl_original": q.ppl_original,
               "ppl": q.ppl_compressed, "ppl_increase_pct": q.ppl_increase_pct, "kl": q.kl_mean,
               "top1": q.top1_agreement, "parity_rel": par.rel_diff, "parity_passed": par.passed,
               "greedy_identical": par.greedy_identical, "kv_bytes": meta.kv_bytes_per_token,
               "kv_bytes_measured": measured, "kv_dtype": "uint8" if meta.layout.quantized else meta.layout.dtype,
               "ratio_vs_fp16": fp16_bytes / meta.kv_bytes_per_token, "decode_tok_s": tps,
               "tokens_scored": q.tokens_scored}
        rows.append(row)
        print(json.dumps(row), flush=True)
    cmd = "python -m benchmarks.sweep " + " ".join(shlex.quote(x) for x in (argv or sys.argv[1:]))
    md = [f"Model {loaded.source}; {rows[0]['tokens_scored']} tokens of {os.path.basename(a.eval)} in windows of "
          f"{window}, each after the sink token {meta0.sink['token']!r}; KV bytes of the fp32 cache or, against "
          f"an fp16 uncompressed cache ({fp16_bytes} B/token; a quantized cache's uint8 codes, scales counted, also measured as the growth of the ONNX outputs over one step); decode: runtime on CPU, 128-token prompt, 64 "
          f"greedy tokens, median of 3. Command: `{cmd}`", "",
          "| K (keys/values) | key mode | perplexity | original | increase | KL nats/token | top-1 | parity rel. diff | greedy identical | KV B/token | measured | vs fp16 cache | decode tok/s |",
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        md.append(f"| {r['k']} | {r['key_mode']} | {r['ppl']:.3f} | {r['ppl_original']:.3f} | "
                  f"{r['ppl_increase_pct']:+.2f} % | {r['kl']:.4f} | {100 * r['top1']:.2f} % | {r['parity_rel']:.2e} | "
                  f"{r['greedy_identical']} | {r['kv_bytes']} ({r['kv_dtype']}) | {r['kv_bytes_measured']} | "
                  f"{r['ratio_vs_fp16']:.2f}x | {r['decode_tok_s']:.1f} |")
    text = "\n".join(md) + "\n"
    base = os.path.join("build", f"sweep-{loaded.name}" + ("-exports" if a.exports else ""))
    with open(base + ".md", "w") as f:
        f.write(text)
    with open(base + ".json", "w") as f:
        json.dump({"command": cmd, "rows": rows}, f, indent=1)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
