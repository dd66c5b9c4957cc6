"""Held-out KL curves of projector training at several step sizes: how the default (exporter/train.py) was chosen.

    python -m benchmarks.train_curves [--ranks 96/96] [--mode pre-rope] [--lrs 0.01,0.003,0.001,0.0003] [--steps 16]
                                      [--head-decode 1] [--schedule constant] [--train-tokens N]

Output-aware projectors at the given ranks, then training with the KL loss, evaluated every 4 steps on the
held-out calibration slice, no early stopping. Prints one line per step size: [(step, held-out KL), ...].
"""
from __future__ import annotations

import argparse
import sys

from exporter.job.job import ExportJob
from exporter.job.stages import fit_projectors
from exporter.options import ExportOptions, TrainOptions, per_layer


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.train_curves", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None)
    p.add_argument("--ranks", default="96/96", help="K_KEY/K_VALUE")
    p.add_argument("--mode", default="pre-rope")
    p.add_argument("--lrs", default="0.01,0.003,0.001,0.0003")
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--head-decode", default="1", help="values decoded per query head: 1, 0, or both (0,1)")
    p.add_argument("--schedule", default="constant", help="constant or cosine (decays to 0 at --steps)")
    p.add_argument("--train-tokens", type=int, default=None,
                   help="training tokens from the start of the calibration file (default: the calibration tokens)")
    a = p.parse_args(argv)
    job = ExportJob.start(ExportOptions(model=a.model))
    L = job.config.num_layers
    kr, vr = (int(x) for x in a.ranks.split("/"))
    for lr in (float(x) for x in a.lrs.split(",")):
        for per_head in (x == "1" for x in a.head_decode.split(",")):
            t = TrainOptions(lr=lr, max_steps=a.steps, eval_every=4, patience=a.steps, head_decode=per_head,
                             schedule=a.schedule, tokens=a.train_tokens)
            proj = fit_projectors(job, per_layer(kr, L), per_layer(vr, L), "trained", a.mode, t)
            curve = [(c["step"], round(c["heldout"], 4)) for c in proj.info["training"]["curve"]]
            print(f"{a.mode} K={a.ranks} lr={lr:g} head_decode={int(per_head)}: {curve}  "
                  f"({proj.info['training']['seconds']} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
