"""report.md of an analysis: one markdown writer per section, from the result dict spectrum.json holds.

Entry point: `report_md(result, memory_table_md)`.
"""
from __future__ import annotations

import os

from .options import TAP_TITLES, VARIANT_TITLES, VARIANTS


def _spread(values, fmt="{:.1f}") -> str:
    """'median (min-max)' of a list of numbers."""
    v = sorted(values)
    if not v:
        return "-"
    med = v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2
    return f"{fmt.format(med)} ({fmt.format(v[0])}-{fmt.format(v[-1])})"


def _ranks(summary: dict | None) -> str:
    if not summary:
        return "full"
    if summary["min"] == summary["max"]:
        return f"{summary['min']}"
    return f"{summary['mean']:.1f} ({summary['min']}-{summary['max']})"


def reference_layer(r: dict) -> int:
    return r["model"]["num_layers"] // 2


def model_label(m: dict) -> str:
    """'smollm2-135m (smollm2)': the short name, and what the user asked for when that differs."""
    return m["name"] if m["name"] == m["source"] else f"{m['name']} ({m['source']})"


def md_overview(r: dict) -> list[str]:
    t, m, mach = r["text"], r["model"], r["machine"]
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in r["timings_s"].items() if k != "total")
    cached = "from the cache" if t["cached"] else "computed in this run"
    return [f"# Spectrum analysis: {model_label(m)}", "",
            f"Model `{model_label(m)}` ({m['model_type']}, {m['num_layers']} layers, hidden {m['hidden_size']}, "
            f"{m['num_heads']} query heads, {m['num_kv_heads']} KV heads of {m['head_dim']} dims, so keys and "
            f"values have {m['num_kv_heads'] * m['head_dim']} dims per layer). Activations from "
            f"`{os.path.basename(t['file'])}`: {t['tokens']:,} tokens in {t['windows']} windows of {t['window']}, "
            f"each after the sink token {t['sink_token']!r} at position 0 (statistics {cached}).", "",
            f"Command: `{r['command']}`. Wall time {r['timings_s']['total']:.0f} s ({stages}); peak resident memory "
            f"{r['peak_rss_gib']:.2f} GiB (CPU, {mach['threads']} of {mach['cores']} cores; at the start "
            f"{mach['busy_cores_at_start']:.1f} cores busy with other work, load average "
            f"{mach['load_average_at_start']:.1f}). Spectrum part alone (capture, eigenvalues, weight "
            f"SVDs): {r['spectrum_stage']['seconds']:.0f} s, peak {r['spectrum_stage']['peak_rss_gib']:.2f} GiB, "
            "no GPU.", ""]


def md_activation_summary(r: dict) -> list[str]:
    lines = ["## 1. Effective dimension of activations: raw vs robust", "",
             "Df = (sum l)^2 / sum l^2 over the eigenvalues l of the covariance; k95 = fewest principal directions "
             "holding 95 % of the variance. Median over layers (min-max). Variants: **raw** every token, the sink "
             "included; **-pos 0** the sink position left out (what PCA projectors are fitted on); **-sinks** also "
             "every token whose norm is over "
             f"{r['options']['token_factor']:g}x its window's median; **standardised** -sinks with every dimension "
             "scaled to unit variance (correlation matrix).", "",
             "| tensor | dims | Df raw | Df -pos 0 | Df -sinks | Df standardised | k95 raw | k95 -pos 0 | "
             "k95 standardised |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for tap, layers in r["activations"].items():
        get = lambda v, key: [x["variants"][v][key] for x in layers]
        lines.append(f"| {TAP_TITLES[tap]} | {layers[0]['variants']['raw']['dims']} | " +
                     " | ".join(_spread(get(v, "df")) for v in VARIANTS) + " | " +
                     " | ".join(_spread(get(v, "k95"), "{:.0f}") for v in ("raw", "no_pos0", "standardized")) + " |")
    L = reference_layer(r)
    lines += ["", f"Layer {L} in detail (Df / k90 / k95 / k99):", "",
              "| tensor | " + " | ".join(VARIANT_TITLES[v] for v in VARIANTS) + " |", "| --- |" + " --- |" * 4]
    for tap, layers in r["activations"].items():
        cell = lambda s: f"{s['df']:.2f} / {s['k90']} / {s['k95']} / {s['k99']}"
        lines.append(f"| {TAP_TITLES[tap]} | " + " | ".join(cell(layers[L]["variants"][v]) for v in VARIANTS) + " |")
    return lines + [""]


def md_probes(r: dict) -> list[str]:
    """Variance kept and relative reconstruction error at the probe ranks, and k for the probe errors."""
    ranks = [str(k) for k in r["options"]["probe_ranks"]]
    errors = [str(e) for e in r["options"]["probe_errors"]]
    lines = ["### At fixed ranks", "",
             "Variance kept by the top k principal directions and the relative reconstruction error "
             "||X - X_k|| / ||X|| of PCA at k (centered data; PCA is the rank-k optimum on its data, Eckart-Young), "
             "raw and without the sink position; then the k that brings the error down to the probe errors. "
             "Median over layers (min-max).", "",
             "| tensor | " + " | ".join(f"kept at k={k}, raw | kept at k={k}, -pos 0 | error at k={k}, raw | "
                                        f"error at k={k}, -pos 0" for k in ranks) + " | " +
             " | ".join(f"k for error <= {float(e):.0%}, -pos 0" for e in errors) + " |",
             "| --- |" + " --- |" * (4 * len(ranks) + len(errors))]
    for tap, layers in r["activations"].items():
        cells = []
        for k in ranks:
            if k not in layers[0]["probe"]:
                cells += ["-"] * 4
                continue
            get = lambda v, key: [x["probe"][k][v][key] for x in layers]
            cells += [_spread(get(v, key), "{:.1%}") for key in ("kept", "relative_error") for v in ("raw", "no_pos0")]
        cells += [_spread([x["k_for_relative_error"][e] for x in layers], "{:.0f}") for e in errors]
        lines.append(f"| {TAP_TITLES[tap]} | " + " | ".join(cells) + " |")
    return lines + [""]


def md_outliers(r: dict) -> list[str]:
    lines = ["### Why raw Df is tiny: the outlier dimensions and tokens found", "",
             f"A dimension is an outlier when its std (sink included) is over {r['options']['dim_factor']:g}x the "
             "median std of its tensor. Per tensor: outlier dims (in how many layers; the largest share of the raw "
             "variance they held in one layer), the sink's norm over the RMS token norm (median over layers, and "
             "max), and high-norm tokens found besides the sink.", "",
             "| tensor | outlier dims (layers, max share of raw variance) | sink norm / RMS norm | "
             "other high-norm tokens |",
             "| --- | --- | --- | --- |"]
    for tap, layers in r["activations"].items():
        dims: dict[int, list] = {}
        for x in layers:
            for d in x["outlier_dims"]:
                dims.setdefault(d["dim"], []).append(d["raw_variance_share"])
        dim_text = ", ".join(f"{d} ({len(v)}, {max(v):.0%})" for d, v in
                             sorted(dims.items(), key=lambda kv: (-len(kv[1]), -max(kv[1])))[:8]) or "none"
        ratios = [x["outlier_tokens"]["sink_norm_over_rms"] for x in layers
                  if x["outlier_tokens"]["sink_norm_over_rms"] is not None]
        sink_text = f"{_spread(ratios)}" if ratios else "no sink"
        flagged = sum(x["outlier_tokens"]["flagged"] for x in layers)
        names: dict[str, int] = {}
        for x in layers:
            for t in x["outlier_tokens"]["top"]:
                names[t["token"]] = names.get(t["token"], 0) + 1
        tok_text = (f"{flagged} token-layer hits; e.g. " + ", ".join(f"{n!r}" for n in list(names)[:5])) \
            if flagged else "none"
        lines.append(f"| {TAP_TITLES[tap]} | {dim_text} | {sink_text} | {tok_text} |")
    L = reference_layer(r)
    hid = r["activations"].get("hidden")
    if hid:
        x = hid[L]
        top = ", ".join(f"dim {d['dim']}: std {d['std_ratio']:.0f}x median, {d['raw_variance_share']:.1%} of raw "
                        f"variance, sink value {d['sink_value']:.1f}, max |x| elsewhere {d['max_abs_other_tokens']:.1f}"
                        for d in x["outlier_dims"][:4])
        raw, rest = x["variants"]["raw"], x["variants"]["no_pos0"]
        verdict = ("the raw figure measures the sink token's massive dimensions, not the data"
                   if raw["df"] < rest["df"] / 2 else "here the sink does not dominate the raw figure")
        lines += ["", f"Residual stream at layer {L}: {top or 'no outlier dims'}; the sink's norm is "
                      f"{x['outlier_tokens']['sink_norm_over_rms'] or 0:.0f}x the RMS token norm. Raw Df "
                      f"{raw['df']:.2f} (k95 = {raw['k95']}) becomes {rest['df']:.1f} (k95 = {rest['k95']}) without "
                      f"the sink position: {verdict}."]
    return lines + [""]


def md_heads(r: dict) -> list[str]:
    L = reference_layer(r)
    lines = ["## 2. Per head", "", f"Per-head spectra are the diagonal blocks of the joint covariance. Layer {L}; "
             "then the median over all layers and heads.", "",
             "| tensor | head | Df raw | Df -pos 0 | Df -sinks | Df standardised | k95 -pos 0 | dims |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for tap, layers in r["activations"].items():
        heads = layers[L].get("heads")
        if not heads or tap.startswith("query"):
            continue
        for h in range(len(heads["raw"])):
            s = {v: heads[v][h] for v in VARIANTS}
            lines.append(f"| {TAP_TITLES[tap]} | {h} | " + " | ".join(f"{s[v]['df']:.1f}" for v in VARIANTS) +
                         f" | {s['no_pos0']['k95']} | {s['raw']['dims']} |")
    lines += ["", "| tensor | Df -pos 0 per head, all layers | k95 -pos 0 per head | joint Df -pos 0 |",
              "| --- | --- | --- | --- |"]
    for tap, layers in r["activations"].items():
        if "heads" not in layers[0]:
            continue
        dfs = [s["df"] for x in layers for s in x["heads"]["no_pos0"]]
        ks = [s["k95"] for x in layers for s in x["heads"]["no_pos0"]]
        lines.append(f"| {TAP_TITLES[tap]} | {_spread(dfs)} | {_spread(ks, '{:.0f}')} | "
                     f"{_spread([x['variants']['no_pos0']['df'] for x in layers])} |")
    return lines + [""]


def md_weights(r: dict) -> list[str]:
    rows = r["weights"]
    probes = [str(k) for k in r["options"]["probe_ranks"]]
    lines = ["## 3. Weight spectra", "",
             "Singular values sigma of every weight matrix; Df and k95 over the energies sigma^2 (as for "
             "activations), Df(sigma) over the singular values themselves; energy kept by the top-k directions at "
             "the probe ranks. Median over layers (min-max).", "",
             "| matrix | shape [out, in] | Df(sigma^2) | k95 energy | Df(sigma) | " +
             " | ".join(f"energy at k={k}" for k in probes) + " |", "| --- |" + " --- |" * (4 + len(probes))]
    for name in [k for k in rows[0] if k != "layer"]:
        col = lambda key: [row[name][key] for row in rows]
        lines.append(f"| {name} | {rows[0][name]['shape']} | {_spread(col('df'))} | {_spread(col('k95'), '{:.0f}')} | "
                     f"{_spread(col('df_sigma'))} | " +
                     " | ".join(_spread([row[name]['energy_at'].get(k, float('nan')) for row in rows], '{:.0%}')
                                for k in probes) + " |")
    trunc = [x for x in (r.get("quality") or {}).get("rows", []) if x["kind"].startswith("attention weights")]
    if trunc:
        lines += ["", "Perplexity with attention matrices truncated (every layer) to their own k for "
                      f"{trunc[0]['fraction']:.0%} of the energy (exporter/eval/perplexity.py, "
                      f"`{os.path.basename(trunc[0]['quality']['eval_file'])}`):", "",
                  "| truncated | mean rank q / k / v / o | tokens | perplexity | original | increase | KL nats/token | "
                  "top-1 |", "| --- |" + " --- |" * 7]
        for x in trunc:
            q = x["quality"]
            mean = lambda m: sum(w[m] for w in x["weight_ranks"]) / len(x["weight_ranks"])
            lines.append(f"| {x['kind'].replace('attention weights', 'q, k, v, o').replace('q, k, v, o (', '(')} | "
                         f"{' / '.join(f'{mean(m):.0f}' for m in 'qkvo')} | {q['tokens_scored']:,} | "
                         f"{q['ppl_compressed']:.3f} | {q['ppl_original']:.3f} | {q['ppl_increase_pct']:+.2f} % | "
                         f"{q['kl_mean']:.4f} | {q['top1_agreement']:.2%} |")
    return lines + [""]


def md_quality(r: dict) -> list[str]:
    q = r.get("quality")
    if not q:
        return ["## 4. Variance is not quality", "", "Skipped (--skip-quality).", ""]
    lines = ["## 4. Variance is not quality", "",
             f"k per layer chosen to keep a fraction of the variance of the calibration keys (before RoPE, the "
             f"export's default) or values, then PCA projectors fitted exactly as `make export` does (sink direction "
             f"in every basis) and perplexity measured with exporter/eval/perplexity.py on `{os.path.basename(q['eval_file'])}` "
             f"in windows of {q['window']} after the sink {q['sink_token']!r}. Ranks: mean (min-max) over "
             "compressed layers. KV bytes: fp32 cache, all layers.", "",
             "| setting | scope | tokens | key k | value k | KV B/token | vs full | perplexity | original | increase | "
             "KL nats/token | top-1 |", "| --- |" + " --- |" * 11]
    for x in q["rows"]:
        if x["kind"].startswith("attention weights"):
            continue
        qq = x["quality"]
        lines.append(f"| {x['kind']} at {x['fraction']:.0%} variance | {x['scope']} | {qq['tokens_scored']:,} | "
                     f"{_ranks(x['key_rank_summary'])} | {_ranks(x['value_rank_summary'])} | "
                     f"{x['kv_bytes_per_token_fp32']:,} | {x['kv_ratio']:.2f}x | {qq['ppl_compressed']:.3f} | "
                     f"{qq['ppl_original']:.3f} | {qq['ppl_increase_pct']:+.2f} % | {qq['kl_mean']:.4f} | "
                     f"{qq['top1_agreement']:.2%} |")
    if q.get("skipped"):
        lines += ["", f"Not scored, to stay inside the time budget of {r['options']['time_budget']:.0f} s: " +
                  ", ".join(f"{x['name']} ({x['scope']}, ~{x['estimated_seconds']:.0f} s)" for x in q["skipped"]) +
                  ". Run with `--time-budget 0` to score every row."]
    lines += ["", f"Engine: `{q['engine']}`. " + ENGINE_NOTE[q["engine"]], ""]
    return lines


ENGINE_NOTE = {
    "hf": "The HF model with each compressed layer's k_proj/v_proj replaced by the affine map "
          "x -> mean + BB^T(Wx + b - mean), the same map the export folds into its graph; tests/exporter/analyze/test_analyze.py "
          "proves its logits equal the reference decoder's (exporter/model/fold.build_decoder with the same projectors) "
          "within 1e-4 relative, and the "
          "project's parity tests prove the reference decoder equals the ONNX export within 1e-4 relative. It runs "
          "HF's fused attention, faster on CPU than the reference decoder's full softmax over all scores.",
    "decoder": "The reference decoder (exporter/model/fold.build_decoder with the projectors), the module the ONNX export "
               "is traced from; the project's parity tests prove its logits equal the ONNX export's within 1e-4 "
               "relative."}


def md_memory(r: dict, table_md: str) -> list[str]:
    mem = r["memory"]
    lines = ["## 5. KV memory", "",
             "graphs/estimate.py on the contract's layout (graphs/contract.kv_bytes_per_token); "
             "tests/graphs/test_estimate.py proves the estimate equals the bytes of the present.* tensors an exported "
             "ONNX model returns. The sink is one ordinary cached token.", "", table_md, "",
             "Bytes per token per layer (keys + values):", "",
             "| layer | " + " | ".join(mem["per_layer"]) + " |", "| --- |" + " --- |" * len(mem["per_layer"])]
    n = len(next(iter(mem["per_layer"].values())))
    for i in range(n):
        lines.append(f"| {i} | " + " | ".join(f"{v[i]['key']:,} + {v[i]['value']:,}" for v in mem["per_layer"].values())
                     + " |")
    return lines + [""]


def md_appendix(r: dict) -> list[str]:
    lines = ["## Appendix: every layer", ""]
    for tap, layers in r["activations"].items():
        lines += [f"### {TAP_TITLES[tap]}", "",
                  "| layer | Df raw | k95 raw | Df -pos 0 | k95 -pos 0 | Df -sinks | k95 -sinks | Df standardised | "
                  "k95 standardised | outlier dims | top eigenvalues -pos 0 |", "| --- |" + " --- |" * 10]
        for x in layers:
            v = x["variants"]
            lines.append(f"| {x['layer']} | " + " | ".join(f"{v[k]['df']:.2f} | {v[k]['k95']}" for k in VARIANTS) +
                         f" | {', '.join(str(d['dim']) for d in x['outlier_dims'][:5]) or '-'} | "
                         f"{', '.join(f'{e:.3g}' for e in v['no_pos0']['top'][:4])} |")
        lines.append("")
    return lines


def report_md(r: dict, table_md: str) -> str:
    plots = ["", "## Plots", ""] + [f"- [{p}]({p})" for p in r["plots"]] + [""]
    sections = [md_overview, md_activation_summary, md_probes, md_outliers, md_heads, md_weights, md_quality]
    return "\n".join(sum((f(r) for f in sections), []) + md_memory(r, table_md) + plots + md_appendix(r))
