"""Stream text through the uncompressed compact decoder and accumulate per-layer statistics.

One capture API for every statistic: taps in the decoder name what they see ('hidden', 'query_pre',
'query_post', 'key_pre', 'key_post', 'value', 'value_mix'), and the caller supplies accumulators for the
(layer, tap) pairs it wants. Nothing is kept per token: a Covariance folds each batch into running sums
(count n, sum, sum of outer products), from which mean = sum / n and covariance = outer / n - mean mean^T.
Position 0 (the sink) is kept apart, once, as the sink vector of each tap.

`capture_streamed` takes the same statistics from a checkpoint read one layer at a time (model/stream.py): every
window through layer 0, their hidden states kept, then layer 1, ...; each accumulator sees the windows in the
same order as in `capture`, so the sums are the same, and only one layer's weights are in memory.

Entry points: `capture(decoder, windows, want)`, `capture_streamed(stream, windows, want)`, `capture_from`
(either, by what it is handed), `Covariance`, `Rows`, `key_tap(cfg, key_mode)`.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from tqdm.auto import tqdm

TAPS = ("hidden", "query_pre", "query_post", "key_pre", "key_post", "value")   # analysis; fit adds 'value_mix'
# what the exporter captures: keys both ways, values, and the queries and value_mix the output-aware metrics need
KV_TAPS = ("key_pre", "key_post", "value", "query_pre", "query_post", "value_mix")


def key_tap(cfg, key_mode: str) -> str:
    """The tap a key code is fitted on: keys before RoPE (pre-rope) or after it (post-rope, and models without
    RoPE, whose keys are the same either way)."""
    return "key_pre" if key_mode == "pre-rope" and cfg.has_rope else "key_post"


class Covariance:
    """Running count, sum and sum of outer products in float64; mean and covariance on demand."""

    def __init__(self, heads: int = 1):
        self.heads = heads          # >1: each update row holds that many vectors side by side
        self.n = 0
        self.sum = None
        self.outer = None

    def update(self, x: torch.Tensor) -> None:
        """x (N, dim): N token vectors."""
        x = x.detach().double()
        if self.heads > 1:                                # (N, heads*dim) -> (N*heads, dim)
            x = x.reshape(-1, x.shape[1] // self.heads)
        if self.sum is None:
            self.sum = torch.zeros(x.shape[1], dtype=torch.float64)
            self.outer = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64)
        self.n += x.shape[0]
        self.sum += x.sum(0)
        self.outer += x.T @ x

    @property
    def mean(self) -> torch.Tensor:
        return self.sum / self.n

    def covariance(self, centered: bool = True) -> torch.Tensor:
        """Covariance (centered) or second moment (not centered), (dim, dim)."""
        second = self.outer / self.n
        return second - torch.outer(self.mean, self.mean) if centered else second

    def state(self) -> dict[str, torch.Tensor]:
        """Tensors that rebuild this accumulator (calib/store.py)."""
        return {"n": torch.tensor([self.n], dtype=torch.int64), "sum": self.sum, "outer": self.outer}

    @classmethod
    def from_state(cls, t: dict[str, torch.Tensor]) -> "Covariance":
        blocks = t["outer"].dim() == 3                                 # the state says which: (H, d, d) or (n, n)
        acc = HeadCovariance(t["outer"].shape[0]) if blocks else cls()
        acc.n, acc.sum, acc.outer = int(t["n"][0]), t["sum"], t["outer"]
        return acc


class HeadCovariance(Covariance):
    """Per-head blocks only: x (N, H*d) holds H heads side by side, and only each head's (d, d) block of the
    (H*d, H*d) moments is kept, H times less than the whole. The key metric reads nothing else of the queries'
    moments (projectors/metric.py), and for a wide model the whole would dominate the statistics (Llama-3.1-70B:
    82.5 GiB against 3.8, docs/scale.md). covariance() is (H, d, d)."""

    def __init__(self, heads: int = 1):
        super().__init__(1)
        self.block_heads = heads

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().double()
        per_head = x.reshape(x.shape[0], self.block_heads, -1)                    # (N, H, d)
        if self.sum is None:
            self.sum = torch.zeros(x.shape[1], dtype=torch.float64)
            self.outer = torch.zeros(self.block_heads, per_head.shape[2], per_head.shape[2], dtype=torch.float64)
        self.n += x.shape[0]
        self.sum += x.sum(0)
        self.outer += per_head.transpose(0, 1).transpose(1, 2) @ per_head.transpose(0, 1)   # (H, d, d)

    def covariance(self, centered: bool = True) -> torch.Tensor:
        second = self.outer / self.n                                              # (H, d, d)
        if not centered:
            return second
        mean = self.mean.view(self.block_heads, -1)                               # (H, d)
        return second - mean[:, :, None] * mean[:, None, :]


class Rows:
    """Keeps the token vectors themselves (for fits that need samples, not moments); .matrix() is (N, dim)."""

    def __init__(self):
        self.rows = []

    def update(self, x: torch.Tensor) -> None:
        self.rows.append(x.detach().double())

    def matrix(self) -> torch.Tensor:
        return torch.cat(self.rows)


def capture(decoder, windows: Iterable[list[int]], want: dict[tuple[int, str], object] | Callable,
            desc: str = "calibrating", progress: bool = True) -> dict[tuple[int, str], torch.Tensor]:
    """Run each window (a list of token ids, sink first) through `decoder` (uncompressed) and feed the taps.

    want: {(layer, tap): accumulator with .update(x (N, dim))}, or a function (layer, tap) -> accumulator or None.
    Returns the sink vectors {(layer, tap): (dim,)} seen at position 0 of the first window.
    """
    sinks: dict[tuple[int, str], torch.Tensor] = {}
    windows = list(windows)
    for i, blk in enumerate(decoder.blocks):
        blk.attn.tap = _tap_for(i, want, sinks)
    try:
        with torch.no_grad():
            for ids in tqdm(windows, desc=desc, unit="window", disable=not progress):
                t = torch.tensor([ids])                                   # (1, T)
                mask = torch.ones_like(t)
                pos = torch.arange(t.shape[1])[None]
                decoder(t, mask, pos, *decoder.empty_past(1))
    finally:
        for blk in decoder.blocks:
            blk.attn.tap = None
    return sinks


def _tap_for(layer: int, want, sinks: dict):
    """The tap hook of one layer: position 0 of the first window to `sinks`, the rest to its accumulator."""
    pick = want.get if isinstance(want, dict) else want

    def tap(name, x):                                     # x (1, T, dim)
        acc = pick((layer, name))
        if acc is None:
            return
        if (layer, name) not in sinks:
            sinks[(layer, name)] = x[0, 0].detach().double().clone()
        acc.update(x[0, 1:])
    tap.wants = lambda name: pick((layer, name)) is not None     # taps that cost work are computed on demand
    return tap


def capture_from(model, windows: Iterable[list[int]], want, desc: str = "calibrating", progress: bool = True) -> dict:
    """`capture` on a compact decoder, `capture_streamed` on a model/stream.LayerStream (an export that never
    holds the whole model, job/streamed.py): the same statistics either way."""
    from ..model.stream import LayerStream
    if isinstance(model, LayerStream):
        return capture_streamed(model, windows, want, desc, progress)
    return capture(model, windows, want, desc, progress)


def capture_streamed(stream, windows: Iterable[list[int]], want, desc: str = "calibrating",
                     progress: bool = True) -> dict:
    """`capture` on a model/stream.LayerStream: the same accumulators filled and the same sinks returned, with
    one decoder layer's weights in memory at a time (plus every window's hidden states, (T, D) each)."""
    from ..model.fold import build_block, decoder_shell
    sinks: dict[tuple[int, str], torch.Tensor] = {}
    windows = [torch.tensor([ids]) for ids in windows]                  # (1, T) each
    with torch.no_grad():
        with stream.loaded(*stream.input_names()):
            shell = decoder_shell(stream.hf, stream.cfg, [], head=False).eval()
        hidden = [shell.embed(t, torch.arange(t.shape[1])[None]) for t in windows]     # (1, T, D) each
        steps = [shell.step(torch.ones_like(t), torch.arange(t.shape[1])[None], t.shape[1], torch.float32)
                 for t in windows]                    # masks and RoPE angles: once per window, not per layer
        for i in tqdm(range(stream.cfg.num_layers), desc=f"{desc}, layer by layer", unit="layer",
                      disable=not progress):
            with stream.loaded(stream.layer_prefix(i)):
                block = build_block(stream.hf, stream.cfg, i).eval()
            block.attn.tap = _tap_for(i, want, sinks)
            empty = torch.zeros(1, block.attn.G, 0, block.attn.d)          # (1, G, 0, d): no past
            for w, step in enumerate(steps):
                hidden[w], _ = shell.run_block(block, i, hidden[w], step, (empty, empty))
            del block
    return sinks
