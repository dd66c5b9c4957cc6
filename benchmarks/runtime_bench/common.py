"""What the parent and every child share: paths under build/bench/, the prompt-ids file, the token clock and
the one-JSON-line result a child prints. Standard library only: the optimum child imports this module from the
optimum virtualenv (transformers 4.57), the others from .venv (transformers 5).
"""
from __future__ import annotations

import json
import os
import resource
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.path.join(REPO, "build")
BENCH_DIR = os.path.join(BUILD, "bench")
HF_DIR = os.path.join(BENCH_DIR, "hf-smollm2-135m")            # save_pretrained of exporter.model.load's model
GENAI_DIR = os.path.join(BENCH_DIR, "genai-smollm2-135m-fp32-cpu")  # onnxruntime_genai.models.builder output


def genai_dir(precision: str = "fp32") -> str:
    """Where onnxruntime-genai's builder writes its model of the default model at this precision (fp32, int4)."""
    return os.path.join(BENCH_DIR, f"genai-smollm2-135m-{precision}-cpu")
OPTIMUM_DIR = os.path.join(BENCH_DIR, "optimum-smollm2-135m")  # optimum-cli export onnx output
IDS_FILE = os.path.join(BENCH_DIR, "prompt-ids.json")
LOG_DIR = os.path.join(BENCH_DIR, "logs")
OPT_PYTHON = os.path.join(BUILD, "venvs", "optimum", "bin", "python")
COMPLETE = ".complete"   # written last into a built directory; a directory without it is rebuilt

def ours_dir(setting: str) -> str:
    """Where our export for one --ours setting (e.g. 'k128-pre-rope') lives."""
    return os.path.join(BENCH_DIR, f"ours-{setting}")


def is_built(path: str) -> bool:
    return os.path.isfile(os.path.join(path, COMPLETE))


def load_prompt(n_tokens: int, ids_file: str = IDS_FILE) -> tuple[list[int], dict]:
    """The first n_tokens prompt ids (sink first: ids[0] is the sink token) and the file's header."""
    with open(ids_file, encoding="utf-8") as f:
        data = json.load(f)
    ids = data["ids"]
    if n_tokens > len(ids):
        raise SystemExit(f"{ids_file} holds {len(ids)} prompt ids, {n_tokens} asked: run the benchmark's "
                         "prepare step again (python -m benchmarks.runtime_bench.prepare)")
    return ids[:n_tokens], {k: v for k, v in data.items() if k != "ids"}


def ru_maxrss_gib() -> float:
    """getrusage's ru_maxrss (KiB on Linux), GiB. Caution: Linux carries the parent's peak over fork and exec,
    so a child of a big process reports at least the parent's peak; peak_rss_gib() does not."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def peak_rss_gib() -> float:
    """Peak resident set size of this process so far, GiB: VmHWM of /proc/self/status (the high-water mark of
    this process's own address space, fresh after exec); ru_maxrss where /proc is missing."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2 ** 20            # kB -> GiB
    except OSError:
        pass
    return ru_maxrss_gib()


class TokenClock:
    """Wall-clock stamps of one generation: start() just before the call that takes the prompt, token(id) when
    the runtime hands a new token to the caller. Every child measures with this, so the figures mean the same:

    ttft_s        = first token stamp - start                                   (s)
    decode_tok_s  = (new tokens - 1) / (last token stamp - first token stamp)   (tokens/s, batch 1)
    """

    def __init__(self):
        self.t0: float | None = None
        self.stamps: list[float] = []    # perf_counter() per new token, s
        self.tokens: list[int] = []      # the new token ids, in order

    def start(self) -> None:
        self.t0 = time.perf_counter()

    def token(self, token_id: int) -> None:
        self.stamps.append(time.perf_counter())
        self.tokens.append(int(token_id))

    def result(self, new_tokens: int, **extra) -> dict:
        if len(self.tokens) != new_tokens:
            raise SystemExit(f"generated {len(self.tokens)} tokens, {new_tokens} expected")
        span = self.stamps[-1] - self.stamps[0]
        return {"ttft_s": self.stamps[0] - self.t0,
                "decode_tok_s": (new_tokens - 1) / span if new_tokens > 1 and span > 0 else None,
                "total_s": self.stamps[-1] - self.t0,
                "peak_rss_gib": peak_rss_gib(), "ru_maxrss_gib": ru_maxrss_gib(), "tokens": self.tokens, **extra}


def child_args(argv: list[str] | None = None, doc: str | None = None):
    """The children's command line: MODEL_PATH N_PROMPT NEW_TOKENS [--ids FILE]."""
    import argparse
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="model / export directory")
    p.add_argument("prompt_tokens", type=int, help="prompt length in tokens, the sink token included")
    p.add_argument("new_tokens", type=int, help="greedy tokens to generate (no stop on EOS)")
    p.add_argument("--ids", default=IDS_FILE, help="prompt-ids JSON written by prepare")
    return p.parse_args(argv)


def emit(result: dict) -> None:
    """Print the child's result as one JSON line, the last line of its stdout (the parent reads that one)."""
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
