"""The markdown table: one row per runtime, each timing cell 'median (min–max)' per prompt length, joined by
' / ' in --prompts order; the greedy column compares each run's tokens with HF's.
"""
from __future__ import annotations

from .measure import leading_match, summarize


def _fmt_s(x: float) -> str:
    return f"{x:.3g}" if x < 100 else f"{x:.0f}"


def _cell(stat: dict | None, fmt, runs: int) -> str:
    """'median (min–max)'; a cell with fewer runs than the others (--cap) says how many."""
    if stat is None:
        return "—"
    fewer = stat["n"] < runs
    if stat["n"] == 1:
        return fmt(stat["median"]) + (" (1 run)" if fewer else "")
    return (f"{fmt(stat['median'])} ({fmt(stat['min'])}–{fmt(stat['max'])}"
            + (f", {stat['n']} runs)" if fewer else ")"))


def greedy_cell(key: str, prompts: list[int], results: dict, new_tokens: int) -> str:
    """'64/64, 64/64, 61/64': per prompt length, the fewest leading tokens any run shares with HF's first run.
    HF's own row: 'reference' when its runs agree with each other."""
    if not any(("hf", n) in results for n in prompts):
        return "— (no HF run)"
    parts = []
    for n in prompts:
        ref = results.get(("hf", n))
        runs = results.get((key, n))
        if not ref or not runs:
            parts.append("—")
            continue
        parts.append(f"{min(leading_match(r['tokens'], ref[0]['tokens']) for r in runs)}/{new_tokens}")
    if key == "hf" and all(p == f"{new_tokens}/{new_tokens}" for p in parts):
        return "reference"
    return ", ".join(parts)


def rows(runtimes, prompts: list[int], results: dict, new_tokens: int) -> list[dict]:
    """Aggregates per runtime: results[(key, n)] is the list of that runtime's run results at prompt n."""
    out = []
    rss_at = max(prompts)
    for rt in runtimes:
        runs_any = next((results[(rt.key, n)] for n in prompts if (rt.key, n) in results), [{}])
        name = runs_any[0].get("runtime", rt.label)            # what the child reports, versions included
        if rt.key.startswith("ours:"):                         # 'ours (onnxruntime X)' -> 'ours K=128 ... (onnxruntime X)'
            name = rt.label + name[len("ours"):]
        out.append({
            "key": rt.key, "runtime_label": name,
            "kv_bytes_per_token": runs_any[0].get("kv_bytes_per_token"),
            "ttft_s": {n: summarize([r["ttft_s"] for r in results.get((rt.key, n), [])]) for n in prompts},
            "decode_tok_s": {n: summarize([r["decode_tok_s"] for r in results.get((rt.key, n), [])])
                             for n in prompts},
            "peak_rss_gib": summarize([r["peak_rss_gib"] for r in results.get((rt.key, rss_at), [])]),
            "greedy_vs_hf": greedy_cell(rt.key, prompts, results, new_tokens),
        })
    return out


def markdown(table_rows: list[dict], prompts: list[int], runs: int) -> str:
    ns = " / ".join(str(n) for n in prompts)
    lines = [f"| runtime | KV B/token | TTFT {ns} (s) | decode tok/s {ns} | peak RSS at {max(prompts)} (GiB) | "
             "greedy == HF |", "| --- | --- | --- | --- | --- | --- |"]
    for r in table_rows:
        kv = f"{r['kv_bytes_per_token']:,}" if r["kv_bytes_per_token"] else "—"
        ttft = " / ".join(_cell(r["ttft_s"][n], _fmt_s, runs) for n in prompts)
        tps = " / ".join(_cell(r["decode_tok_s"][n], lambda x: f"{x:.1f}", runs) for n in prompts)
        rss = _cell(r["peak_rss_gib"], lambda x: f"{x:.2f}", runs)
        lines.append(f"| {r['runtime_label']} | {kv} | {ttft} | {tps} | {rss} | {r['greedy_vs_hf']} |")
    return "\n".join(lines)
