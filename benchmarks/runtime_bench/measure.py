"""Runs one child per measurement and aggregates: a Runtime names a child script, its python and its model;
measure_one() runs it in a fresh process and returns its JSON result (plus the wall time of the process);
summarize() turns several runs into median and range.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

from .common import LOG_DIR, OPT_PYTHON, REPO

CHILD_TIMEOUT_S = 900


class ChildError(RuntimeError):
    """A child failed; the message names the runtime, the prompt length, the run and the stderr tail."""


@dataclass(frozen=True)
class Runtime:
    key: str          # 'hf', 'genai', 'optimum', or 'ours:<setting>'
    label: str        # the table's row name
    module: str       # child module, e.g. benchmarks.runtime_bench.child_hf
    python: str       # interpreter that runs it
    model: str        # model / export directory


def runtimes_for(only: tuple[str, ...], settings, paths: dict) -> list[Runtime]:
    """The rows to measure, in table order. paths: {'hf', 'genai', 'optimum': dir, 'ours': {name: dir}}."""
    pkg = "benchmarks.runtime_bench."
    rows = []
    if "genai" in only:
        rows.append(Runtime("genai", "onnxruntime-genai", pkg + "child_genai", sys.executable, paths["genai"]))
    if "hf" in only:
        rows.append(Runtime("hf", "HF transformers (PyTorch, sdpa)", pkg + "child_hf", sys.executable, paths["hf"]))
    if "optimum" in only:
        rows.append(Runtime("optimum", "optimum ORTModelForCausalLM", pkg + "child_optimum", OPT_PYTHON,
                            paths["optimum"]))
    if "ours" in only:
        rows += [Runtime(f"ours:{s.name}", s.label, pkg + "child_ours", sys.executable, paths["ours"][s.name])
                 for s in settings]
    return rows


def measure_one(rt: Runtime, prompt_tokens: int, new_tokens: int, run: int) -> dict:
    """Run rt's child once in a fresh process; its stderr is kept in build/bench/logs/."""
    cmd = [rt.python, "-m", rt.module, rt.model, str(prompt_tokens), str(new_tokens)]
    env = {**os.environ, "PYTHONPATH": REPO, "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ChildError(f"{rt.label} timed out after {CHILD_TIMEOUT_S} s at prompt {prompt_tokens}, run "
                         f"{run + 1}: {' '.join(cmd)}") from None
    wall = time.perf_counter() - t0
    os.makedirs(LOG_DIR, exist_ok=True)
    log = os.path.join(LOG_DIR, f"{rt.key.replace(':', '-')}-{prompt_tokens}-run{run + 1}.stderr")
    with open(log, "w", encoding="utf-8") as f:
        f.write("$ " + " ".join(cmd) + "\n" + p.stderr)
    result = None
    for line in reversed(p.stdout.strip().splitlines()):
        if line.startswith("{"):
            try:
                result = json.loads(line)
                break
            except ValueError:
                pass
    if p.returncode != 0 or result is None:
        tail = "\n".join(l for l in (p.stderr + p.stdout).strip().splitlines() if "it/s]" not in l)[-2500:]
        raise ChildError(f"{rt.label} failed at prompt {prompt_tokens}, run {run + 1} (exit {p.returncode}); "
                         f"command: {' '.join(cmd)}; stderr in {os.path.relpath(log, REPO)}:\n{tail}")
    return {**result, "wall_s": wall}


def summarize(values: list[float | None]) -> dict | None:
    """{'median', 'min', 'max', 'n'} of the non-missing values, None if there are none."""
    v = [x for x in values if x is not None]
    return {"median": statistics.median(v), "min": min(v), "max": max(v), "n": len(v)} if v else None


def leading_match(a: list[int], b: list[int]) -> int:
    """How many leading tokens a and b share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
