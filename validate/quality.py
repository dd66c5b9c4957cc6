"""What compression costs, measured: perplexity, KL(original || compressed), top-1 agreement, KV bytes.

The compressed side is the ONNX export run by ONNX Runtime; the original side is the HF model in PyTorch.
Both see the same windows (the shared/data convention: the text tokenized as one string, non-overlapping
windows of 2048 tokens, 32,768 scored by default), each prefixed with the export's sink token, which is
never scored: every token of a window is predicted, the first one from the sink.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, asdict

import numpy as np
import torch
from tqdm.auto import tqdm


@dataclass
class Quality:
    eval_file: str
    window: int
    tokens_scored: int
    sink_prefix: str | None
    ppl_original: float
    ppl_compressed: float
    ppl_increase_pct: float
    kl_mean: float              # nats per token, KL(original || compressed)
    top1_agreement: float       # fraction of positions whose argmax tokens agree

    def to_json(self) -> dict:
        return asdict(self)


def window_stats(orig_logits: torch.Tensor, comp_logits: torch.Tensor, targets: torch.Tensor):
    """Both logits (N, V) predicting targets (N,): (nll orig, nll comp, KL sum, top-1 agreements), summed.

    float32 per token (log-softmax is stable there), sums in float64."""
    lp_o = torch.log_softmax(orig_logits.float(), dim=-1)                          # (N, V)
    lp_c = torch.log_softmax(comp_logits.float(), dim=-1)
    nll_o = -lp_o.gather(1, targets[:, None]).double().sum().item()
    nll_c = -lp_c.gather(1, targets[:, None]).double().sum().item()
    agree = (lp_o.argmax(-1) == lp_c.argmax(-1)).sum().item()
    kl = (lp_o.exp() * (lp_o - lp_c)).sum(-1).double().sum().item()
    return nll_o, nll_c, kl, agree


def hf_logits(hf, ids: list[int]) -> torch.Tensor:
    """The original model's logits (T-1, V) for one window, predicting ids[1:]."""
    x = torch.tensor([ids])                                                # (1, T)
    with torch.no_grad():
        return hf(input_ids=x, attention_mask=torch.ones_like(x),
                  position_ids=torch.arange(x.shape[1])[None]).logits[0, :-1]


def ort_logits(ort_model, ids: list[int]) -> torch.Tensor:
    """The export's logits (T-1, V) for one window, run by ONNX Runtime as one prefill."""
    x = np.array([ids], np.int64)                                          # (1, T)
    out, _ = ort_model(x, np.ones_like(x), np.arange(x.shape[1])[None], ort_model.empty_past(1))
    return torch.from_numpy(out[0, :-1])


def measure(original, ort_model, windows: list[list[int]], has_sink: bool, eval_file: str, window: int,
            sink_token: str | None) -> Quality:
    """Score every window (as from exporter.text.token_windows) with both models. `original` is the HF model,
    or a function (window index, ids) -> logits (T-1, V) when the caller has them already."""
    get_original = original if callable(original) and not isinstance(original, torch.nn.Module) else \
        (lambda i, ids: hf_logits(original, ids))
    tot = np.zeros(4)
    n = 0
    for i, ids in enumerate(tqdm(windows, desc="perplexity", unit="window")):
        targets = torch.tensor(ids[1:])
        tot += window_stats(get_original(i, ids), ort_logits(ort_model, ids), targets)
        n += len(targets)
    ppl_o, ppl_c = math.exp(tot[0] / n), math.exp(tot[1] / n)
    return Quality(eval_file, window, n, sink_token if has_sink else None, ppl_o, ppl_c,
                   100 * (ppl_c / ppl_o - 1), tot[2] / n, tot[3] / n)
