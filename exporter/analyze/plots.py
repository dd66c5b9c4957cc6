"""PNG plots of an analysis (exporter/analyze), for a reader who has not seen the code: every figure names the
model and the text, every axis says what it counts.

Each function draws one figure from the analysis result and the eigenvalue / singular-value arrays and returns
the file name it wrote.

Entry point: `write_all(result, eigs, sigmas, out_dir)`.
"""
from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .options import TAP_TITLES as TITLES  # noqa: E402

VARIANT_STYLE = {"raw": ("raw (sink included)", "tab:red", "-"),
                 "no_pos0": ("sink position excluded", "tab:orange", "--"),
                 "no_sinks": ("sink tokens excluded", "tab:blue", "-"),
                 "standardized": ("standardised per dimension", "tab:green", "-")}


def _model(r: dict) -> str:
    m = r["model"]
    return m["name"] if m["name"] == m["source"] else f"{m['name']} ({m['source']})"


def _source(r: dict) -> str:
    t = r["text"]
    return (f"{_model(r)} - activations of {os.path.basename(t['file'])} "
            f"({t['tokens']:,} tokens, windows of {t['window']} after the sink token)")


def _grid(n: int, width: float = 5.0, height: float = 3.6):
    """A figure with n panels, 3 a row; the spare cells are returned apart (one holds the legend)."""
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows + 0.8), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, list(axes.flat[:n]), list(axes.flat[n:])


def _legend(axes, spare, fontsize=7):
    """The legend of the first panel, in a spare cell when there is one."""
    if spare:
        handles, labels = axes[0].get_legend_handles_labels()
        spare[0].legend(handles, labels, loc="center", fontsize=fontsize + 2, frameon=False)
    else:
        axes[0].legend(fontsize=fontsize)


def _save(fig, out_dir: str, name: str) -> str:
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(os.path.join(out_dir, name), dpi=110)
    plt.close(fig)
    return name


def df_per_layer(r: dict, out_dir: str) -> str:
    """Participation ratio per layer, one panel per tensor kind, raw next to the robust variants."""
    taps = list(r["activations"])
    fig, axes, spare = _grid(len(taps))
    for ax, tap in zip(axes, taps):
        layers = r["activations"][tap]
        x = [row["layer"] for row in layers]
        for v, (label, color, style) in VARIANT_STYLE.items():
            ax.plot(x, [row["variants"][v]["df"] for row in layers], style, color=color, label=label, marker=".")
        ax.axhline(layers[0]["variants"]["raw"]["dims"], color="grey", lw=0.8, ls=":", label="all dimensions")
        ax.set_yscale("log")
        ax.set_title(TITLES[tap])
        ax.set_xlabel("layer")
        ax.set_ylabel("effective dimension Df (directions)")
        ax.grid(alpha=0.3, which="both")
    _legend(axes, spare)
    fig.suptitle(f"Df = (sum l)^2 / sum l^2 per layer, raw vs robust (lines that coincide hide each other)\n"
                 f"{_source(r)}", fontsize=10)
    return _save(fig, out_dir, "df_per_layer.png")


def cumulative_variance(r: dict, eigs: dict, out_dir: str) -> str:
    """Share of variance held by the top k directions, first/middle/last layer, raw vs sink tokens excluded."""
    taps = list(r["activations"])
    n = r["model"]["num_layers"]
    picks = sorted({0, n // 2, n - 1})
    colors = dict(zip(picks, ("tab:purple", "tab:blue", "tab:olive")))
    fig, axes, spare = _grid(len(taps))
    for ax, tap in zip(axes, taps):
        for i in picks:
            for v, style in (("raw", "--"), ("no_sinks", "-")):
                e = eigs[(tap, v)][i]
                cum = np.cumsum(e) / max(e.sum(), 1e-300)
                ax.plot(np.arange(1, len(e) + 1), cum, style, color=colors[i],
                        label=f"layer {i}, {VARIANT_STYLE[v][0]}")
        ax.axhline(0.95, color="grey", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_ylim(0, 1.02)
        ax.set_title(TITLES[tap])
        ax.set_xlabel("k (number of principal directions)")
        ax.set_ylabel("fraction of variance kept")
        ax.grid(alpha=0.3, which="both")
    _legend(axes, spare, 6)
    fig.suptitle(f"Cumulative variance of the top-k directions (dotted: 95 %)\n{_source(r)}", fontsize=10)
    return _save(fig, out_dir, "cumulative_variance.png")


def weight_decay(r: dict, sigmas: dict, out_dir: str) -> str:
    """Singular values of every weight matrix over their index, normalised to the largest; all layers."""
    names = list(sigmas)
    fig, axes, spare = _grid(len(names), 4.2, 3.2)
    for ax, name in zip(axes, names):
        curves = [s / s[0] for s in sigmas[name]]
        for c in curves:
            ax.plot(np.arange(1, len(c) + 1), c, color="tab:blue", alpha=0.15, lw=0.8)
        ax.plot(np.arange(1, len(curves[0]) + 1), np.median(np.stack(curves), 0), color="black", lw=1.5,
                label="median over layers")
        k95 = float(np.median([row[name]["k95"] for row in r["weights"]]))
        ax.axvline(k95, color="tab:red", ls="--", lw=1, label="k for 95 % of the energy (median)")
        ax.set_yscale("log")
        ax.set_title(f"{name}  {r['weights'][0][name]['shape']} [out, in]")
        ax.set_xlabel("index i of the singular value")
        ax.set_ylabel("sigma_i / sigma_1")
        ax.grid(alpha=0.3, which="both")
    _legend(axes, spare)
    fig.suptitle(f"Weight singular-value decay, every layer (faint) and median\n{_model(r)}", fontsize=10)
    return _save(fig, out_dir, "weight_spectra.png")


KIND_COLORS = {"keys": "tab:blue", "values": "tab:orange", "keys+values": "tab:green"}


def variance_vs_perplexity(r: dict, out_dir: str) -> str | None:
    """Perplexity increase of PCA at k(f) against f, the variance kept, and against the mean rank. Colour: what is
    compressed; marker: where and on how many tokens (a line joins the points of one series)."""
    q = r.get("quality")
    rows = [x for x in (q or {}).get("rows", []) if not x["kind"].startswith("attention weights")]
    if not rows:
        return None
    fig, (a, b) = plt.subplots(1, 2, figsize=(15, 5))
    groups: dict[tuple, list] = {}
    for x in rows:
        groups.setdefault((x["scope"] != "all layers", x["scope"], x["quality"]["tokens_scored"], x["kind"]),
                          []).append(x)
    single = iter("^vDPX*hp<>" * 3)
    markers = {}
    for (one_layer, scope, tokens, kind), xs in sorted(groups.items()):
        xs = sorted(xs, key=lambda x: x["fraction"])
        if one_layer:
            marker = markers.setdefault(scope, next(single))
        else:
            marker = "o" if tokens < max(g[2] for g in groups) else "s"
        style = dict(marker=marker, color=KIND_COLORS.get(kind, "grey"), ls="-" if len(xs) > 1 else "none",
                     ms=7 if marker != "s" else 9, label=f"{kind}, {scope} ({tokens:,} tokens)")
        inc = [x["quality"]["ppl_increase_pct"] for x in xs]
        a.plot([100 * x["fraction"] for x in xs], inc, **style)
        b.plot([_mean_rank(x) for x in xs], inc, **style)
    for ax in (a, b):
        ax.set_yscale("symlog", linthresh=1.0)
        ax.set_ylabel("perplexity increase over the original (%)")
        ax.axhline(0, color="grey", lw=0.8)
        ax.grid(alpha=0.3, which="both")
    a.set_xlabel("variance kept per compressed layer (% of the calibration variance)")
    b.set_xlabel("rank k per compressed layer (mean over compressed tensors)")
    handles, labels = a.get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=8, frameon=False)
    fig.suptitle(f"Variance is not quality: PCA at k for a variance fraction vs the perplexity it gives\n{_source(r)}\n"
                 f"perplexity on {os.path.basename(q['eval_file'])}, windows of {q['window']} after the sink",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.78, 0.9))
    fig.savefig(os.path.join(out_dir, "variance_vs_perplexity.png"), dpi=110)
    plt.close(fig)
    return "variance_vs_perplexity.png"


def _mean_rank(x: dict) -> float:
    ks = [s["mean"] for s in (x["key_rank_summary"], x["value_rank_summary"]) if s]
    return sum(ks) / len(ks)


def write_all(r: dict, eigs: dict, sigmas: dict, out_dir: str) -> list[str]:
    """Every plot into out_dir; returns the file names."""
    made = [df_per_layer(r, out_dir), cumulative_variance(r, eigs, out_dir), weight_decay(r, sigmas, out_dir),
            variance_vs_perplexity(r, out_dir)]
    return [m for m in made if m]
