"""python -m exporter: export a causal LM to ONNX with a k-dimensional KV cache (see README).

The command line of exporter/job/run.py:run_export; every flag is a field of exporter/options.py. With none of
--k, --k-key, --k-value, --cache, --kv-dtype, --method, --projectors (and no --quant, --dtype float16) it builds
the default export: K=full, an int8 cache that onnxruntime's fused attention writes and reads (options.DEFAULT_EXPORT).

Entry point: `main(argv)`; every flag is a field of exporter/options.py (`options_from(args)`).
"""
from __future__ import annotations

import argparse
import sys

from .errors import cli_exit
from .options import (ALLOCATIONS, DEFAULT_KEY_MODE, KV_DTYPES, KV_KERNELS, KV_ROTATIONS, LOSSES, METHODS, SHAPING,
                      WINDOW_CACHES, AutoOptions, ExportOptions, QuantOptions, TrainOptions, parse_percent,
                      with_default_export)


def main(argv=None) -> int:
    return cli_exit(export, parser().parse_args(argv))


def parser() -> argparse.ArgumentParser:
    """The exporter's flags, their defaults ExportOptions' (None: settled once the model is read)."""
    d = ExportOptions()
    p = argparse.ArgumentParser(prog="python -m exporter", description=__doc__)
    p.add_argument("--model", default=None, help="HF hub id, local HF directory or .gguf file (default: SmolLM2)")
    p.add_argument("--k", default=None, help="latent dims per layer for keys and values, 'full', or 'auto' "
                                           "(per-layer ranks from --budget or --max-ppl-increase)")
    p.add_argument("--k-key", default=None, help="override K for keys")
    p.add_argument("--k-value", default=None, help="override K for values")
    p.add_argument("--key-mode", default=DEFAULT_KEY_MODE, help="pre-rope | post-rope")
    p.add_argument("--calib", default=d.calib, help="calibration text file, or a mix taking turns of 2048 "
                   "tokens from each: a.txt,b.txt@0.5 (b from half of its tokens on)")
    p.add_argument("--calib-tokens", type=int, default=d.calib_tokens)
    p.add_argument("--window", type=int, default=d.window, help="calibration window length in tokens")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--out", default=None, help="export directory (default build/<model>-k<K>-<mode>)")
    p.add_argument("--projectors", default=None, help="use this projector file instead of fitting PCA")
    p.add_argument("--sink", default="auto", help="sink token at position 0: auto | none | TOKEN | ID")
    p.add_argument("--dtype", default=d.dtype, choices=("float32", "float16"),
                   help="float16: weights, activations and KV cache in float16, norms/RoPE/softmax in float32 "
                        "(for GPUs; onnxruntime's CPU kernels run it, slowly)")
    p.add_argument("--cache", default=None, choices=("concat", "shared-buffer"),
                   help="shared-buffer: attention through onnxruntime's GroupQueryAttention, cache updated in "
                        "place in a max-length buffer (full or post-rope, K_KEY == K_VALUE; no left padding)")
    p.add_argument("--kv-dtype", default=None, choices=KV_DTYPES,
                   help="int8: onnxruntime's fused attention (CACHE=shared-buffer) stores int8 codes of the cache and "
                        "reads them itself; static per-channel steps fitted on calibration text (K=full)")
    p.add_argument("--kv-kernel", default=None, choices=KV_KERNELS,
                   help="with --kv-dtype: the attention kernel that reads the int8 codes: onnxruntime's "
                        "GroupQueryAttention, or ours (codes: each cached row read once per KV head; CPU, built by "
                        "`make setup`)")
    p.add_argument("--kv-rotation", default=d.kv_rotation, choices=KV_ROTATIONS,
                   help="with --kv-dtype: rotate each head's keys and values first (hadamard), or not (none)")
    p.add_argument("--window-cache", default=d.window_cache, choices=WINDOW_CACHES,
                   help="sliding-window layers: bounded keeps only the window (concat cache); full keeps every token "
                        "and masks to the window (what onnxruntime-genai and the fused op's shared buffer take)")
    p.add_argument("--stream", default=None, action=argparse.BooleanOptionalAction,
                   help="read and export the model one layer at a time, weights in model.onnx.data (default: when "
                        "a local safetensors model's float32 weights pass 2 GiB; K=auto, METHOD=trained and KV_DTYPE need the "
                        "whole model)")
    p.add_argument("--method", default=None, choices=METHODS,
                   help="pca: plain PCA; output-aware: PCA in the metric of attention scores and the output "
                        "projection; trained: output-aware, then fine-tuned on the calibration text "
                        "(default: pca, or output-aware with --k auto)")
    u = d.auto
    p.add_argument("--budget", type=float, default=None, help="K=auto: KV bytes per token to fit in")
    p.add_argument("--max-ppl-increase", default=None,
                   help="K=auto: the fewest bytes whose held-out perplexity increase stays within this, e.g. 2%%")
    p.add_argument("--granularity", type=int, default=u.granularity, help="K=auto: ranks in steps of this")
    p.add_argument("--tie-ranks", action="store_true", help="K=auto: equal key and value ranks in each layer")
    p.add_argument("--auto-heldout-tokens", type=int, default=u.heldout_tokens,
                   help="K=auto: held-out tokens that score each candidate, in windows of 2048 spread over the "
                        "calibration file after the calibration tokens")
    p.add_argument("--auto-margin", type=float, default=u.margin,
                   help="K=auto: standard errors (over held-out windows) added to the increase before it is "
                        "held to MAX_PPL_INCREASE")
    p.add_argument("--sensitivity", default=u.sensitivity, choices=("measured", "metric"),
                   help="K=auto: KL per unit of error from a probe per tensor (measured) or alike for all")
    t = d.train
    p.add_argument("--train-loss", default=t.loss, choices=LOSSES, help="what training minimises (trained)")
    p.add_argument("--train-steps", type=int, default=t.max_steps, help="most training steps (one window each)")
    p.add_argument("--train-lr", type=float, default=t.lr, help="step size relative to each matrix's RMS")
    p.add_argument("--train-window", type=int, default=t.window, help="tokens per training window")
    p.add_argument("--train-tokens", type=int, default=t.tokens,
                   help="training tokens from the start of the calibration file (default: the calibration tokens); "
                        "more tokens overfit less")
    p.add_argument("--train-schedule", default=t.schedule, choices=("constant", "cosine"),
                   help="step size over training: constant, or cosine decay to 0 at the last step")
    q = d.quant
    p.add_argument("--quant", default=None, choices=ALLOCATIONS,
                   help="quantized latents in the cache: bits per component by reverse water-filling on the "
                        "calibration spectrum (spectral) or the same for all (uniform); K=full keeps the "
                        "full-rank transform (--method raw: no transform, plain KV quantization)")
    p.add_argument("--quant-ratio", type=float, default=q.ratio,
                   help="times fewer KV bytes per token than a float16 cache, scales counted")
    p.add_argument("--quant-scales", default=q.key_scales,
                   help="static (steps from calibration, nothing stored per token) or token (a scale byte per "
                        "token and group); 'KEY,VALUE' sets them apart, e.g. static,token")
    p.add_argument("--quant-group", type=int, default=q.group, help="components per token scale")
    p.add_argument("--quant-weights", default=q.weights, choices=("output", "variance"),
                   help="what the bits minimise: error in the output-aware metric, or in the latents")
    p.add_argument("--quant-sensitivity", default=q.sensitivity, choices=("measured", "none"),
                   help="spectral bits: weigh each tensor by its KL per unit of error, probed one tensor at a time on "
                        "calibration text (measured), or not (none)")
    p.add_argument("--quant-window", type=int, default=q.float_window,
                   help="a float window: the exact latents of the newest W-1 tokens in float16 beside the codes, so "
                        "a query reads its last W tokens exact (KIVI's residual); 0: none; default: 16 for "
                        "--quant spectral where it fits (exporter/quant/window.py), else none")
    p.add_argument("--quant-window-context", type=int, default=q.window_context,
                   help="the context length the window's bytes are counted over in --quant-ratio")
    p.add_argument("--trust-remote-code", action="store_true")
    return p


def export(a: argparse.Namespace) -> None:
    """Check the flags, then run the export (a bad flag is a UserError before torch is imported)."""
    opts = options_from(a)
    from .job.run import run_export     # torch and the model code load only when there is work to do
    run_export(opts)


def options_from(a: argparse.Namespace) -> ExportOptions:
    """The ExportOptions the flags ask for: the default export unless one of SHAPING was given."""
    d = ExportOptions()
    key_scales, _, value_scales = a.quant_scales.partition(",")
    given = {name for name in SHAPING + ("kv_kernel",) if getattr(a, name, None) is not None}
    opts = ExportOptions(model=a.model or None, k=a.k or d.k, k_key=a.k_key or None, k_value=a.k_value or None,
                         key_mode=a.key_mode, calib=a.calib or d.calib, calib_tokens=a.calib_tokens,
                         window=a.window, seed=a.seed, out=a.out, projectors=a.projectors, sink=a.sink,
                         trust_remote_code=a.trust_remote_code, dtype=a.dtype,
                         cache=a.cache or d.cache, kv_dtype=a.kv_dtype, kv_rotation=a.kv_rotation, kv_kernel=a.kv_kernel or d.kv_kernel,
                         method=a.method,
                         window_cache=a.window_cache, stream=a.stream,
                         auto=AutoOptions(budget_bytes=a.budget, granularity=a.granularity, tie=a.tie_ranks,
                                          max_ppl_increase=parse_percent(a.max_ppl_increase)
                                          if a.max_ppl_increase else None, sensitivity=a.sensitivity,
                                          heldout_tokens=a.auto_heldout_tokens, margin=a.auto_margin),
                         train=TrainOptions(loss=a.train_loss, max_steps=a.train_steps, lr=a.train_lr,
                                            window=a.train_window, schedule=a.train_schedule, tokens=a.train_tokens,
                                            seed=a.seed),
                         quant=QuantOptions(allocation=a.quant, ratio=a.quant_ratio, key_scales=key_scales,
                                            value_scales=value_scales or key_scales, group=a.quant_group,
                                            weights=a.quant_weights, sensitivity=a.quant_sensitivity,
                                            float_window=a.quant_window, window_context=a.quant_window_context))
    return with_default_export(opts, given)


if __name__ == "__main__":
    sys.exit(main())
