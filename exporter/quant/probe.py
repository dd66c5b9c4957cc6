"""Sensitivity probes for quantized caches: what one tensor's code costs in KL on probe text, all else exact.

The bit allocation (quant/design.py) predicts each tensor's error as sum_j weight_j 4^-bits_j in its layer's
output-aware metric, but a unit of that error costs the model differently from layer to layer, and a key's
metric (attention logits) and a value's (the residual stream) are not even in the same units. A probe per
tensor measures the exchange rate: code only that tensor as a first allocation would, take the KL of the
model's next-token distribution from the exact model's on probe text (calibration text after the calibration
tokens, never the evaluation file), and divide by the predicted error. The allocation then weighs each
tensor's components by it, so bits go where they buy the most KL.

A model bigger than memory (job/streamed.py) is probed layer by layer with the same figures, bit for bit
(`measured_sensitivities_streamed`): every probe's hidden states go through the layers together, so each layer's
weights are read once. At layer i the exact states start the probes of layer i's key and value (block i with that
tensor coded), and every earlier probe passes block i exact; at the end the head scores them all. Between layers each
probe's hidden states, (probe_tokens, D) each, wait in a file (44 x 8 MiB for TinyLlama-1.1B's shapes).

Entry points: `measured_sensitivities(hf, decoder, cfg, coded, predicted, windows)`,
`measured_sensitivities_streamed(stream, coded, predicted, windows)`.
"""
from __future__ import annotations

import os
import shutil
import tempfile

import torch
from tqdm.auto import tqdm

from ..codec.linear import Projectors
from ..eval.perplexity import decoder_logits
from ..model.fold import build_attention, build_block


def _logprobs(decoder, ids: list[int]) -> torch.Tensor:
    """Log-probabilities (T-1, V) at every position after the sink (the sink's own output is exact anyway)."""
    return torch.log_softmax(decoder_logits(decoder, ids)[1:].float(), -1)


def _kl(decoder, windows, teacher) -> float:
    return _mean_kl(teacher, [_logprobs(decoder, ids) for ids in windows], windows)


def _mean_kl(teacher: list, student: list, windows) -> float:
    total, n = 0.0, 0
    for ids, p_log, q_log in zip(windows, teacher, student):
        total += (p_log.exp() * (p_log - q_log)).sum().item()     # one float32 sum over (T-1, V): the bits
                                                                    # depend on these figures, keep their rounding
        n += len(ids) - 1
    return total / n


def _rate(kl: float, predicted: float) -> float:
    return max(kl, 0.0) / max(predicted, 1e-30)


def one_tensor(proj: Projectors, layer: int, kind: str) -> Projectors:
    """proj with every tensor but (layer, kind) uncompressed."""
    L = len(proj.keys)
    keep = lambda items, k: [items[i] if (i == layer and k == kind) else None for i in range(L)]
    return Projectors(proj.key_mode, keep(proj.keys, "key"), keep(proj.values, "value"), proj.info)


def measured_sensitivities(hf, decoder, cfg, coded: Projectors, predicted: dict, windows) -> dict:
    """{(layer, kind): KL per unit of predicted error}, each from a probe with only that tensor coded as in
    `coded` (quantized projectors); decoder is the exact compact decoder, its layers swapped one at a time."""
    with torch.no_grad():
        teacher = [_logprobs(decoder, ids) for ids in windows]
        out = {}
        for (i, kind) in tqdm(sorted(predicted), desc="probing quantizer sensitivity", unit="tensor"):
            exact = decoder.blocks[i].attn
            decoder.blocks[i].attn = build_attention(hf, cfg, i, one_tensor(coded, i, kind))
            try:
                out[(i, kind)] = _rate(_kl(decoder, windows, teacher), predicted[(i, kind)])
            finally:
                decoder.blocks[i].attn = exact
    return out


def measured_sensitivities_streamed(stream, coded: Projectors, predicted: dict, windows) -> dict:
    """measured_sensitivities of a model/stream.LayerStream, one layer's weights in memory at a time."""
    from ..model.decoder import lm_head
    from ..model.fold import decoder_shell, final_norm
    hf, cfg = stream.hf, stream.cfg
    tokens = [torch.tensor([ids]) for ids in windows]                                  # (1, T) each
    with torch.no_grad():
        with stream.loaded(*stream.input_names()):
            shell = decoder_shell(hf, cfg, [], head=False).eval()
        exact = [shell.embed(t, torch.arange(t.shape[1])[None]) for t in tokens]       # (1, T, D) each
        shell.embeddings = shell.pos_embed = None
        steps = _Steps(shell, tokens)
        probes = _Spilled(tempfile.mkdtemp(prefix="probes-"))   # (layer, kind) -> its hidden states, on disk
        try:
            for i in tqdm(range(cfg.num_layers), desc="probing quantizer sensitivity, layer by layer", unit="layer"):
                with stream.loaded(stream.layer_prefix(i)):
                    block = build_block(hf, cfg, i).eval()
                    starting = {(i, kind): build_attention(hf, cfg, i, one_tensor(coded, i, kind)).eval()
                                for kind in ("key", "value") if (i, kind) in predicted}
                for key in probes.keys():                 # earlier probes: block i exact, with their own steps
                    probes.put(key, steps.run(block, i, probes.get(key), key))
                exact_attn = block.attn
                for key, attn in starting.items():        # the probes of layer i's tensors: block i with it coded
                    block.attn = attn
                    probes.put(key, steps.run(block, i, exact, key, starts=True))
                block.attn = exact_attn
                exact = steps.run(block, i, exact, None, starts=True)
                del block, starting
            with stream.loaded(*stream.head_names()):      # Decoder.head's arithmetic without the input table
                norm = final_norm(hf, cfg)
                head_t = stream.output_embedding().detach().T.contiguous()             # (D, V), as Embeddings
            logits = lambda x: lm_head(x, None, norm, lambda h: h @ head_t)[0][1:]     # noqa: E731  (T-1, V)
            logprobs = lambda states: [torch.log_softmax(logits(x).float(), -1) for x in states]  # noqa: E731
            teacher = logprobs(exact)
            return {key: _rate(_mean_kl(teacher, logprobs(probes.get(key)), windows), predicted[key])
                    for key in sorted(probes.keys())}
        finally:
            shutil.rmtree(probes.directory, ignore_errors=True)


class _Spilled:
    """Each probe's hidden states in a file of their own between layers (safetensors, exact float32 bytes): in
    memory only while their block runs, so the probes' states (2 L x probe tokens x D x 4 bytes: 0.37 GiB for
    TinyLlama-1.1B's shapes) do not add to the export's peak."""

    def __init__(self, directory: str):
        self.directory = directory
        self.files: dict = {}
        self.layouts: dict = {}        # key -> (size, stride) of each window's tensor, as the block left it

    def keys(self) -> list:
        return list(self.files)

    def put(self, key, states: list) -> None:
        from safetensors.torch import save_file
        self.files[key] = os.path.join(self.directory, f"{key[0]}.{key[1]}.safetensors")
        self.layouts[key] = [(x.size(), x.stride()) for x in states]
        save_file({str(w): x.contiguous() for w, x in enumerate(states)}, self.files[key])

    def get(self, key) -> list:
        from safetensors.torch import load_file
        tensors = load_file(self.files[key])
        # back in the strides the block left them in: the next block's kernels take another path on a
        # contiguous copy, and their last bits differ (the probes must match the whole model's exactly)
        return [torch.empty_strided(size, stride).copy_(tensors[str(w)])
                for w, (size, stride) in enumerate(self.layouts[key])]


class _Steps:
    """The per-window masks and RoPE angles (Decoder.step) a probe's forward uses: the whole decoder with one
    coded layer computes them with that layer among its blocks (a pre-RoPE code wants every slot's angles, a
    quantized one the sink's slots); the exact layers read only what they always do, so their output is the
    same either way. One set per kind of coded attention, shared by the probes of that kind."""

    def __init__(self, shell, tokens: list):
        self.shell, self.tokens = shell, tokens
        self.made: dict = {}               # (needs every position, quantized) -> steps, one per window
        self.of: dict = {}                 # probe (None: the exact model) -> its key into made

    def run(self, block, i: int, states: list, probe, starts: bool = False) -> list:
        """Block i on each window's hidden states (1, T, D), with the steps of `probe`; starts: block i is the
        one that sets them (the probe's coded layer, or any block of the exact model)."""
        self.shell.blocks = torch.nn.ModuleList([block])
        if starts:
            self.of[probe] = (self.shell.needs_all_positions, self.shell.quantized)
        kind = self.of[probe]
        if kind not in self.made:
            self.made[kind] = [self.shell.step(torch.ones_like(t), torch.arange(t.shape[1])[None], t.shape[1],
                                               torch.float32) for t in self.tokens]
        empty = self.shell.empty_past(1)
        return [self.shell.run_block(block, i, x, step, empty)[0] for x, step in zip(states, self.made[kind])]
