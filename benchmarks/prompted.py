"""What the runtime benchmarks share: a prompt of N tokens of WikiText-2 test, its prefill and greedy decode
steps through our runtime, and the process's peak memory (decode_speed, long_context, profile_ops).
numpy + runtime only, so a measuring child loads no torch."""
from __future__ import annotations

import numpy as np

from exporter.options import DEFAULT_EVAL
from runtime import Generator
from runtime.cache import KVCache
from runtime.prompts import sink_prefix

from .runtime_bench.common import peak_rss_gib  # noqa: F401  (re-exported for the children)


def prompt_ids(gen: Generator, n_tokens: int) -> list[int]:
    """Text token ids that, with the sink the runtime prepends, make an n_tokens prompt."""
    text = open(DEFAULT_EVAL, encoding="utf-8").read()[:60 * n_tokens + 10_000]
    ids = gen.tokenizer.encode(text, add_special_tokens=False).ids
    want = n_tokens - len(sink_prefix(gen.metadata))
    if len(ids) < want:
        raise SystemExit(f"{DEFAULT_EVAL} gave {len(ids)} tokens, {want} wanted")
    return ids[:want]


def prefill(gen: Generator, n_tokens: int, new_tokens: int) -> tuple[np.ndarray, np.ndarray, KVCache]:
    """Prefill an n_tokens prompt (batch 1) in the export's cache protocol, room left for new_tokens.
    Returns (last logits (1, V), attention mask (1, n_tokens), cache)."""
    prompt = gen.encode([prompt_ids(gen, n_tokens)])                                   # [[sink, ...]]
    cache = gen.new_cache(prompt, new_tokens)
    mask = np.ones((1, len(prompt[0])), np.int64)                                       # (1, n)
    return gen.prefill(np.array(prompt), mask, cache), mask, cache


def greedy_steps(step, logits: np.ndarray, mask: np.ndarray, cache: KVCache, steps: int) -> np.ndarray:
    """`steps` one-token greedy decode steps with `step` (a runtime.forward.DecoderStep); the last logits."""
    for _ in range(steps):
        mask = np.concatenate([mask, np.ones((1, 1), np.int64)], axis=1)               # (1, past+1)
        logits = step(logits.argmax(-1)[:, None], mask, cache)                         # (1, V)
    return logits
