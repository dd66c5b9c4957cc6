"""K=auto: per-layer ranks from a budget, searched on held-out calibration text (never the evaluation file).

  BUDGET=<KV bytes per token>    the best quality that fits: one allocation (ranks/allocate.py) at that many dims
  MAX_PPL_INCREASE=<percent>     the fewest bytes inside the quality budget: bisection on the dims budget, each
                                 step an allocation scored by held-out perplexity

Either way the best uniform-rank PCA setting under the same rule (the same K for every layer: keys only, or
keys and values alike) is searched first and printed next to the choice, and the choice is searched only up to
its bytes. Bytes are those the cache grows by per token: a sliding-window layer whose cache is bounded by its
window (`uncounted`) adds none past the window, so it stays uncompressed and the budget goes to the others. Held-out text: windows of 2048 (the perplexity convention) spread evenly over the calibration file
after the calibration tokens. Spread, not contiguous: text varies from article to article far more than a
search step changes, and one contiguous slice understated on SmolLM2 what the chosen export costs elsewhere in
the file and on WikiText-2 test by about 2x (docs/projectors.md, benchmarks/heldout_spread.py). A candidate
meets MAX_PPL_INCREASE when its increase plus `margin` standard errors (of the per-window mean) does.

Entry points: `Search(...)`, `choose_ranks(search, dtype_bytes)` -> (choice, uniform PCA reference);
`check_budget(options, num_layers, dtype_bytes)` refuses an impossible budget before any work.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from tqdm.auto import tqdm

from ..calib.capture import key_tap
from ..calib.text import HELDOUT_WINDOW, fitting_window, probe_windows, spread_windows
from ..errors import UserError
from ..eval.perplexity import nll, perplexity
from ..options import AutoOptions
from ..projectors.coded import CodedDecoder
from ..projectors.pca import fit_pca
from ..projectors.train import Objective, heldout_loss
from .allocate import KINDS, allocate, residual_curve


@dataclass
class Candidate:
    label: str
    key_ranks: list
    value_ranks: list
    dims: int
    ppl_increase: float | None = None   # percent, held-out
    ppl_bound: float | None = None      # percent: the increase with the margin (what MAX_PPL_INCREASE is held to)
    pca: bool = False               # True: plain PCA (the uniform reference); else the search's method

    def ranks_text(self) -> str:
        show = lambda rs: ",".join("full" if r is None else str(r) for r in rs)
        return f"K_KEY={show(self.key_ranks)} K_VALUE={show(self.value_ranks)}"


class Search:
    """Everything the search needs, loaded once: statistics, metrics, held-out windows and their baseline."""

    def __init__(self, decoder, tok, cfg, stats, key_mode: str, sink, o: AutoOptions, *, calib: str,
                 calib_tokens: int, metric, info: dict, uncounted=()):
        self.decoder, self.cfg, self.stats, self.metric = decoder, cfg, stats, metric
        self.uncounted = set(uncounted)     # layers kept uncompressed, outside the budget (bounded windows)
        self.key_mode, self.sink, self.info, self.o = key_mode, sink, info, o
        self.heldout = spread_windows(tok, calib, calib_tokens, o.heldout_tokens, sink,
                                      fitting_window(HELDOUT_WINDOW, cfg.max_positions, sink))
        self.probe = probe_windows(tok, calib, calib_tokens, cfg.max_positions, sink, o.probe_tokens)
        self.base_nll = [nll(decoder, [w], progress=False) for w in
                         tqdm(self.heldout, desc="held-out (original)", unit="window", leave=False)]
        self.base = perplexity(_summed(self.base_nll))
        self.dim = cfg.kv_dim

    def projectors(self, key_ranks, value_ranks, metric="default"):
        """Closed-form projectors at these ranks: the search's method, or plain PCA with metric=None."""
        m = self.metric if metric == "default" else metric
        return fit_pca(self.stats, self.cfg, key_ranks, value_ranks, self.key_mode, self.sink, self.info, m)

    def increase(self, proj) -> tuple[float, float]:
        """(held-out perplexity increase, the same plus `margin` standard errors), percent."""
        coded = CodedDecoder(self.decoder, proj, key_tap(self.cfg, self.key_mode))
        per_window = [nll(self.decoder, [w], codec=coded.hook, progress=False) for w in self.heldout]
        return increase_with_margin(self.base_nll, per_window, self.o.margin)

    def curves(self) -> dict:
        accs = self.stats.accumulators
        tap = {"key": key_tap(self.cfg, self.key_mode), "value": "value"}
        m = self.metric                 # the metric the projectors are fitted in (None: plain PCA)
        return {(i, k): residual_curve(*m(i, k)) if m else residual_curve(accs[(i, tap[k])].covariance(), None)
                for i in self.counted for k in KINDS}

    @property
    def counted(self) -> list[int]:
        """The layers the budget is spent on."""
        return [i for i in range(self.cfg.num_layers) if i not in self.uncounted]

    def sensitivities(self, curves: dict) -> dict:
        """KL per unit of residual error, per tensor (probe_sensitivities)."""
        if self.o.sensitivity == "metric":
            return {t: 1.0 / max(c[0].item(), 1e-30) for t, c in curves.items()}
        return probe_sensitivities(self.decoder, self.cfg, curves, self.projectors, self.key_mode, self.probe)

    def allocation(self, curves, sens, dims: int) -> Candidate:
        a = allocate(curves, sens, dims, self.dim, self.o.granularity, self.o.tie)
        ranks = lambda kind: [None if i in self.uncounted else a.ranks[(i, kind)] for i in range(self.cfg.num_layers)]
        return Candidate("auto", ranks("key"), ranks("value"), a.dims)

    def score(self, c: Candidate) -> Candidate:
        c.ppl_increase, c.ppl_bound = self.increase(self.projectors(c.key_ranks, c.value_ranks,
                                                                    None if c.pca else "default"))
        return c

    def smallest_within(self, make, lo: int, hi: int, target: float, desc: str) -> Candidate | None:
        """Bisection over lo..hi for the smallest i whose candidate make(i) is within the target (the increase
        falls as i grows); None if none is."""
        found = None
        with tqdm(desc=desc, unit="step") as bar:
            while lo <= hi:
                mid = (lo + hi) // 2
                c = self.score(make(mid))
                bar.update()
                bar.set_postfix(dims=c.dims, increase=f"{c.ppl_increase:.2f}%", bound=f"{c.ppl_bound:.2f}%")
                if c.ppl_bound <= target:
                    found, hi = c, mid - 1
                else:
                    lo = mid + 1
        return found

    def uniform(self, target: float | None, budget_dims: int | None) -> Candidate | None:
        """The best uniform-rank PCA setting: keys only (values full) or keys = values, the same K everywhere.
        With a target: the fewest dims within it; with a budget: the lowest held-out increase that fits."""
        L, g = self.cfg.num_layers, self.o.granularity
        at = lambda k: [None if i in self.uncounted else k for i in range(L)]
        families = {"keys only": lambda k: (at(k), [None] * L), "keys = values": lambda k: (at(k), at(k))}
        dims = lambda kr, vr: sum((r or self.dim) for i, r in enumerate(kr + vr) if i % L not in self.uncounted)
        best = None
        for name, ranks in families.items():
            make = lambda i: Candidate(f"uniform PCA, {name}", *ranks((i + 1) * g), dims(*ranks((i + 1) * g)),
                                       pca=True)
            n = self.dim // g - 1                      # K = g .. dim - g
            if budget_dims is not None:
                fits = [i for i in range(n) if make(i).dims <= budget_dims]
                c = self.score(make(fits[-1])) if fits else None
                better = c is not None and (best is None or c.ppl_increase < best.ppl_increase)
            else:
                c = self.smallest_within(make, 0, n - 1, target, f"uniform PCA, {name}")
                better = c is not None and (best is None or c.dims < best.dims)
            best = c if better else best
        return best

    def fewest_dims(self, curves, sens, target: float, at_most: int | None) -> Candidate:
        """The smallest allocation within the target, searched up to at_most dims (the uniform reference's,
        so the choice never costs more than it) or all uncompressed."""
        L, g = len(self.counted), self.o.granularity
        hi = (at_most if at_most is not None else 2 * L * self.dim) // g
        found = self.smallest_within(lambda i: self.allocation(curves, sens, i * g), 2 * L, hi, target,
                                     "searching ranks")
        if found is None:
            raise UserError(f"no allocation up to {hi * g} dims meets MAX_PPL_INCREASE={target}% on held-out "
                            "text: raise the budget")
        return found


def probe_sensitivities(decoder, cfg, curves: dict, projectors, key_mode: str, probe: list[list[int]]) -> dict:
    """{(layer, kind): KL per unit of residual error}: for each tensor a probe with only that tensor coded at
    half its dims (projectors(key_ranks, value_ranks) fits them), its KL on the probe text over the residual
    error its curve predicts at half."""
    L, half = cfg.num_layers, cfg.kv_dim // 2
    out, objective = {}, None
    for (i, kind) in tqdm(sorted(curves), desc="probing sensitivity", unit="tensor"):
        ranks = {k: [half if (j == i and k == kind) else None for j in range(L)] for k in KINDS}
        coded = CodedDecoder(decoder, projectors(ranks["key"], ranks["value"]), key_tap(cfg, key_mode))
        if objective is None:
            objective = Objective(coded, "kl")      # one objective: the teacher's logits are kept
        objective.model = coded
        out[(i, kind)] = heldout_loss(objective, probe) / max(curves[(i, kind)][half].item(), 1e-30)
    return out


def check_budget(o: AutoOptions, num_layers: int, dtype_bytes: int) -> None:
    """Exactly one of BUDGET and MAX_PPL_INCREASE, and a BUDGET no lower than every layer's keys and values at
    `granularity` dims (the least K=auto can do); what only the model's size tells, before any calibration."""
    if (o.budget_bytes is None) == (o.max_ppl_increase is None):
        raise UserError("K=auto needs exactly one of BUDGET=<KV bytes per token> or MAX_PPL_INCREASE=<percent>")
    least = 2 * num_layers * o.granularity
    if o.budget_bytes is not None and o.budget_bytes // dtype_bytes < least:
        raise UserError(f"BUDGET={o.budget_bytes:g} B/token is below the least K=auto can do "
                        f"({least * dtype_bytes} B/token: every layer at {o.granularity} dims)")


def choose_ranks(search: Search, dtype_bytes: int) -> tuple[Candidate, Candidate | None]:
    """(the choice, the uniform PCA reference) for the options in search.o; prints both."""
    o = search.o
    check_budget(o, len(search.counted), dtype_bytes)
    curves = search.curves()
    sens = search.sensitivities(curves)
    if o.budget_bytes is not None:
        dims = int(o.budget_bytes // dtype_bytes)
        choice = search.score(search.allocation(curves, sens, dims))
        reference = search.uniform(None, dims)
    else:
        reference = search.uniform(o.max_ppl_increase, None)
        choice = search.fewest_dims(curves, sens, o.max_ppl_increase, reference.dims if reference else None)
    report(choice, reference, dtype_bytes)
    return choice, reference


def report(choice: Candidate, reference: Candidate | None, dtype_bytes: int) -> None:
    for c in (choice, reference):
        if c is None:
            print("uniform PCA: no uniform setting meets the budget")
            continue
        print(f"{c.label:28s} {c.dims * dtype_bytes:>7} KV B/token  held-out perplexity {c.ppl_increase:+.2f} % "
              f"(with margin {c.ppl_bound:+.2f} %)  {c.ranks_text()}")


def _summed(parts: list[tuple[float, int]]) -> tuple[float, int]:
    return sum(p[0] for p in parts), sum(p[1] for p in parts)


def increase_with_margin(base: list[tuple[float, int]], coded: list[tuple[float, int]],
                         margin: float) -> tuple[float, float]:
    """Perplexity increase (percent) over all windows, and the same with the mean per-token NLL increase raised
    by `margin` standard errors of its mean over windows (windows vary far more than tokens within them)."""
    d = [(c[0] - b[0]) / b[1] for b, c in zip(base, coded)]                  # per-window NLL increase per token
    (bs, n), (cs, _) = _summed(base), _summed(coded)
    mean = (cs - bs) / n
    se = (sum((x - sum(d) / len(d)) ** 2 for x in d) / (len(d) - 1) / len(d)) ** 0.5 if len(d) > 1 else 0.0
    return 100 * math.expm1(mean), 100 * math.expm1(mean + margin * se)

