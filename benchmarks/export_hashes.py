"""Same inputs, same bytes: sha256 of every file an export writes, for the tiny models at many settings.

Run it on two checkouts and diff the output to prove a change moved no byte (a refactor, a dependency bump):

    python -m benchmarks.export_hashes --models /tmp/tiny > a.txt     (in checkout A; likewise B), diff a.txt b.txt

Give both the same --models: model.onnx and export.json name the model's path.

The tiny models (validate/tiny_models.py, seed 0) are written once under --models; every export runs through the
CLI, `python -m exporter`, whose flags stay stable across refactors, with --out as its working directory (so its
build/latest and statistics cache stay there). `projectors.json` of trained exports holds
the training's wall time, so it differs between runs by design; the tensors do not.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys

SETTINGS = {
    "full": "--k full",
    "k8pre": "--k 8 --key-mode pre-rope",
    "k8post": "--k 8 --key-mode post-rope",
    "k8oa": "--k 8 --method output-aware",
    "kk8v16": "--k-key 8 --k-value 16",
    "qspec4": "--k full --quant spectral --quant-ratio 4",
    "qspec8tok": "--k full --quant spectral --quant-ratio 8 --quant-scales static,token",
    "qraw": "--k full --method raw --quant uniform --quant-ratio 4",
    "q8oa": "--k 8 --method output-aware --quant uniform --quant-ratio 4",
    "shared": "--k 8 --key-mode post-rope --cache shared-buffer",
    "fp16": "--k 8 --dtype float16",
    "trained": "--k 8 --method trained --train-steps 4",
    "auto": "--k auto --budget 2000 --auto-heldout-tokens 1024",
}
LLAMA_ONLY = ("trained", "auto", "qspec8tok")        # the slow ones, once
FILES = ("model.onnx", "projectors.safetensors", "export.json", "projectors.json")


def sha(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.export_hashes", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="build/hashes", help="where the exports go (replaced)")
    p.add_argument("--models", default="build/tiny-models", help="where the tiny models are written once")
    p.add_argument("--archs", default="llama,qwen2,mistral,gpt2")
    a = p.parse_args(argv)
    from validate import tiny_models
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    a.out, a.models = os.path.abspath(a.out), os.path.abspath(a.models)
    os.makedirs(a.out, exist_ok=True)
    for arch in a.archs.split(","):
        if not os.path.isdir(os.path.join(a.models, arch)):
            tiny_models.make(arch, os.path.join(a.models, arch))
        for name, flags in SETTINGS.items():
            if (arch == "gpt2" and name == "k8post") or (arch != "llama" and name in LLAMA_ONLY):
                continue                       # GPT-2 has one key mode
            out = os.path.join(a.out, f"{arch}-{name}")
            subprocess.run(["rm", "-rf", out])
            cmd = [sys.executable, "-m", "exporter", "--model", os.path.join(a.models, arch), *flags.split(),
                   "--calib-tokens", "4096", "--window", "256", "--out", out]
            done = subprocess.run(cmd, capture_output=True, text=True, cwd=a.out,
                                  env={**os.environ, "PYTHONPATH": repo})
            if done.returncode:
                print(f"{arch}-{name} FAILED: {done.stderr.strip().splitlines()[-1]}")
                continue
            for f in FILES:
                if os.path.isfile(os.path.join(out, f)):
                    print(f"{arch}-{name} {f} {sha(os.path.join(out, f))}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
