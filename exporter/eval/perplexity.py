"""What compression costs, measured: perplexity, KL(original || compressed) and top-1 agreement on token windows.

The one scoring loop of the project. `make validate` (ONNX Runtime against the HF model), K=auto's held-out
search, the benchmarks and `make analyze` all call it, each handing in how it gets a window's logits:

    nll(decoder, windows, codec)           summed next-token NLL of the PyTorch decoder (optionally coded)
    measure(original, compressed, windows) perplexity of both sides, KL and top-1 over the same windows

A window is [sink] + tokens (calib/text.py); every token after the sink is predicted, the sink never scored.
Per token the arithmetic is float32 (log-softmax is stable there), sums are float64:

    NLL = -sum_t log p(x_t | x_<t)      KL = sum_t sum_v p_o(v) (log p_o(v) - log p_c(v))
    perplexity = exp(NLL / tokens)

Entry point: `nll`, `perplexity`, `measure` -> Quality.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm


def decoder_logits(decoder, ids: list[int]) -> torch.Tensor:
    """The compact decoder's logits (T, V) for one window run as a prefill from an empty cache."""
    x = torch.tensor([ids])                                                            # (1, T)
    return decoder(x, torch.ones_like(x), torch.arange(x.shape[1])[None], *decoder.empty_past(1))[0][0]


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Summed NLL of targets (N,) under logits (N, V)."""
    lp = torch.log_softmax(logits.float(), dim=-1)                                      # (N, V)
    return -lp.gather(1, targets[:, None]).double().sum().item()


def kl_rows(ref_logprobs: torch.Tensor, cmp_logprobs: torch.Tensor) -> torch.Tensor:
    """KL(ref || cmp) per row of log-probabilities (..., V) -> (...)."""
    return (ref_logprobs.exp() * (ref_logprobs - cmp_logprobs)).sum(-1)


def nll(decoder, windows: list[list[int]], codec=None, desc: str = "perplexity",
        progress: bool = True) -> tuple[float, int]:
    """Summed next-token NLL and token count over the windows (the sink at position 0 is never scored).
    codec(layer) -> an Attention.codec hook for that layer, or None."""
    total, n = 0.0, 0
    for i, blk in enumerate(decoder.blocks):
        blk.attn.codec = codec(i) if codec else None
    try:
        with torch.no_grad():
            for ids in tqdm(windows, desc=desc, unit="window", leave=False, disable=not progress):
                total += token_nll(decoder_logits(decoder, ids)[:-1], torch.tensor(ids[1:]))
                n += len(ids) - 1
    finally:
        for blk in decoder.blocks:
            blk.attn.codec = None
    return total, n


def perplexity(nll_n: tuple[float, int]) -> float:
    return math.exp(nll_n[0] / nll_n[1])


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
    """Both logits (N, V) predicting targets (N,): (nll orig, nll comp, KL sum, top-1 agreements), summed."""
    lp_o = torch.log_softmax(orig_logits.float(), dim=-1)                          # (N, V)
    lp_c = torch.log_softmax(comp_logits.float(), dim=-1)
    nll_o = -lp_o.gather(1, targets[:, None]).double().sum().item()
    nll_c = -lp_c.gather(1, targets[:, None]).double().sum().item()
    agree = (lp_o.argmax(-1) == lp_c.argmax(-1)).sum().item()
    kl = kl_rows(lp_o, lp_c).double().sum().item()
    return nll_o, nll_c, kl, agree


def hf_logits(hf, ids: list[int]) -> torch.Tensor:
    """The original HF model's logits (T-1, V) for one window, predicting ids[1:]."""
    x = torch.tensor([ids])                                                # (1, T)
    with torch.no_grad():
        return hf(input_ids=x, attention_mask=torch.ones_like(x),
                  position_ids=torch.arange(x.shape[1])[None]).logits[0, :-1]


def measure(original, compressed, windows: list[list[int]], has_sink: bool, eval_file: str, window: int,
            sink_token: str | None) -> Quality:
    """Score every window with both sides. compressed(ids) -> logits (T-1, V) predicting ids[1:];
    original: the HF model, or a function (window index, ids) -> logits (T-1, V) when the caller has them."""
    get_original = original if callable(original) and not isinstance(original, torch.nn.Module) else \
        (lambda i, ids: hf_logits(original, ids))
    tot = [0.0, 0.0, 0.0, 0.0]
    n = 0
    for i, ids in enumerate(tqdm(windows, desc="perplexity", unit="window")):
        targets = torch.tensor(ids[1:])
        for j, v in enumerate(window_stats(get_original(i, ids), compressed(ids), targets)):
            tot[j] += v
        n += len(targets)
    ppl_o, ppl_c = math.exp(tot[0] / n), math.exp(tot[1] / n)
    return Quality(eval_file, window, n, sink_token if has_sink else None, ppl_o, ppl_c,
                   100 * (ppl_c / ppl_o - 1), tot[2] / n, tot[3] / n)
