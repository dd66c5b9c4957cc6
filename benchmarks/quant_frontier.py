"""The quantized cache's frontier from ONNX exports, in one run: each row an exporter command at 4x, 8x or 16x
fewer KV bytes than float16, built when its directory is missing (or was built by other arguments), then scored
by `python -m validate` on WikiText-2 test (32,768 tokens, the acceptance text) and on a second text that is not
WikiText (Pride and Prejudice's first 16,384 tokens). Bytes are validate's, measured on the ONNX outputs: codes,
scale bytes and, with a float window, the whole cache at the window's context over its tokens. The table is
written after every row, from every row kept in build/quant-frontier (not only this call's), so a stopped run
keeps what it measured and the same command goes on from there. Each row says the code its export was built
by: the last commit that changed exporter/ or graphs/ before the checkout it was built in (`+local` when they had
uncommitted changes), so a table gathered over several calls shows whether its rows were built by the same code.

Every scored row is also recorded in benchmarks/results/quant-frontier/<row>.json (the row as the table prints it,
its arguments, token counts and commit; a few hundred bytes, committed), because the whole run takes longer than a
machine keeps build/: a row recorded for the same arguments and token counts is in the table and is not rebuilt
(`--rerun` rebuilds and rescores the rows asked for, and rewrites their records).

    python -m benchmarks.quant_frontier [--rows codec-8,window-8,...] [--eval-tokens 32768] [--second-tokens 16384]
                                        [--model M] [--out DIR] [--records DIR] [--rerun]

The rows are the levers of docs/quantization.md, each alone and combined: the spectral codec, a float window of
16 tokens (at 16x with K=160, which leaves the window its bytes), training through the quantizer (the long
schedule of docs/projectors.md; with a window, the training reads each query's last 16 tokens as the window
holds them) and both. Writes frontier.md / .json, the exports and their logs in --out (build/quant-frontier/).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from exporter.options import DATA_DIR, DEFAULT_EVAL

OUT = os.path.join("build", "quant-frontier")  # the default --out
RECORDS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "quant-frontier")  # default --records
SECOND = DATA_DIR / "pg1342-pride-and-prejudice.txt"
TRAINED = ["--method", "trained", "--train-steps", "192", "--train-lr", "6e-4", "--train-schedule", "cosine",
           "--train-tokens", "131072"]


def codec(ratio: int, k: str = "full", window: int = 0) -> list[str]:
    """The codec's arguments, the float window always named (its default is 16 where it fits, quant/window.py)."""
    return ["--k", k, "--quant", "spectral", "--quant-ratio", str(ratio), "--quant-window", str(window)]


# name: (lever, exporter arguments); 16x with a window needs K below full (docs/quantization.md)
ROWS = {
    "codec-4": ("spectral codec", codec(4)),
    "codec-8": ("spectral codec", codec(8)),
    "codec-16": ("spectral codec", codec(16)),
    "window-4": ("+ float window 16", codec(4, window=16)),
    "window-8": ("+ float window 16", codec(8, window=16)),
    "window-16": ("+ float window 16, K=160", codec(16, "160", window=16)),
    "trained-4": ("+ trained through the quantizer", codec(4) + TRAINED),
    "trained-8": ("+ trained through the quantizer", codec(8) + TRAINED),
    "trained-16": ("+ trained through the quantizer", codec(16) + TRAINED),
    "trained-window-4": ("+ window 16 + trained", codec(4, window=16) + TRAINED),
    "trained-window-8": ("+ window 16 + trained", codec(8, window=16) + TRAINED),
    "trained-window-16": ("+ window 16 + trained, K=160", codec(16, "160", window=16) + TRAINED),
}


def run(cmd: list[str], log: str) -> float:
    """cmd run with its output in log; seconds taken. A failure stops the run with the log's path."""
    t0 = time.time()
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        if subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT) != 0:
            sys.exit(f"quant_frontier: `{' '.join(cmd)}` failed; see {log}")
    return time.time() - t0


def git(*cmd) -> str:
    return subprocess.run(["git", *cmd], capture_output=True, text=True).stdout.strip()


def code_version() -> str:
    """The commit the exporter runs from, `+local` when exporter/ or graphs/ differ from it; '?' outside git."""
    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return "?"
    return commit + ("+local" if git("status", "--porcelain", "--", "exporter", "graphs") else "")


def exporter_version(commit: str) -> str:
    """The last commit at or before a row's build commit that changed exporter/ or graphs/ (the code that built
    it): rows built from checkouts that differ only elsewhere show the same one. The commit itself when git does
    not know it."""
    head, local = commit.removesuffix("+local"), commit.endswith("+local")
    changed = git("log", "-1", "--format=%h", head, "--", "exporter", "graphs") if head != "?" else ""
    return (changed or head) + ("+local" if local else "")


def built(root: str, name: str, args: list[str]) -> dict | None:
    """The row's stamp ({args, seconds, commit}) when its directory holds an export of these arguments."""
    stamp = os.path.join(root, f"{name}.args.json")
    if not (os.path.exists(os.path.join(root, name, "model.onnx")) and os.path.exists(stamp)):
        return None
    kept = json.load(open(stamp))
    if isinstance(kept, list):  # the first stamps held the arguments alone
        kept = {"args": kept, "seconds": None, "commit": "?"}
    return kept if kept["args"] == args else None


def export(root: str, name: str, args: list[str], rebuild: bool = False) -> tuple[str, bool]:
    """The row's export directory, built unless it holds an export of the same arguments; whether it was built."""
    out = os.path.join(root, name)
    if not rebuild and built(root, name, args):
        return out, False
    commit = code_version()
    seconds = run([sys.executable, "-m", "exporter", "--out", out, *args], os.path.join(root, f"{name}.log"))
    with open(os.path.join(root, f"{name}.args.json"), "w") as f:
        json.dump({"args": args, "seconds": round(seconds), "commit": commit}, f)
    return out, True


def kept_report(out: str, text, tokens: int, label: str) -> dict | None:
    """validate's kept report-<label>.json beside the export, when it scored this text on this many tokens."""
    kept = os.path.join(out, f"report-{label}.json")
    if not os.path.exists(kept):
        return None
    report = json.load(open(kept))
    q = report.get("quality") or {}
    # what was asked for; a text shorter than its window scores fewer tokens than asked
    asked = report.get("asked") or {"text": os.path.basename(q.get("eval_file", "")), "tokens": q.get("tokens_scored")}
    return report if asked == {"text": os.path.basename(str(text)), "tokens": tokens} else None


def score(root: str, name: str, out: str, text, tokens: int, label: str, fresh: bool) -> None:
    """Score one text with validate unless the export was not rebuilt and its report of that text is kept."""
    if not fresh and kept_report(out, text, tokens, label):
        return
    run([sys.executable, "-m", "validate", "--export", out, "--eval", str(text), "--eval-tokens", str(tokens)],
        os.path.join(root, f"{name}.log"))
    report = json.load(open(os.path.join(out, "report.json")))
    report["asked"] = {"text": os.path.basename(str(text)), "tokens": tokens}
    with open(os.path.join(out, f"report-{label}.json"), "w") as f:
        json.dump(report, f, indent=1)


def summary(r: dict) -> dict:
    q, p, kv = r["quality"], r["parity"], r["kv"]
    per_token = kv.get("per_token_at_context") or kv["measured"]
    return {"ppl_original": q["ppl_original"], "ppl_increase_pct": q["ppl_increase_pct"], "kl": q["kl_mean"],
            "top1": q["top1_agreement"], "parity_passed": p["passed"], "parity_kl": p.get("kl_mean"),
            "parity_cost": p.get("kl_cost"), "bytes_per_token": per_token,
            "x_fewer": kv["original_fp16"] / per_token}


def row_args(name: str, model: str | None) -> list[str]:
    return ROWS[name][1] + (["--model", model] if model else [])


def built_row(a, name: str) -> dict | None:
    """The row from --out when its export of these arguments and both scores are kept there."""
    args = row_args(name, a.model)
    stamp = built(a.out, name, args)
    out = os.path.join(a.out, name)
    first = stamp and kept_report(out, DEFAULT_EVAL, a.eval_tokens, "wikitext2")
    second = stamp and kept_report(out, SECOND, a.second_tokens, "second")
    if not (first and second):
        return None
    return {"row": name, "lever": ROWS[name][0], "model": first["model"], "args": args,
            "tokens": {"wikitext2": a.eval_tokens, "second": a.second_tokens},
            "export_seconds": stamp["seconds"], "commit": stamp["commit"],
            "wikitext2": summary(first), "second": summary(second)}


def recorded_row(a, name: str) -> dict | None:
    """The row's record in --records when it was measured with these arguments and token counts."""
    path = os.path.join(a.records, f"{name}.json")
    if not os.path.exists(path):
        return None
    row = json.load(open(path))
    same = row["args"] == row_args(name, a.model) and row["tokens"] == {"wikitext2": a.eval_tokens,
                                                                         "second": a.second_tokens}
    return row if same else None


def record(a, row: dict) -> None:
    os.makedirs(a.records, exist_ok=True)
    with open(os.path.join(a.records, f"{row['row']}.json"), "w") as f:
        json.dump(row, f, indent=1, sort_keys=True)
        f.write("\n")


def kept_rows(a) -> list[dict]:
    """Every row of ROWS, in its order, kept in --out (export and both scores) or else recorded in --records."""
    rows = [built_row(a, name) or recorded_row(a, name) for name in ROWS]
    return [r for r in rows if r]


def table(rows: list[dict], a) -> str:
    lines = [f"Quantized-cache frontier (`python -m benchmarks.quant_frontier`), {rows[0]['model']}; perplexity change "
             f"against the uncompressed model on WikiText-2 test ({a.eval_tokens} tokens) and on "
             f"{SECOND.name} ({a.second_tokens} tokens); bytes measured on the ONNX outputs by validate.", "",
             "| row | lever | KV B/token | x fewer than fp16 | WikiText-2 | KL | top-1 | parity (KL / cost) "
             "| second text | its parity | export s | exporter at |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        w, s = r["wikitext2"], r["second"]
        parity = lambda x: ("pass" if x["parity_passed"] else "FAIL") + (
            f" ({x['parity_kl']:.2g} / {x['parity_cost']:.2g})" if x["parity_kl"] is not None else "")
        lines.append(f"| {r['row']} | {r['lever']} | {w['bytes_per_token']:,.1f} | {w['x_fewer']:.2f} | "
                     f"{w['ppl_increase_pct']:+.2f} % | {w['kl']:.4f} | {100 * w['top1']:.1f} % | {parity(w)} | "
                     f"{s['ppl_increase_pct']:+.2f} % | {parity(s)} | "
                     f"{'?' if r['export_seconds'] is None else r['export_seconds']} | "
                     f"{exporter_version(r['commit'])} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quant_frontier", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of: {', '.join(ROWS)}")
    p.add_argument("--model", default=None, help="exporter --model (default: SmolLM2-135M)")
    p.add_argument("--eval-tokens", type=int, default=32768)
    p.add_argument("--second-tokens", type=int, default=16384)
    p.add_argument("--out", default=OUT, help=f"where the exports, logs and table go (default {OUT})")
    p.add_argument("--records", default=RECORDS, help="where each scored row's record is written and read "
                   "(default benchmarks/results/quant-frontier, committed)")
    p.add_argument("--rerun", action="store_true", help="rebuild and rescore the rows asked for even when recorded")
    a = p.parse_args(argv)
    names = [n for n in a.rows.split(",") if n]
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        p.error(f"unknown rows {unknown}: choose from {', '.join(ROWS)}")
    os.makedirs(a.out, exist_ok=True)
    for name in names:
        if a.rerun or not recorded_row(a, name) or built(a.out, name, row_args(name, a.model)):
            out, fresh = export(a.out, name, row_args(name, a.model), rebuild=a.rerun)
            score(a.out, name, out, DEFAULT_EVAL, a.eval_tokens, "wikitext2", fresh)
            score(a.out, name, out, SECOND, a.second_tokens, "second", fresh)
            record(a, built_row(a, name))
        rows = kept_rows(a)
        with open(os.path.join(a.out, "frontier.json"), "w") as f:
            json.dump(rows, f, indent=1)
        with open(os.path.join(a.out, "frontier.md"), "w") as f:
            f.write(table(rows, a))
        print(table(rows, a), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
