"""report.json and report.md in the export directory, written atomically."""
from __future__ import annotations

import json
import os

from .tolerances import QUANTIZED_KL_FRACTION, ROUNDING_FLOOR_FACTOR


def _write(path: str, text: str) -> None:
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def write_reports(export_dir: str, report: dict) -> None:
    _write(os.path.join(export_dir, "report.json"), json.dumps(report, indent=1, sort_keys=True) + "\n")
    _write(os.path.join(export_dir, "report.md"), markdown(report))


def markdown(r: dict) -> str:
    p, q, kv = r["parity"], r.get("quality"), r["kv"]
    lines = [f"# Validation of `{r['export']}`", "",
             f"Model {r['model']}, key mode {r['key_mode']}, ranks key {r['ranks_summary']['key']} / "
             f"value {r['ranks_summary']['value']}. Command: `{r['command']}`", "",
             f"## Parity (ONNX Runtime {kv['dtype']} vs PyTorch reference fp32)", "",
             "| prefill max abs diff | decode max abs diff | max abs ref logit | relative | tolerance | greedy argmax agrees | result |",
             "| --- | --- | --- | --- | --- | --- | --- |",
             f"| {p['prefill_max_abs_diff']:.3g} | {p['decode_max_abs_diff']:.3g} | {p['max_abs_ref_logit']:.3g} | "
             f"{p['rel_diff']:.3g} | {p['tolerance']:g} | {p['greedy_agreement']}/{p['decode_steps'] + 1} steps"
             f"{'' if p['greedy_required'] else ' (reported, not required)'} (batch "
             f"{p['batch']}, prompts {p['prompt_lengths']}) | {'PASS' if p['passed'] else 'FAIL'} |", ""]
    if p.get("quantized"):
        lines += [f"Quantized cache: held to the mean KL(reference ‖ ORT) instead, {p['kl_mean']:.2g} nats, next to "
                  f"what the quantization changes, KL(original ‖ reference) {p['kl_cost']:.2g} on the prefill, "
                  f"and what float32 rounding alone changes, KL(reference ‖ reference in float64) "
                  f"{p['kl_floor']:.2g} on the same steps: within {QUANTIZED_KL_FRACTION:g} of the first or "
                  f"{ROUNDING_FLOOR_FACTOR:g} x the second passes "
                  "(validate/tolerances.py, quantized_kl_ok, says why logits cannot match to the float "
                  "tolerance).", ""]
    if q:
        lines += ["## Cost of compression (original HF model vs this export in ONNX Runtime)", "",
                  f"Text `{os.path.basename(q['eval_file'])}`, windows of {q['window']} tokens, {q['tokens_scored']} "
                  f"tokens scored, prefix {q['sink_prefix']!r} (not scored).", "",
                  "| perplexity original | perplexity compressed | increase | KL(orig‖comp) nats/token | top-1 agreement |",
                  "| --- | --- | --- | --- | --- |",
                  f"| {q['ppl_original']:.3f} | {q['ppl_compressed']:.3f} | {q['ppl_increase_pct']:+.2f} % | "
                  f"{q['kl_mean']:.4f} | {100 * q['top1_agreement']:.2f} % |", ""]
    lines += ["## KV cache", "",
              "| | bytes per token | ratio |", "| --- | --- | --- |",
              f"| original, fp32 | {kv['original_fp32']} | 1.00x |",
              f"| original, fp16 | {kv['original_fp16']} | {kv['original_fp32'] / kv['original_fp16']:.2f}x |",
              f"| this export ({kv['dtype']}) | {kv['export']} | {kv['original_fp32'] / kv['export']:.2f}x |", "",
              f"Against the fp16 cache: {kv['original_fp16'] / kv['export']:.2f}x fewer bytes. Measured from the ONNX "
              f"outputs (growth of the present tensors over one step): {kv.get('measured', 'not measured')} bytes "
              "per token.", ""]
    if kv.get("float_window"):
        lines += [f"With the float window of {kv['float_window']} tokens (exact float16 latents of the newest "
                  f"{kv['float_window'] - 1} beside the codes), the whole cache at {kv['context']} tokens: "
                  f"{kv['per_token_at_context']:.1f} bytes per token measured on the outputs "
                  f"({kv['context_bytes_measured']} in all; estimated {kv['context_bytes_estimated']}), "
                  f"{kv['original_fp16'] / kv['per_token_at_context']:.2f}x fewer than the fp16 cache.", ""]
    if r.get("rate_distortion"):
        lines += ["## Quantized cache against the rate-distortion limit", "",
                  "Per tensor: stored bits per token (codes and scales), its total variance, the squared error "
                  "of the codec on the eval text, and the Gaussian rate-distortion bound of its covariance at "
                  "those bits (validate/rate_distortion.py).", "",
                  "| layer | kind | bits/token | variance | achieved MSE | bound MSE | achieved / bound |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {t['layer']} | {t['kind']} | {t['bits_per_token']} | {t['variance']:.4g} | "
                  f"{t['achieved_mse']:.4g} | {t['bound_mse']:.4g} | {t['ratio']:.2f} |" for t in r["rate_distortion"]]
        lines.append("")
    if r.get("budget"):
        b = r["budget"]
        lines += [f"Quality budget: perplexity increase <= {b['max_ppl_increase_pct']} %: "
                  f"{'within' if b['passed'] else 'EXCEEDED'}.", ""]
    return "\n".join(lines)
