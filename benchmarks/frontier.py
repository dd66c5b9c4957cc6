"""Perplexity against KV bytes per token: PCA, output-aware and trained projectors at the same budgets, and
quantized caches (exporter/quant/design.py) at given ratios, with the uncompressed model in the same run.

    python -m benchmarks.frontier [--ranks 64/64,96/96,128/128] [--modes pre-rope,post-rope]
        [--methods pca,output-aware,trained] [--eval-tokens 32768] [--train-steps 64]
        [--quantized raw/full/uniform/static,output-aware/full/spectral/static --ratios 4,8,16]
        [--float-windows 0,32 --window-context 2048]
        [--quant 8,4]   (the older simulated KIVI-like lines, benchmarks/kv_quant.py)

Quantized settings are METHOD/K/ALLOCATION/SCALES[/WEIGHTS[/SENSITIVITY[/PROBE_ROUNDS]]], exactly what `make export METHOD=
K= QUANT= QUANT_SCALES=` (and `--quant-weights`, `--quant-sensitivity`) builds (raw/full/uniform/static is plain KV quantization: no transform, the same bits everywhere, steps from
calibration; SCALES may be KEY-VALUE, e.g. static-token), each at every ratio of --ratios (times fewer bytes
than the float16 cache, scale bytes counted); their bytes are the packed uint8 cache's. --float-windows screens
KIVI's residual on each of them (model/attention.py float_window: a query reads its last W latents exact, the
older ones decoded), switched on after a codec fitted without it: the W-1 float16 latents of every layer the
graph keeps are counted at --window-context tokens, (W-1) x (sum of ranks) x 2 / context bytes a token, on top of
the codes. `make export QUANT_WINDOW=W` fits the codec with the window in place, within the ratio as a whole.

Ranks are K_KEY/K_VALUE ('full' allowed). Perplexity follows the shared/data convention (WikiText-2 test,
windows of 2048 after the sink, 32,768 tokens scored by default) and is computed with the PyTorch reference
decoder that each export is built from (tests hold ONNX Runtime to it within validate/tolerances.py; the
acceptance figures in docs/projectors.md come from `make validate` on the exports themselves). Bytes are
for a float16 cache; the ratio is against the uncompressed float16 cache. Trained projectors are saved under
build/frontier/ and reused when the same setting runs again (--retrain to refit). Writes
build/frontier-<model>.md / .json / .png and prints the table.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time


from benchmarks import kv_quant
from exporter.calib.text import token_windows
from exporter.codec.store import load_projectors, save_projectors
from exporter.eval.perplexity import nll, perplexity
from exporter.export.onnx_file import layout_of
from exporter.job.job import ExportJob
from exporter.job.stages import fit_projectors, quantize
from exporter.model.fold import build_decoder
from exporter.options import DEFAULT_EVAL, ExportOptions, QuantOptions, TrainOptions, parse_rank, per_layer
from graphs.contract import kv_bytes_per_token

FP16 = 2


def low_rank_bytes(proj, cfg) -> int:
    r = proj.ranks()
    return FP16 * sum((k or cfg.kv_dim) + (v or cfg.kv_dim) for k, v in zip(r["key"], r["value"]))


class Frontier:
    def __init__(self, a):
        self.a = a
        self.job = ExportJob.start(ExportOptions(model=a.model, calib_tokens=a.calib_tokens))
        self.loaded, self.cfg, self.sink = self.job.loaded, self.job.config, self.job.sink
        self.windows = token_windows(self.loaded.tokenizer, a.eval, 2048, a.eval_tokens, self.sink)
        self.rows = []

    def add(self, label: str, method: str, mode: str, nll_n, bytes_: float, extra=None):
        ppl = perplexity(nll_n)
        base = self.rows[0]["ppl"] if self.rows else ppl
        row = {"setting": label, "method": method, "key_mode": mode, "bytes_per_token": round(bytes_, 1),
               "ratio_vs_fp16": round(2 * self.cfg.num_layers * self.cfg.kv_dim * FP16 / bytes_, 2),
               "ppl": ppl, "ppl_increase_pct": 100 * (ppl / base - 1), "tokens": nll_n[1], **(extra or {})}
        self.rows.append(row)
        print(f"{label:38s} {row['bytes_per_token']:>9} B/token  ppl {ppl:.3f}  "
              f"({row['ppl_increase_pct']:+.2f} %)", flush=True)

    def projectors(self, method: str, mode: str, kr, vr):
        """The export's own fitting (job/stages.fit_projectors); trained files are kept in build/frontier/."""
        L = self.cfg.num_layers
        stem = os.path.join("build", "frontier", f"{self.loaded.name}-{mode}-k{kr}-v{vr}-{self.a.train_loss}"
                                                 f"-{self.a.train_steps}")
        if method == "trained" and os.path.isfile(stem + ".json") and not self.a.retrain:
            return load_projectors(stem, self.job.fingerprint)
        train = TrainOptions(loss=self.a.train_loss, max_steps=self.a.train_steps)
        proj = fit_projectors(self.job, per_layer(kr, L), per_layer(vr, L), method, mode, train)
        if method == "trained":
            os.makedirs(os.path.dirname(stem), exist_ok=True)
            save_projectors(proj, stem)
        return proj

    def quantized(self, spec: str, ratio: float, mode: str):
        """One quantized setting METHOD/K/ALLOCATION/SCALES at one ratio, fitted as the exporter fits it."""
        method, k, allocation, scales, *more = spec.split("/")      # more: WEIGHTS, SENSITIVITY
        key_scales, _, value_scales = scales.partition("-")
        cfg, hf = self.cfg, self.loaded.model
        t0 = time.time()
        r = None if method == "raw" else parse_rank(k, cfg.kv_dim, "K") or cfg.kv_dim
        proj = self.projectors(method, mode, r, r)
        q = QuantOptions(allocation, ratio, key_scales, value_scales or key_scales, float_window=0,  # windows: below
                         **dict(zip(("weights", "sensitivity", "probe_rounds"), more[:2] + [int(x) for x in more[2:]])))
        proj = quantize(self.job, proj, q)
        dec = build_decoder(hf, proj)
        codes = kv_bytes_per_token(layout_of(dec))
        ranks = sum((k or cfg.kv_dim) + (v or cfg.kv_dim) for k, v in zip(*proj.ranks().values()))
        for w in [int(x) for x in self.a.float_windows.split(",")]:
            for blk in dec.blocks:
                blk.attn.float_window = w
            window_bytes = max(w - 1, 0) * ranks * FP16 / self.a.window_context   # the graph keeps W-1 tokens
            label = f"{spec} {mode} {ratio:g}x" + (f" + float window {w}" if w else "")
            self.add(label, spec, mode, nll(dec, self.windows), codes + window_bytes,
                     {"codes_bytes_per_token": codes, "float_window": w, "window_bytes_per_token": window_bytes})
            self.rows[-1]["seconds"] = round(time.time() - t0, 1)

    def run(self):
        a, cfg = self.a, self.cfg
        full = self.job.decoder
        self.add("uncompressed", "none", "-", nll(full, self.windows), 2 * cfg.num_layers * cfg.kv_dim * FP16)
        for spec in [s for s in a.quantized.split(",") if s]:
            for ratio in [float(r) for r in a.ratios.split(",")]:
                self.quantized(spec, ratio, a.modes.split(",")[0])
        for bits in [int(b) for b in a.quant.split(",") if b]:
            self.add(f"int{bits} KV (simulated, per channel)", f"int{bits}", "-",
                     nll(full, self.windows, lambda i: kv_quant.codec(bits)),
                     kv_quant.bytes_per_token(bits, cfg.num_layers, cfg.kv_dim))
        for mode in a.modes.split(","):
            for spec in [s for s in a.ranks.split(",") if s]:
                ks, vs = spec.split("/") if "/" in spec else (spec, spec)
                kr, vr = parse_rank(ks, cfg.kv_dim, "K_KEY"), parse_rank(vs, cfg.kv_dim, "K_VALUE")
                for method in a.methods.split(","):
                    t0 = time.time()
                    proj = self.projectors(method, mode, kr, vr)
                    dec = build_decoder(self.loaded.model, proj)
                    extra = {"training": {k: proj.info["training"][k] for k in ("best_step", "steps_run", "seconds")}}\
                        if method == "trained" else None
                    self.add(f"{method} {mode} K_KEY={ks} K_VALUE={vs}", method, mode, nll(dec, self.windows),
                             low_rank_bytes(proj, cfg), extra)
                    self.rows[-1]["seconds"] = round(time.time() - t0, 1)


def table(rows: list[dict]) -> str:
    lines = ["| setting | KV B/token | x fewer than fp16 | perplexity | change |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['setting']} | {r['bytes_per_token']:g} | {r['ratio_vs_fp16']:.2f} | "
                     f"{r['ppl']:.3f} | {r['ppl_increase_pct']:+.2f} % |")
    return "\n".join(lines)


def plot(rows: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    base = rows[0]
    ax.axhline(base["ppl"], color="k", lw=0.8, label="uncompressed")
    for r in rows[1:]:
        if r["method"].startswith("int"):
            ax.scatter(r["bytes_per_token"], r["ppl"], marker="x", color="k")
            ax.annotate(r["method"], (r["bytes_per_token"], r["ppl"]), fontsize=8)
    for (method, mode), color in zip(sorted({(r["method"], r["key_mode"]) for r in rows if r["key_mode"] != "-"}),
                                     plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        pts = sorted((r["bytes_per_token"], r["ppl"]) for r in rows
                     if r["method"] == method and r["key_mode"] == mode)
        ax.plot(*zip(*pts), "o-", color=color, label=f"{method} {mode}")
    ax.set_xlabel("KV cache bytes per token (float16)")
    ax.set_ylabel("perplexity (WikiText-2 test)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.frontier", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None)
    p.add_argument("--ranks", default="64/64,96/96,128/128", help="K_KEY/K_VALUE pairs")
    p.add_argument("--modes", default="pre-rope,post-rope")
    p.add_argument("--methods", default="pca,output-aware,trained")
    p.add_argument("--quant", default="", help="bits of the simulated KIVI-like lines (kv_quant.py), e.g. 4,2")
    p.add_argument("--quantized", default="", help="quantized caches METHOD/K/ALLOCATION/SCALES, comma-separated "
                                                  "(keys in the first of --modes)")
    p.add_argument("--ratios", default="4,8,16", help="quantized caches: times fewer bytes than float16")
    p.add_argument("--float-windows", default="0", help="quantized caches: W recent latents read exact (0: none)")
    p.add_argument("--window-context", type=int, default=2048, help="the context a float window's bytes are spread "
                   "over")
    p.add_argument("--eval", default=str(DEFAULT_EVAL))
    p.add_argument("--eval-tokens", type=int, default=32768)
    p.add_argument("--calib-tokens", type=int, default=ExportOptions.calib_tokens)
    p.add_argument("--train-loss", default=TrainOptions.loss)
    p.add_argument("--train-steps", type=int, default=TrainOptions.max_steps)
    p.add_argument("--retrain", action="store_true")
    a = p.parse_args(argv)
    f = Frontier(a)
    f.run()
    stem = os.path.join("build", f"frontier-{f.loaded.name}")
    command = "python -m benchmarks.frontier " + " ".join(shlex.quote(x) for x in (argv or sys.argv[1:]))
    md = f"{table(f.rows)}\n\n`{command.strip()}`; {f.rows[0]['tokens']} tokens of {os.path.basename(a.eval)} scored.\n"
    with open(stem + ".md", "w") as fh:
        fh.write(md)
    with open(stem + ".json", "w") as fh:
        json.dump({"command": command, "rows": f.rows}, fh, indent=1)
    plot(f.rows, stem + ".png")
    print("\n" + md + f"wrote {stem}.md / .json / .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
