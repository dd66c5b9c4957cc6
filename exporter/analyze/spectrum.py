"""Spectrum math: effective dimension, ranks for a variance fraction, and the robust variants that keep a few
huge numbers from deciding the answer.

Why robust variants: the raw covariance of a transformer's activations is dominated by a handful of
massive-activation dimensions and by attention-sink tokens (the first token, and any token the model treats
like it). One direction then holds nearly all the variance, so the raw participation ratio is ~1 and "k for 95 %"
is tiny, which says nothing about how many directions the other tokens use. Excluding the sink tokens, and
standardising every dimension (the spectrum of the correlation matrix), show the shape of the rest.

Everything here is float64 torch and free of model code; exporter/analyze feeds it from calib/capture.capture().

Entry point: `eigenvalues`, `participation_ratio`, `rank_for_fraction`, `TapStatistics`.
"""
from __future__ import annotations

import math

import torch

from ..calib.capture import Covariance

FRACTIONS = (0.90, 0.95, 0.99)
TOKEN_FACTOR = 5.0     # a token whose norm exceeds this many times its window's median norm is a sink/outlier
DIM_FACTOR = 8.0       # a dimension whose std exceeds this many times the median std is an outlier dimension
MAX_FLAGGED = 20000    # flagged tokens remembered per (layer, tap); the count goes on past it


# --- spectra ------------------------------------------------------------------------------------------------

def eigenvalues(cov: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of a symmetric PSD matrix (dim, dim), descending; rounding negatives clipped to 0."""
    return torch.linalg.eigvalsh(cov.double()).flip(0).clamp(min=0.0)          # (dim,)


def participation_ratio(eigs: torch.Tensor) -> float:
    """Df = (sum l)^2 / sum l^2: the number of equally strong directions with the same spread; 1 when one
    direction holds everything, dim for a flat spectrum."""
    total = float(eigs.sum())
    return total * total / float((eigs * eigs).sum()) if total > 0 else 0.0


def rank_for_fraction(eigs: torch.Tensor, fraction: float) -> int:
    """Smallest k whose top-k eigenvalues hold `fraction` of the sum (eigs descending)."""
    total = float(eigs.sum())
    if total <= 0:
        return 0
    cum = torch.cumsum(eigs, 0) / total                                        # (dim,)
    k = int(torch.searchsorted(cum, torch.tensor(fraction - 1e-12, dtype=cum.dtype))) + 1
    return min(k, eigs.numel())


def fraction_kept(eigs: torch.Tensor, k: int) -> float:
    """Share of the sum held by the top k eigenvalues."""
    total = float(eigs.sum())
    return float(eigs[:k].sum()) / total if total > 0 else 1.0


def relative_error(eigs: torch.Tensor, k: int) -> float:
    """||X - X_k||_F / ||X||_F for centered data whose covariance has these eigenvalues, X_k its best rank-k
    reconstruction (PCA, optimal by Eckart-Young): sqrt of the variance share left out."""
    return math.sqrt(max(0.0, 1.0 - fraction_kept(eigs, k)))


def summarize(eigs: torch.Tensor, top: int = 8, fractions=FRACTIONS) -> dict:
    """The numbers the report shows for one spectrum."""
    out = {"dims": int(eigs.numel()), "df": participation_ratio(eigs), "total": float(eigs.sum())}
    for f in fractions:
        out[f"k{round(100 * f)}"] = rank_for_fraction(eigs, f)
    out["top"] = [float(v) for v in eigs[:top]]
    return out


# --- robust variants ----------------------------------------------------------------------------------------

def covariance_from_sums(n: int, total: torch.Tensor, outer: torch.Tensor) -> torch.Tensor:
    """Centered covariance (dim, dim) from a count, a sum (dim,) and a sum of outer products (dim, dim)."""
    mean = total / n
    return outer / n - torch.outer(mean, mean)


def correlation(cov: torch.Tensor, rel_eps: float = 1e-12) -> torch.Tensor:
    """Per-dimension standardisation: cov_ij / (std_i std_j). Dimensions with (numerically) zero variance carry
    no information and are dropped, so the result may be smaller than cov."""
    var = cov.diagonal()
    keep = var > rel_eps * float(var.max()) if float(var.max()) > 0 else torch.zeros_like(var, dtype=torch.bool)
    std = var[keep].sqrt()                                                     # (kept,)
    return cov[keep][:, keep] / torch.outer(std, std)


def outlier_dims(variances: torch.Tensor, factor: float = DIM_FACTOR) -> list[int]:
    """Dimensions whose std exceeds `factor` x the median std, largest first (massive-activation dims)."""
    std = variances.clamp(min=0).sqrt()
    med = float(std.median())
    if med <= 0:
        return []
    ratio = std / med
    idx = torch.nonzero(ratio > factor).flatten()
    return [int(i) for i in idx[torch.argsort(ratio[idx], descending=True)]]


def outlier_tokens(x: torch.Tensor, factor: float = TOKEN_FACTOR) -> tuple[torch.Tensor, torch.Tensor]:
    """x (N, dim) -> (mask (N,) of tokens whose norm exceeds factor x the median norm, norm ratios (N,)).

    The median is taken over the tokens given (one window), so a few huge tokens cannot move it."""
    norms = x.norm(dim=1)                                                      # (N,)
    ratio = norms / norms.median().clamp(min=torch.finfo(norms.dtype).tiny)
    return ratio > factor, ratio


def blocks(cov: torch.Tensor, heads: int) -> list[torch.Tensor]:
    """Diagonal sub-blocks of a covariance whose dims are `heads` heads side by side: per-head covariances."""
    d = cov.shape[0] // heads
    return [cov[h * d:(h + 1) * d, h * d:(h + 1) * d] for h in range(heads)]


class TapStatistics(Covariance):
    """A Covariance of the tokens capture() feeds (every position but the sink at 0), plus what the robust
    variants and the outlier names need: the running sums over high-norm tokens (to subtract them), per-dim
    max |x|, and (window, position, norm ratio) of each high-norm token.

    capture() calls update once per window with positions 1..T-1, so the update count is the window index
    and row j is position j + `offset`."""

    def __init__(self, token_factor: float = TOKEN_FACTOR, offset: int = 1):
        super().__init__()
        self.token_factor = token_factor
        self.offset = offset
        self.outliers = Covariance()
        self.max_abs = None
        self.flagged: list[tuple[int, int, float]] = []
        self.n_flagged = 0
        self.windows = 0

    def update(self, x: torch.Tensor) -> None:
        """x (N, dim): one window's tokens."""
        x = x.detach().double()
        super().update(x)
        hit, ratio = outlier_tokens(x, self.token_factor)
        if hit.any():
            self.outliers.update(x[hit])                                        # (n_hit, dim)
            rows = torch.nonzero(hit).flatten().tolist()
            self.n_flagged += len(rows)
            room = MAX_FLAGGED - len(self.flagged)
            self.flagged += [(self.windows, r + self.offset, float(ratio[r])) for r in rows[:max(room, 0)]]
        peak = x.abs().amax(0)                                                   # (dim,)
        self.max_abs = peak if self.max_abs is None else torch.maximum(self.max_abs, peak)
        self.windows += 1

    def variants(self, sink: torch.Tensor | None, sink_count: int) -> dict[str, torch.Tensor]:
        """The covariances the report compares, each (dim, dim):
        raw           every token, the sink at position 0 included (sink_count copies of the sink vector);
        no_pos0       position 0 left out: the statistic PCA projectors are fitted on;
        no_sinks      position 0 and every high-norm token left out;
        standardized  no_sinks with each dimension scaled to unit variance (correlation matrix)."""
        out = {}
        if sink is not None and sink_count:
            s = sink.double()
            out["raw"] = covariance_from_sums(self.n + sink_count, self.sum + sink_count * s,
                                              self.outer + sink_count * torch.outer(s, s))
        else:
            out["raw"] = self.covariance()
        out["no_pos0"] = self.covariance()
        if self.outliers.n and self.n - self.outliers.n > 1:
            out["no_sinks"] = covariance_from_sums(self.n - self.outliers.n, self.sum - self.outliers.sum,
                                                   self.outer - self.outliers.outer)
        else:
            out["no_sinks"] = out["no_pos0"]
        out["standardized"] = correlation(out["no_sinks"])
        return out

    def state(self) -> dict[str, torch.Tensor]:
        """Tensors that rebuild this accumulator (for the on-disk cache)."""
        t = {"n": torch.tensor([self.n, self.outliers.n, self.n_flagged, self.windows], dtype=torch.int64),
             "sum": self.sum, "outer": self.outer, "max_abs": self.max_abs,
             "flagged": torch.tensor(self.flagged, dtype=torch.float64).reshape(-1, 3),
             "factor": torch.tensor([self.token_factor, self.offset], dtype=torch.float64)}
        if self.outliers.n:
            t["out_sum"], t["out_outer"] = self.outliers.sum, self.outliers.outer
        return t

    @classmethod
    def from_state(cls, t: dict[str, torch.Tensor]) -> "TapStatistics":
        acc = cls(float(t["factor"][0]), int(t["factor"][1]))
        acc.n, acc.outliers.n, acc.n_flagged, acc.windows = (int(v) for v in t["n"])
        acc.sum, acc.outer, acc.max_abs = t["sum"], t["outer"], t["max_abs"]
        acc.flagged = [(int(w), int(p), float(r)) for w, p, r in t["flagged"].tolist()]
        if acc.outliers.n:
            acc.outliers.sum, acc.outliers.outer = t["out_sum"], t["out_outer"]
        return acc


# --- weights ------------------------------------------------------------------------------------------------

def energy_summary(singular_values: torch.Tensor, probe_ranks=(), fractions=(0.95,), top: int = 8) -> dict:
    """Weight-matrix spectrum: Df and k over the energies sigma^2 (the eigenvalues of W^T W, as for activations),
    plus Df over sigma itself, and the energy share at the probe ranks."""
    s = singular_values.double()
    out = summarize(s * s, top=0, fractions=fractions)
    out["df_sigma"] = participation_ratio(s)
    out["top_sigma"] = [float(v) for v in s[:top]]
    out["energy_at"] = {str(k): fraction_kept(s * s, k) for k in probe_ranks}
    return out


def truncate(w: torch.Tensor, rank: int) -> torch.Tensor:
    """Best rank-`rank` approximation of w (out, in) in Frobenius norm (Eckart-Young), same dtype."""
    u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
    return ((u[:, :rank] * s[:rank]) @ vh[:rank]).to(w.dtype)
