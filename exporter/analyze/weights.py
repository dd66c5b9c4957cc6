"""Weight spectra: per layer and matrix (attention q/k/v/o and the MLP), Df and k95 of the energies sigma^2 and the
energy kept at the probe ranks.

Entry points: `weight_matrices`, `weight_spectra`.
"""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..model.config import DecoderConfig
from ..model.weights import attention_weights, mlp_weights
from . import spectrum as S
from .threads import lapack_threads


def weight_matrices(hf, cfg: DecoderConfig, i: int) -> dict[str, torch.Tensor]:
    """Every attention and MLP weight matrix of layer i, [out, in]."""
    w = attention_weights(hf, cfg, i)
    out = {name: w[name] for name in ("q", "k", "v", "o")}
    if cfg.family == "gpt2":
        mlp = hf.transformer.h[i].mlp
        out.update(fc=mlp.c_fc.weight.detach().T, proj=mlp.c_proj.weight.detach().T)   # Conv1D stores [in, out]
    else:
        mlp = mlp_weights(hf.model.layers[i])
        out.update(gate=mlp["gate_proj"], up=mlp["up_proj"], down=mlp["down_proj"])
    return out


def weight_spectra(hf, cfg: DecoderConfig, probe_ranks, fraction: float) -> tuple[list[dict], dict]:
    """Per layer and matrix: shape, Df, k95 of the energy sigma^2, energy at the probe ranks. Also the singular
    values {matrix: [per layer]} for the plots."""
    rows, sigmas = [], {}
    with lapack_threads(1):
        for i in tqdm(range(cfg.num_layers), desc="weight spectra", unit="layer"):
            row = {"layer": i}
            for name, w in weight_matrices(hf, cfg, i).items():
                s = torch.linalg.svdvals(w.double())
                row[name] = {"shape": list(w.shape), **S.energy_summary(s, probe_ranks, sorted({0.95, fraction}))}
                sigmas.setdefault(name, []).append(s.numpy())
            rows.append(row)
    return rows, sigmas
