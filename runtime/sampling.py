"""Choosing the next token from a batch of last-position logits: greedy, temperature, top-k, top-p.

Pure functions, one per idea; `sample` composes them. Per step the vocab row is copied at most once:
greedy copies nothing; otherwise the one copy is the candidates' logits (all V of them, or only the
top k gathered), which the softmax turns into probabilities in place. Randomness comes only from the numpy
Generator passed in, so a seed reproduces a run.
"""
from __future__ import annotations

import numpy as np


def greedy(logits: np.ndarray) -> np.ndarray:
    """Index of the largest logit per row: (B, V) -> (B,) int64."""
    return np.argmax(logits, axis=-1)


def top_k_candidates(logits: np.ndarray, k: int) -> np.ndarray:
    """Token ids of the k largest logits per row, largest first: (B, V) -> (B, k) int64.

    k <= 0 or k >= V means every token (a full sort, which top-p needs). Temperature never changes
    this order, so it is computed on the raw logits.
    """
    vocab = logits.shape[-1]
    if k == 1:
        return greedy(logits)[:, None]                                    # (B, 1), ties as greedy breaks them
    if k <= 0 or k >= vocab:
        return np.argsort(logits, axis=-1, kind="stable")[:, ::-1]       # (B, V)
    part = np.argpartition(logits, vocab - k, axis=-1)[:, vocab - k:]    # (B, k), unordered
    order = np.argsort(np.take_along_axis(logits, part, axis=-1), axis=-1)[:, ::-1]  # (B, k)
    return np.take_along_axis(part, order, axis=-1)                      # (B, k)


def softmax(values: np.ndarray, temperature: float = 1.0, in_place: bool = False) -> np.ndarray:
    """Softmax of values / temperature over the last axis: (B, K) -> (B, K).

    Returns a float64 copy, or, with in_place, overwrites `values` (a float array the caller owns).
    """
    probs = values if in_place else values.astype(np.float64)            # (B, K)
    probs -= probs.max(axis=-1, keepdims=True)
    probs *= 1.0 / temperature
    np.exp(probs, out=probs)
    probs /= probs.sum(axis=-1, keepdims=True)
    return probs


def top_p_keep(sorted_probs: np.ndarray, top_p: float) -> np.ndarray:
    """Nucleus filter on probabilities sorted largest first: (B, K) -> (B, K) bool.

    Keeps the smallest prefix whose mass reaches top_p; the most likely token is always kept.
    """
    mass_before = np.cumsum(sorted_probs, axis=-1) - sorted_probs        # (B, K)
    return mass_before < top_p


def draw(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One index per row, drawn in proportion to probs (need not sum to 1): (B, K) -> (B,) int64."""
    cdf = np.cumsum(probs, axis=-1)                                      # (B, K)
    u = rng.random((probs.shape[0], 1)) * cdf[:, -1:]                    # (B, 1)
    return np.minimum((cdf <= u).sum(axis=-1), probs.shape[-1] - 1)


def sample(logits: np.ndarray, rng: np.random.Generator, temperature: float = 0.0,
           top_k: int = 0, top_p: float = 1.0) -> np.ndarray:
    """Next token per row of last-position logits (B, V) -> (B,) int64.

    temperature <= 0 is greedy (top_k and top_p are then ignored); top_k <= 0 and top_p >= 1 switch
    those filters off. Order as in HF: temperature, then top-k, then top-p on the renormalised top-k.
    """
    if temperature <= 0:
        return greedy(logits)
    if top_k <= 0 and top_p >= 1.0:
        return draw(softmax(logits, temperature), rng)                   # every token is a candidate
    ids = top_k_candidates(logits, top_k)                                # (B, K)
    probs = softmax(np.take_along_axis(logits, ids, axis=-1), temperature, in_place=True)  # (B, K), the copy
    if top_p < 1.0:
        probs[~top_p_keep(probs, top_p)] = 0.0
    return np.take_along_axis(ids, draw(probs, rng)[:, None], axis=-1)[:, 0]  # (B,)
