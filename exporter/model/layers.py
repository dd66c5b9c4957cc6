"""The decoder's small layers: RMSNorm, the two MLPs (Llama's SwiGLU or Gemma's GeGLU, GPT-2's GELU),
embeddings and LM head. Gemma's (1 + w) RMSNorm is this RMSNorm holding 1 + w (model/fold.py adds the one).

One module each, with HF's exact arithmetic so K=full matches the HF model to float rounding.

Entry point: `RMSNorm`, `GatedMLP`, `GeluMLP`, `Embeddings`.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


ACTIVATIONS = {"silu": F.silu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh")}


class GatedMLP(nn.Module):
    """Llama's SwiGLU, or Gemma's GeGLU (activation 'gelu_tanh')."""

    def __init__(self, dim: int, hidden: int, activation: str = "silu"):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)
        self.act = ACTIVATIONS[activation]

    def forward(self, x):
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class GeluMLP(nn.Module):
    """GPT-2's MLP with the tanh GELU ('gelu_new')."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc = nn.Linear(dim, hidden)
        self.proj = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.proj(F.gelu(self.fc(x), approximate="tanh"))


class Embeddings(nn.Module):
    """Token embedding in, vocabulary logits out. Tied models keep one (D, V) matrix: embedding rows are
    gathered along axis 1 and the LM head multiplies by it as is, so the graph stores the vocabulary once
    (an (V, D) table would need a transposed copy for the head, which constant folding writes out)."""

    def __init__(self, vocab: int, dim: int, tied: bool):
        super().__init__()
        self.tied = tied
        self.table_t = nn.Parameter(torch.zeros(dim, vocab))                   # (D, V), the head's layout
        self.head_t = None if tied else nn.Parameter(torch.zeros(dim, vocab))

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        B, T = ids.shape
        return self.table_t.index_select(1, ids.reshape(-1)).T.reshape(B, T, -1)  # (B, T, D)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return h @ (self.table_t if self.tied else self.head_t)                   # (B, T, V)
