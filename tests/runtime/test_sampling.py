"""runtime/: generation through IO binding on a toy export (tests/toy_graph.py) against a numpy reference."""
from __future__ import annotations


import numpy as np

from runtime.forward import position_ids
from runtime.prompts import left_pad
from runtime.sampling import draw, greedy, sample, softmax, top_k_candidates, top_p_keep


def test_left_pad_and_position_ids():
    ids, mask = left_pad([[0, 5, 6], [0]], pad_token_id=1)
    assert ids.tolist() == [[0, 5, 6], [1, 1, 0]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert position_ids(mask, 3).tolist() == [[0, 1, 2], [0, 0, 0]]
    grown = np.concatenate([mask, [[1], [0]]], axis=1)  # second sequence finished: its new token masked
    assert position_ids(grown, 1).tolist() == [[3], [0]]


def test_top_k_candidates():
    logits = np.array([[0.1, 3.0, -1.0, 2.0, 0.5], [5.0, 4.0, 3.0, 2.0, 1.0]], np.float32)
    assert top_k_candidates(logits, 2).tolist() == [[1, 3], [0, 1]]
    assert top_k_candidates(logits, 1).tolist() == [[1], [0]]
    assert top_k_candidates(logits, 0).tolist() == [[1, 3, 4, 0, 2], [0, 1, 2, 3, 4]]
    assert greedy(logits).tolist() == [1, 0]


def test_top_p_keep():
    probs = np.array([[0.5, 0.3, 0.15, 0.05]])
    assert top_p_keep(probs, 0.8).tolist() == [[True, True, False, False]]
    assert top_p_keep(probs, 0.81).tolist() == [[True, True, True, False]]
    assert top_p_keep(probs, 0.01).tolist() == [[True, False, False, False]]
    assert top_p_keep(probs, 1.0).all()


def test_softmax_temperature_and_draw():
    logits = np.array([[0.0, np.log(3.0)]], np.float32)
    assert np.allclose(softmax(logits), [[0.25, 0.75]])
    assert np.allclose(softmax(logits, temperature=np.log(3.0) / np.log(2.0)), [[1 / 3, 2 / 3]])
    assert softmax(logits).dtype == np.float64 and logits[0, 0] == 0.0  # a copy, input untouched
    rng = np.random.default_rng(0)
    assert draw(np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 2.0]]), rng).tolist() == [1, 2]


def test_sample_respects_top_k_and_top_p():
    logits = np.tile(np.array([[2.0, 1.0, 0.0, -1.0, 3.0]], np.float32), (4000, 1))   # (4000, 5)
    rng = np.random.default_rng(0)
    picks = sample(logits, rng, temperature=1.0, top_k=2)
    assert set(picks.tolist()) == {0, 4}
    assert abs((picks == 4).mean() - 1 / (1 + np.exp(-1.0))) < 0.03  # softmax over the two kept
    p = softmax(logits[:1])[0]                                         # probs 3.0 -> .64, 2.0 -> .24
    picks = sample(logits, rng, temperature=1.0, top_p=p[4] + 0.01)
    assert set(picks.tolist()) == {0, 4}
    assert (sample(logits, rng, temperature=1.0, top_p=0.1) == 4).all()
    assert (sample(logits, rng, temperature=0.0, top_k=3) == 4).all()
    picks = sample(logits, rng, temperature=1.0)
    assert set(picks.tolist()) == {0, 1, 2, 3, 4}
