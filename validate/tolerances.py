"""Every parity tolerance, stated once. Tests, `make validate` and benchmarks read them from here."""

# fp32: max |ORT logit - reference logit| <= LOGIT_RTOL * max |reference logit|, over every valid position.
LOGIT_RTOL = 1e-4
# greedy decoding after the prefill must give identical tokens for this many steps.
GREEDY_STEPS = 64
# K=full reference vs HF transformers (both PyTorch, fp32): the same relative bound.
HF_LOGIT_RTOL = 1e-4


def within(max_abs_diff: float, max_abs_ref: float, rtol: float = LOGIT_RTOL) -> bool:
    return max_abs_diff <= rtol * max_abs_ref
