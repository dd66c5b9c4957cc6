"""Every parity tolerance, stated once. Tests, `make validate` and benchmarks read them from here."""

# fp32: max |ORT logit - reference logit| <= LOGIT_RTOL * max |reference logit|, over every valid position.
LOGIT_RTOL = 1e-4
# float16 exports (weights, activations, cache; norms/RoPE/softmax float32) against the float32 reference:
# float16 keeps ~3 decimal digits and 30 layers accumulate rounding (tiny models measured ~2e-3).
LOGIT_RTOL_FLOAT16 = 1e-2
# greedy decoding after the prefill must give identical tokens for this many steps (float32 exports; for
# float16 the agreement is reported, not required: a near-tie between two tokens may flip on rounding).
GREEDY_STEPS = 64
# quantized caches (exporter/quant.py): the mean KL(reference || ORT) of the next-token distributions (nats per
# position, parity prompts and decode steps) must stay within this fraction of the mean KL(original || reference)
# on the prefill, what the quantization itself changes. Logits cannot match to LOGIT_RTOL: a code flips where a
# latent lies within float rounding of a step boundary (ORT's and PyTorch's matmuls round differently), and a
# flipped code moves the next layers' latents by a whole step, so the two take different, equally valid
# quantization paths (SmolLM2 at 4x: 57 % of token rows differ in some byte, max logit difference 3.7 % of the
# largest; KL 1.1e-3 against a cost of 0.028 at 4x, 3.4e-3 / 0.13 at 8x, 5.3e-3 / 0.51 at 16x, i.e. 4 %, 3 %,
# 1 %; tiny test models: no flips, 1e-12). Greedy agreement is reported, not required.
QUANTIZED_KL_FRACTION = 0.1
# A flipped code's effect does not shrink with the cost: where the quantization costs little on the parity prompts
# (a codec calibrated on the text the prompts come from), the flips float32 rounding causes can exceed a tenth of
# it. So end to end the KL may instead be up to ROUNDING_FLOOR_FACTOR x the floor: the mean KL(reference ||
# the same reference in float64) on the same steps, what float32 rounding alone changes in this quantization path
# (ORT and the reference each round in float32, each flipping its own codes, hence a factor above 2).
ROUNDING_FLOOR_FACTOR = 4.0
# K=full reference vs HF transformers (both PyTorch, fp32): the same relative bound.
HF_LOGIT_RTOL = 1e-4


def within(max_abs_diff: float, max_abs_ref: float, rtol: float = LOGIT_RTOL) -> bool:
    return max_abs_diff <= rtol * max_abs_ref


def quantized_kl_ok(kl: float, cost: float, floor: float | None = None) -> bool:
    """A quantized cache's parity: KL(reference || ORT) within a fraction of what the compression costs, or within
    a few times what float32 rounding alone changes (floor; None where not measured)."""
    return kl <= QUANTIZED_KL_FRACTION * cost or (floor is not None and kl <= ROUNDING_FLOOR_FACTOR * floor)


def logit_rtol(dtype: str) -> float:
    """The parity tolerance for an export whose cache/activations have this dtype."""
    return LOGIT_RTOL_FLOAT16 if dtype == "float16" else LOGIT_RTOL


def greedy_required(dtype: str) -> bool:
    """Whether parity requires identical greedy tokens (float32) or only reports their agreement (float16)."""
    return dtype != "float16"
