"""python -m exporter: export a causal LM to ONNX with a k-dimensional KV cache (see README)."""
from __future__ import annotations

import argparse
import sys

from .errors import cli_exit
from .pipeline import DEFAULT_KEY_MODE, ExportOptions, run_export


def main(argv=None) -> int:
    d = ExportOptions()
    p = argparse.ArgumentParser(prog="python -m exporter", description=__doc__)
    p.add_argument("--model", default=None, help="HF hub id, local HF directory or .gguf file (default: SmolLM2)")
    p.add_argument("--k", default=d.k, help="latent dims per layer for keys and values, or 'full'")
    p.add_argument("--k-key", default=None, help="override K for keys")
    p.add_argument("--k-value", default=None, help="override K for values")
    p.add_argument("--key-mode", default=DEFAULT_KEY_MODE, help="pre-rope | post-rope")
    p.add_argument("--calib", default=d.calib, help="calibration text file")
    p.add_argument("--calib-tokens", type=int, default=d.calib_tokens)
    p.add_argument("--window", type=int, default=d.window, help="calibration window length in tokens")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--out", default=None, help="export directory (default build/<model>-k<K>-<mode>)")
    p.add_argument("--projectors", default=None, help="use this projector file instead of fitting PCA")
    p.add_argument("--sink", default="auto", help="sink token at position 0: auto | none | TOKEN | ID")
    p.add_argument("--dtype", default=d.dtype, choices=("float32", "float16"),
                   help="float16: weights, activations and KV cache in float16, norms/RoPE/softmax in float32 "
                        "(for GPUs; onnxruntime's CPU kernels run it, slowly)")
    p.add_argument("--cache", default=d.cache, choices=("concat", "shared-buffer"),
                   help="shared-buffer: attention through onnxruntime's GroupQueryAttention, cache updated in "
                        "place in a max-length buffer (full or post-rope, K_KEY == K_VALUE; no left padding)")
    p.add_argument("--trust-remote-code", action="store_true")
    a = p.parse_args(argv)
    opts = ExportOptions(model=a.model or None, k=a.k, k_key=a.k_key or None, k_value=a.k_value or None,
                         key_mode=a.key_mode, calib=a.calib or d.calib, calib_tokens=a.calib_tokens,
                         window=a.window, seed=a.seed, out=a.out, projectors=a.projectors, sink=a.sink,
                         trust_remote_code=a.trust_remote_code, dtype=a.dtype,
                         cache=a.cache)
    return cli_exit(run_export, opts)


if __name__ == "__main__":
    sys.exit(main())
