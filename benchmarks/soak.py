"""Soak: does one long-lived process keep its memory and its tokens over many long generations?

    python -m benchmarks.soak EXPORT [EXPORT ...] [--new-tokens 2000] [--sequences 8] [--batch 8]
        [--batch-runs 2] [--prompt-words 32] [--text FILE] [--sample-every 250] [--tolerance 2] [--json FILE]

Per export, one child process (a fresh interpreter, so exports share no memory) opens the runtime's Generator
once and generates NEW_TOKENS greedy tokens for each of SEQUENCES prompts in turn, then BATCH of them together
(BATCH_RUNS times). No stop token ends a sequence (stop_token_ids=[]), so every one runs to NEW_TOKENS. The
prompts are the first PROMPT_WORDS words of the first SEQUENCES paragraphs of TEXT (WikiText-2 test by default):
distinct short texts. Resident memory is VmRSS of /proc/self/status, read after each generation (after a
gc.collect(): uncollected cycles are not a leak) and every SAMPLE_EVERY tokens of sequence 0 of a generation
(the curve). Then each sequence, and the batch, is generated again in a fresh process of its own, as the
first thing that process does, and its tokens are compared with the soak's: state carried from one
generation to the next would show there.

The verdict per export: PASS when the RSS after every later sequence is within TOLERANCE % of the RSS after
the first (the first sequence grows the allocators to the working set of one sequence; a leak keeps growing
after it), the RSS after every later batch run within TOLERANCE % of the first batch run's (a batch's working
set is larger than one sequence's, and onnxruntime's arena keeps it), and every token equals the fresh
process's. The drift column shows every row against the first sequence. Exit status 1 when any export FAILs.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHILD = "from benchmarks.soak import child; child()"


def rss_mib() -> float:
    """Resident set size of this process now, MiB: VmRSS of /proc/self/status."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024                    # kB -> MiB
    raise OSError("/proc/self/status has no VmRSS line")


def peak_mib() -> float:
    """Peak resident set size of this process so far, MiB: VmHWM of /proc/self/status."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise OSError("/proc/self/status has no VmHWM line")


def child() -> None:
    """The child process: a JSON spec on stdin, one JSON line of results on stdout.

    spec: {export, items: [[prompt, ...], ...], new_tokens, sample_every, threads, label}. Each item is one generate()
    call on those prompts (one prompt: a sequence; several: a batch), run in turn on one Generator.
    """
    spec = json.load(sys.stdin)
    try:
        print(json.dumps(_soak(spec)))
    except SystemExit as e:                                # a refusal: its message goes back to the parent
        print(json.dumps({"error": str(e)}))
        sys.exit(1)


def _soak(spec: dict) -> dict:
    """The items of `spec` in turn on one Generator: RSS, time, tokens and the RSS curve of each."""
    import gc
    import time

    from runtime import Generator

    n, every = spec["new_tokens"], spec["sample_every"]
    gen = Generator(spec["export"], provider="cpu", intra_op_threads=spec.get("threads", 0))
    limit = gen.metadata.model.get("max_positions")
    out = {"rss_loaded_mib": rss_mib(), "items": []}
    for prompts in spec["items"]:
        longest = max(len(s) for s in gen.encode(prompts))
        if limit and longest + n > limit:
            raise SystemExit(f"{spec['export']}: a prompt of {longest} tokens + {n} new exceeds the model's "
                             f"{limit} positions: ask fewer --new-tokens or --prompt-words")
        curve, count = [], [0]

        def on_token(i, token, piece):
            if i == 0:
                count[0] += 1
                if count[0] % every == 0:
                    curve.append([count[0], rss_mib()])

        start = time.perf_counter()
        result = gen.generate(prompts, max_new_tokens=n, stop_token_ids=[], on_token=on_token)
        seconds = time.perf_counter() - start
        gc.collect()
        out["items"].append({"rss_mib": rss_mib(), "seconds": seconds, "tokens": result.tokens, "curve": curve,
                             "prompt_tokens": [len(p) for p in result.prompt_tokens]})
        print(f"{spec.get('label', '')} {len(out['items'])}/{len(spec['items'])}: {len(prompts)} x {n} tokens in "
              f"{seconds:.0f} s, RSS {out['items'][-1]['rss_mib']:.1f} MiB", file=sys.stderr, flush=True)
    out["peak_mib"] = peak_mib()
    return out


def run_child(export: str, items: list[list[str]], new_tokens: int, sample_every: int, threads: int,
              label: str = "") -> dict:
    """One fresh interpreter runs `items` in turn on one Generator of `export`; its results. Its progress, a line
    per item, goes to stderr as it runs (a long soak takes hours)."""
    spec = {"export": export, "items": items, "new_tokens": new_tokens, "sample_every": sample_every,
            "threads": threads, "label": f"{os.path.basename(export)} {label}"}
    out = subprocess.run([sys.executable, "-c", CHILD], input=json.dumps(spec), stdout=subprocess.PIPE, text=True,
                         cwd=REPO)                                     # stderr: the child's, live
    last = (out.stdout.strip().splitlines() or ["{}"])[-1]
    result = json.loads(last) if last.startswith("{") else {}
    if out.returncode != 0 or "error" in result:
        raise SystemExit(f"the soak of {export} failed: {result.get('error', 'its error is printed above')}")
    return result


def text_prompts(path: str, count: int, words: int) -> list[str]:
    """The first `words` words of the first `count` paragraphs of `path` that have that many (headings and short
    lines skipped): distinct short texts."""
    found = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            w = line.split()
            if len(w) >= words and not line.strip().startswith("="):
                found.append(" ".join(w[:words]))
                if len(found) == count:
                    return found
    raise SystemExit(f"{path} has {len(found)} paragraphs of {words} words or more, {count} wanted")


def soak_export(export: str, prompts: list[str], new_tokens: int, batch: int = 0, batch_runs: int = 1,
                sample_every: int = 250, threads: int = 0) -> dict:
    """The soak of one export (one child process) and the fresh processes that check its tokens.

    Returns {export, rss_loaded_mib, peak_mib, rows: [{kind: 'sequence'|'batch', index, rss_mib, seconds, curve,
    tokens, fresh_tokens}]}; a batch row's tokens are a list per prompt.
    """
    export = os.path.abspath(export)
    items = [[p] for p in prompts] + [prompts[:batch]] * (batch_runs if batch else 0)
    soak = run_child(export, items, new_tokens, sample_every, threads, "soak")
    fresh = [run_child(export, [p], new_tokens, sample_every, threads, f"fresh process {i + 1}")["items"][0]["tokens"]
             for i, p in enumerate([[p] for p in prompts] + ([prompts[:batch]] if batch else []))]
    rows = []
    for i, item in enumerate(soak["items"]):
        is_batch = i >= len(prompts)
        rows.append({"kind": "batch" if is_batch else "sequence", "index": i - len(prompts) if is_batch else i,
                     "rss_mib": item["rss_mib"], "seconds": item["seconds"], "curve": item["curve"],
                     "prompt_tokens": item["prompt_tokens"],
                     "tokens": item["tokens"] if is_batch else item["tokens"][0],
                     "fresh_tokens": fresh[-1] if is_batch else fresh[i][0]})
    return {"export": export, "new_tokens": new_tokens, "rss_loaded_mib": soak["rss_loaded_mib"],
            "peak_mib": soak["peak_mib"], "rows": rows}


def drift(rss: float, base: float) -> float:
    return 100.0 * (rss - base) / base


def verdict(result: dict, tolerance: float) -> dict:
    """Max drift of later sequences vs the first, of later batch runs vs the first, tokens equal; pass."""
    seqs = [r for r in result["rows"] if r["kind"] == "sequence"]
    batches = [r for r in result["rows"] if r["kind"] == "batch"]
    seq_drift = max((abs(drift(r["rss_mib"], seqs[0]["rss_mib"])) for r in seqs[1:]), default=0.0)
    batch_drift = max((abs(drift(r["rss_mib"], batches[0]["rss_mib"])) for r in batches[1:]), default=0.0)
    full_length = all(len(t) == result["new_tokens"] for r in result["rows"]
                      for t in ([r["tokens"]] if r["kind"] == "sequence" else r["tokens"]))
    equal = all(r["tokens"] == r["fresh_tokens"] for r in result["rows"])
    return {"sequence_drift_pct": seq_drift, "batch_drift_pct": batch_drift, "tokens_equal": equal,
            "full_length": full_length,
            "passed": seq_drift <= tolerance and batch_drift <= tolerance and equal and full_length}


def first_difference(a, b) -> str:
    if a == b:
        return "yes"
    if a and isinstance(a[0], list):
        rows = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
        return f"no (rows {', '.join(map(str, rows))})"
    at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return f"no (from token {at})"


HEADER = ["| export | run | prompt tokens | RSS after (MiB) | drift vs sequence 1 | s | tokens equal fresh process |",
          "| --- | --- | --- | --- | --- | --- | --- |"]


def name_of(result: dict) -> str:
    return os.path.basename(result["export"].rstrip("/"))


def rows(result: dict) -> list[str]:
    """The table's rows of one export."""
    lines, base = [], result["rows"][0]["rss_mib"]
    for r in result["rows"]:
        run = f"sequence {r['index'] + 1}" if r["kind"] == "sequence" else \
            f"batch of {len(r['tokens'])}, run {r['index'] + 1}"
        lines.append(f"| {name_of(result)} | {run} | {'/'.join(map(str, r['prompt_tokens']))} | {r['rss_mib']:.1f} | "
                     f"{drift(r['rss_mib'], base):+.2f} % | {r['seconds']:.1f} | "
                     f"{first_difference(r['tokens'], r['fresh_tokens'])} |")
    return lines


def summary(result: dict, tolerance: float) -> str:
    """One line per export: loaded and peak RSS, max drifts, tokens, PASS/FAIL."""
    v = verdict(result, tolerance)
    batch = f"; batch runs after the first: max drift {v['batch_drift_pct']:.2f} %" \
        if sum(r["kind"] == "batch" for r in result["rows"]) > 1 else ""
    return (f"- {name_of(result)}: loaded {result['rss_loaded_mib']:.1f} MiB, peak {result['peak_mib']:.1f} MiB; "
            f"sequences after the first: max drift {v['sequence_drift_pct']:.2f} %{batch}; tokens equal a fresh "
            f"process's: {'yes' if v['tokens_equal'] else 'NO'}; every run {result['new_tokens']} tokens: "
            f"{'yes' if v['full_length'] else 'NO'} -> **{'PASS' if v['passed'] else 'FAIL'}** "
            f"(tolerance {tolerance:g} %)")


def curve_table(result: dict) -> str:
    """RSS (MiB) every sample of sequence 0 of each run: a row per token count, a column per run."""
    rows = result["rows"]
    head = [f"seq {r['index'] + 1}" if r["kind"] == "sequence" else f"batch {r['index'] + 1}" for r in rows]
    points = sorted({t for r in rows for t, _ in r["curve"]})
    lines = [f"RSS (MiB) of {name_of(result)} while generating, by new tokens "
             "of the run:", "", "| tokens | " + " | ".join(head) + " |", "| --- |" + " --- |" * len(head)]
    for t in points:
        cells = [next((f"{m:.1f}" for x, m in r["curve"] if x == t), "") for r in rows]
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    from exporter.options import DEFAULT_EVAL
    p = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("exports", nargs="+", help="export directories")
    p.add_argument("--new-tokens", type=int, default=2000, help="greedy tokens per sequence, no stop token")
    p.add_argument("--sequences", type=int, default=8, help="prompts generated one after another")
    p.add_argument("--batch", type=int, default=None,
                   help="then the first BATCH prompts as one batch (default: all of them; 0: no batch)")
    p.add_argument("--batch-runs", type=int, default=2, help="how many times the batch runs")
    p.add_argument("--prompt-words", type=int, default=32)
    p.add_argument("--text", default=str(DEFAULT_EVAL), help="where the prompts come from")
    p.add_argument("--sample-every", type=int, default=250, help="RSS sample every N tokens (the curve)")
    p.add_argument("--tolerance", type=float, default=2.0, help="max RSS drift, percent")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: its default)")
    p.add_argument("--json", default="", help="also write every figure and token here")
    a = p.parse_args(argv)
    batch = a.sequences if a.batch is None else a.batch
    if a.new_tokens < 1 or a.sequences < 1 or not 0 <= batch <= a.sequences or a.batch_runs < 1:
        p.error("need --new-tokens >= 1, --sequences >= 1, 0 <= --batch <= --sequences, --batch-runs >= 1")
    command = "python -m benchmarks.soak " + " ".join(argv if argv is not None else sys.argv[1:])
    prompts = text_prompts(a.text, a.sequences, a.prompt_words)
    print(f"`{command}`\n\n{a.new_tokens} greedy new tokens per sequence (no stop token), {a.sequences} sequences "
          f"in turn then a batch of {batch} x {a.batch_runs if batch else 0}, in one process per export; tokens "
          "compared with a fresh process per sequence and for the batch.\n", flush=True)
    print("\n".join(HEADER), flush=True)
    results = []
    for export in a.exports:                     # rows as each export finishes: a long soak shows progress
        results.append(soak_export(export, prompts, a.new_tokens, batch, a.batch_runs, a.sample_every, a.threads))
        print("\n".join(rows(results[-1])), flush=True)
    print("\n" + "\n".join(summary(r, a.tolerance) for r in results))
    for res in results:
        print("\n" + curve_table(res))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"command": command, "prompts": prompts, "tolerance": a.tolerance, "results": results}, f)
    return 0 if all(verdict(r, a.tolerance)["passed"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
