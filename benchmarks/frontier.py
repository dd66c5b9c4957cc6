"""Perplexity against KV bytes per token: PCA, output-aware and trained projectors at the same budgets, with
the uncompressed model and simulated int8/int4 KV quantization (benchmarks/kv_quant.py) in the same run.

    python -m benchmarks.frontier [--ranks 64/64,96/96,128/128] [--modes pre-rope,post-rope]
        [--methods pca,output-aware,trained] [--quant 8,4] [--eval-tokens 32768] [--train-steps 64]

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
from dataclasses import replace


from benchmarks import kv_quant
from benchmarks.calibrated import calibrated
from exporter.fit import parse_rank, per_layer
from exporter.fold import build_decoder
from exporter.heldout import nll, perplexity
from exporter.pipeline import ExportOptions, fit_projectors
from exporter.projectors import load_projectors
from exporter.text import DEFAULT_EVAL, token_windows
from exporter.train import TrainOptions

FP16 = 2


def low_rank_bytes(proj, cfg) -> int:
    r = proj.ranks()
    return FP16 * sum((k or cfg.kv_dim) + (v or cfg.kv_dim) for k, v in zip(r["key"], r["value"]))


class Frontier:
    def __init__(self, a):
        self.a = a
        c = calibrated(a.model, a.calib_tokens)
        self.loaded, self.cfg, self.o, self.sink = c.loaded, c.cfg, c.options, c.sink
        self.fingerprint, self.full, self.stats = c.fingerprint, c.decoder, c.stats
        self.windows = token_windows(c.loaded.tokenizer, a.eval, 2048, a.eval_tokens, self.sink)
        self.rows = []

    def add(self, label: str, method: str, mode: str, nll_n, bytes_: float, extra=None):
        ppl = perplexity(nll_n)
        base = self.rows[0]["ppl"] if self.rows else ppl
        row = {"setting": label, "method": method, "key_mode": mode, "bytes_per_token_fp16": round(bytes_, 1),
               "ratio_vs_fp16": round(2 * self.cfg.num_layers * self.cfg.kv_dim * FP16 / bytes_, 2),
               "ppl": ppl, "ppl_increase_pct": 100 * (ppl / base - 1), "tokens": nll_n[1], **(extra or {})}
        self.rows.append(row)
        print(f"{label:38s} {row['bytes_per_token_fp16']:>9} B/token  ppl {ppl:.3f}  "
              f"({row['ppl_increase_pct']:+.2f} %)", flush=True)

    def projectors(self, method: str, mode: str, kr, vr):
        """The export's own fitting (pipeline.fit_projectors); trained files are kept in build/frontier/."""
        cfg, hf = self.cfg, self.loaded.model
        stem = os.path.join("build", "frontier", f"{self.loaded.name}-{mode}-k{kr}-v{vr}-{self.a.train_loss}"
                                                 f"-{self.a.train_steps}")
        if method == "trained" and os.path.isfile(stem + ".json") and not self.a.retrain:
            return load_projectors(stem, self.fingerprint)
        o = replace(self.o, method=method, train=TrainOptions(loss=self.a.train_loss, max_steps=self.a.train_steps))
        info = {"model": self.loaded.source, "model_fingerprint": self.fingerprint, "seed": 0}
        proj = fit_projectors(o, hf, self.loaded.tokenizer, cfg, self.full, self.stats, per_layer(kr, cfg.num_layers),
                              per_layer(vr, cfg.num_layers), mode, self.sink, info)
        if method == "trained":
            os.makedirs(os.path.dirname(stem), exist_ok=True)
            proj.save(stem)
        return proj

    def run(self):
        a, cfg = self.a, self.cfg
        self.add("uncompressed", "none", "-", nll(self.full, self.windows), 2 * cfg.num_layers * cfg.kv_dim * FP16)
        for bits in [int(b) for b in a.quant.split(",") if b]:
            self.add(f"int{bits} KV (simulated, per channel)", f"int{bits}", "-",
                     nll(self.full, self.windows, lambda i: kv_quant.codec(bits)),
                     kv_quant.bytes_per_token(bits, cfg.num_layers, cfg.kv_dim))
        for mode in a.modes.split(","):
            for spec in a.ranks.split(","):
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
    lines = ["| setting | KV B/token (fp16) | x fewer than fp16 | perplexity | change |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['setting']} | {r['bytes_per_token_fp16']:g} | {r['ratio_vs_fp16']:.2f} | "
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
            ax.scatter(r["bytes_per_token_fp16"], r["ppl"], marker="x", color="k")
            ax.annotate(r["method"], (r["bytes_per_token_fp16"], r["ppl"]), fontsize=8)
    for (method, mode), color in zip(sorted({(r["method"], r["key_mode"]) for r in rows if r["key_mode"] != "-"}),
                                     plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        pts = sorted((r["bytes_per_token_fp16"], r["ppl"]) for r in rows
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
    p.add_argument("--quant", default="8,4", help="bits of the simulated KV quantization lines")
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
