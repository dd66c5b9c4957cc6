"""The one scoring loop: NLL of known distributions, and a model measured against itself costs nothing."""
from __future__ import annotations

import math

import torch

from exporter.eval.perplexity import kl_rows, measure, perplexity, token_nll, window_stats


def test_token_nll_of_a_uniform_distribution_is_log_vocab():
    logits = torch.zeros(7, 50)
    assert math.isclose(token_nll(logits, torch.arange(7)), 7 * math.log(50), rel_tol=1e-6)
    assert math.isclose(perplexity((7 * math.log(50), 7)), 50.0, rel_tol=1e-6)


def test_kl_is_zero_for_equal_and_positive_for_different_distributions():
    p = torch.log_softmax(torch.randn(4, 10, generator=torch.Generator().manual_seed(0)), -1)
    assert torch.allclose(kl_rows(p, p), torch.zeros(4), atol=1e-7)
    assert (kl_rows(p, torch.log_softmax(torch.zeros(4, 10), -1)) > 0).all()


def test_a_model_against_itself_has_no_cost():
    g = torch.Generator().manual_seed(0)
    table = {}
    logits = lambda ids: table.setdefault(tuple(ids), torch.randn(len(ids) - 1, 30, generator=g))
    windows = [[1, 5, 7, 9], [1, 3, 3]]
    q = measure(lambda i, ids: logits(ids), logits, windows, True, "text", 3, "<s>")
    assert q.tokens_scored == 5 and q.ppl_increase_pct == 0 and q.kl_mean == 0 and q.top1_agreement == 1
    nll_o, nll_c, kl, agree = window_stats(logits([1, 5, 7, 9]), logits([1, 5, 7, 9]), torch.tensor([5, 7, 9]))
    assert nll_o == nll_c and agree == 3
