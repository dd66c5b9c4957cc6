"""Calibration statistics whole-model against layer by layer: peak memory, time, and whether they are the same.

    python -m benchmarks.streamed_calibration --model DIR [--calib FILE] [--tokens 16384] [--window 1024]

DIR is a local HF directory with safetensors (layer streaming reads nothing else; a GGUF model can be written as
one with `--from-gguf FILE`, which loads it through transformers and saves it to DIR first). Each way runs in a
fresh process of its own, so each peak resident memory (ru_maxrss) is that way's alone: the whole model loaded
and its compact decoder built (`exporter/model/fold.build_decoder`, then `calib/capture.capture`), against the
skeleton with one layer's weights at a time (`model/stream.LayerStream`, `capture_streamed`). The statistics of
both (every (layer, tap) covariance of the export's taps) are compared: the largest absolute difference of any
sum, and whether all are bit-identical.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

DEFAULT_CALIB = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data",
                             "wikitext-103-valid.tokens.txt")


def child(way: str, model: str, calib: str, tokens: int, window: int, out: str) -> None:
    """One way, in this process: fill the export's accumulators, save them, print time and peak RSS as JSON."""
    import torch
    from safetensors.torch import save_file

    from exporter.calib.capture import capture, capture_streamed
    from exporter.calib.statistics import kv_accumulators
    from exporter.calib.text import token_windows
    from exporter.calib.tokens import sink_token_id
    from exporter.model.config import from_hf
    from transformers import AutoConfig, AutoTokenizer
    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(model)
    cfg = from_hf(AutoConfig.from_pretrained(model))
    windows = token_windows(tok, calib, window, tokens, sink_token_id(tok, "auto"))
    accs = kv_accumulators(cfg)
    if way == "whole":
        from exporter.model.fold import build_decoder
        from exporter.model.load import load
        capture(build_decoder(load(model).model), windows, accs, progress=False)
    else:
        from exporter.model.stream import LayerStream
        capture_streamed(LayerStream(model), windows, accs, progress=False)
    tensors = {f"{i}.{tap}.{part}": (torch.tensor([a.n]) if part == "n" else getattr(a, part))
               for (i, tap), a in accs.items() for part in ("n", "sum", "outer")}
    save_file(tensors, out)
    print(json.dumps({"way": way, "seconds": time.time() - t0,
                      "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20}))


def write_safetensors_copy(gguf: str, directory: str) -> None:
    """The GGUF's model as an HF directory with one model.safetensors (float32, as transformers dequantized it):
    transformers' save_pretrained refuses a model it loaded from GGUF."""
    from safetensors.torch import save_file

    from exporter.model.load import load
    loaded = load(gguf)
    hf = loaded.model
    state = {k: v.contiguous() for k, v in hf.state_dict().items()}
    if getattr(hf.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)                    # the same tensor as the embeddings
    os.makedirs(directory)
    save_file(state, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
    config = hf.config.to_dict()
    config.pop("quantization_config", None)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    loaded.tokenizer.save_pretrained(directory)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.streamed_calibration", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a local HF directory with safetensors")
    p.add_argument("--from-gguf", default=None, help="write this GGUF's model to --model first")
    p.add_argument("--calib", default=DEFAULT_CALIB)
    p.add_argument("--tokens", type=int, default=16384)
    p.add_argument("--window", type=int, default=1024)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        child(a.child, a.model, a.calib, a.tokens, a.window, a.out)
        return 0
    if a.from_gguf and not os.path.isdir(a.model):
        write_safetensors_copy(a.from_gguf, a.model)
    from safetensors.torch import load_file
    rows, stats = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for way in ("whole", "streamed"):
            out = os.path.join(tmp, f"{way}.safetensors")
            done = subprocess.run([sys.executable, "-m", "benchmarks.streamed_calibration", "--model", a.model,
                                   "--calib", a.calib, "--tokens", str(a.tokens), "--window", str(a.window),
                                   "--child", way, "--out", out], capture_output=True, text=True)
            if done.returncode:
                print(done.stderr[-2000:], file=sys.stderr)
                return 1
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            stats[way] = load_file(out)
    whole, streamed = stats["whole"], stats["streamed"]
    diff = max((whole[k].double() - streamed[k].double()).abs().max().item() for k in whole)
    identical = all(whole[k].equal(streamed[k]) for k in whole)
    print(f"model {a.model}, {a.tokens} calibration tokens in windows of {a.window}\n")
    print("| way | seconds | peak RSS (GiB) |\n| --- | --- | --- |")
    for r in rows:
        print(f"| {r['way']} | {r['seconds']:.1f} | {r['peak_rss_gib']:.2f} |")
    print(f"\nstatistics: {len(whole)} tensors, largest absolute difference {diff:.3g}, "
          f"{'bit-identical' if identical else 'NOT identical'}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
