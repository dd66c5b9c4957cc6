"""Which constant token to put at position 0: the original model's perplexity with each candidate prefix.

    python -m benchmarks.sink_choice [--model M] [--eval-tokens 8192] [--candidates auto,none,<|endoftext|>,...]

Same windows as validation (2048 tokens); with a prefix every window token is scored, without one the first
token of each window is not (it has nothing to condition on). Prints a markdown table.
"""
from __future__ import annotations

import argparse
import math
import sys

import torch

from exporter.calib.text import token_windows
from exporter.calib.tokens import sink_token_id
from exporter.eval.perplexity import hf_logits
from exporter.model.load import load
from exporter.options import DEFAULT_EVAL


def perplexity(hf, windows) -> tuple[float, int]:
    nll, n = 0.0, 0
    for ids in windows:
        lp = torch.log_softmax(hf_logits(hf, ids).float(), -1)                # (T-1, V)
        nll -= lp.gather(1, torch.tensor(ids[1:])[:, None]).double().sum().item()
        n += len(ids) - 1
    return math.exp(nll / n), n


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sink_choice", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None)
    p.add_argument("--eval", default=str(DEFAULT_EVAL))
    p.add_argument("--eval-tokens", type=int, default=8192)
    p.add_argument("--candidates", default="auto,none,<|endoftext|>,<|im_end|>")
    a = p.parse_args(argv)
    loaded = load(a.model)
    print("| prefix | token id | perplexity | tokens scored |\n| --- | --- | --- | --- |")
    for c in a.candidates.split(","):
        try:
            sink = sink_token_id(loaded.tokenizer, c)
        except Exception as e:  # a candidate this tokenizer lacks
            print(f"| {c} | — | ({e}) | |")
            continue
        ppl, n = perplexity(loaded.model, token_windows(loaded.tokenizer, a.eval, 2048, a.eval_tokens, sink))
        name = "none" if sink is None else loaded.tokenizer.convert_ids_to_tokens(sink)
        print(f"| {c} → `{name}` | {sink if sink is not None else '—'} | {ppl:.3f} | {n} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
