"""Parity of an export too big to check whole: each layer's ONNX nodes against its PyTorch block, then the prompt
end to end, with one layer's weights in memory at a time on the PyTorch side.

    python -m validate.layers --export DIR [--model DIR] [--tokens 32]

Layer by layer: the nodes of layer i (named 'layer{i}/...' by export/pieces.py) are cut out of model.onnx into
a graph of their own, with only their weights read from model.onnx.data, and onnxruntime runs it on the hidden
states the PyTorch reference hands block i for a prompt (prefill from an empty cache), then on one more token with
the prefill's cache (decode). Their outputs (hidden states and present cache) against the block's:
max |ORT - PyTorch| <= LOGIT_RTOL x max |PyTorch| (validate/tolerances.py). End to end: the whole model.onnx in
onnxruntime against the reference run layer by layer (model/stream.py), the prompt's logits by the same bound and
their greedy tokens equal. A compressed export's reference blocks carry its projectors; with a quantized cache the
end-to-end check is `make validate`'s: the mean KL(reference || ORT) within QUANTIZED_KL_FRACTION of the
KL(uncompressed model || reference), the uncompressed model run layer by layer as well (a code that flips on
rounding sends the rest of the prompt down another, equally valid path, so logits cannot match to 1e-4 there;
each layer fed the same inputs still does).

Entry points: `check_layers(export_dir, model_dir)`, `layer_graph(model, i, directory)`.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import helper
from onnx.external_data_helper import load_external_data_for_tensor

from exporter.codec.store import load_projectors
from exporter.errors import UserError
from exporter.export.pieces import hidden_name
from exporter.model.fold import build_block, decoder_shell
from exporter.model.stream import LayerStream
from graphs import contract as C
from graphs.metadata import ExportError, load_metadata
from runtime.cache import NUMPY_DTYPES
from runtime.session import open_session, session_options
from .parity import mean_kl
from .tolerances import LOGIT_RTOL, QUANTIZED_KL_FRACTION, quantized_kl_ok


@dataclass
class LayerResult:
    layer: int
    prefill: float      # max |ORT - PyTorch| / max |PyTorch| over the piece's outputs
    decode: float

    @property
    def passed(self) -> bool:
        return self.prefill <= LOGIT_RTOL and self.decode <= LOGIT_RTOL


def layer_graph(model: onnx.ModelProto, i: int, directory: str) -> onnx.ModelProto:
    """Layer i's nodes of a piece-wise model.onnx (loaded without its external data) as a model of its own:
    inputs hidden.i, attention_mask, position_ids and the layer's past; outputs hidden.i+1 and its present;
    the weights it uses read from the data file in `directory`."""
    nodes = [n for n in model.graph.node if n.name.startswith(f"layer{i}/")]
    if not nodes:
        raise ExportError(f"model.onnx has no nodes named layer{i}/...: it was not exported layer by layer "
                          "(STREAM=1); validate it with `make validate`")
    produced = {o for n in nodes for o in n.output}
    needed = {x for n in nodes for x in n.input if x and x not in produced}
    weights = []
    for t in model.graph.initializer:
        if t.name in needed:
            t = onnx.TensorProto.FromString(t.SerializeToString())       # a copy: model keeps no data
            if t.data_location == onnx.TensorProto.EXTERNAL:
                load_external_data_for_tensor(t, directory)
                t.data_location = onnx.TensorProto.DEFAULT
                del t.external_data[:]
            weights.append(t)
    declared = {v.name: v for v in model.graph.input}
    hidden_in, hidden_out = hidden_name(i), hidden_name(i + 1)
    hidden = lambda name: helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)  # noqa: E731
    inputs = [hidden(hidden_in)] + [declared[x] for x in sorted(needed) if x in declared]
    results = {v.name: v for v in model.graph.output}
    outputs = [hidden(hidden_out)] + [results[o] for n in nodes for o in n.output if o in results]
    graph = helper.make_graph(nodes, f"layer{i}", inputs, outputs, weights)
    piece = helper.make_model(graph, opset_imports=list(model.opset_import))
    piece.ir_version = model.ir_version
    return piece


def _relative(ort_outputs: list, torch_outputs: list) -> float:
    worst = 0.0
    for a, b in zip(ort_outputs, torch_outputs):
        a, b = a.astype(np.float64), b.detach().numpy().astype(np.float64)       # codes: no uint8 wrap-around
        worst = max(worst, float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)))
    return worst


def check_layers(export_dir: str, model_dir: str | None = None, tokens: int = 32, progress: bool = True):
    """(per-layer results, end-to-end logit difference relative to the largest logit, greedy tokens equal)."""
    meta = load_metadata(export_dir)
    model_dir = model_dir or meta.model.get("source")
    if not model_dir or not os.path.isdir(model_dir):
        raise UserError(f"the reference needs the model's safetensors directory ({model_dir!r} is not one): "
                        "pass --model DIR")
    stream = LayerStream(model_dir)
    cfg = stream.cfg
    stem = os.path.join(export_dir, "projectors")          # a compressed export: its blocks carry the codes
    proj = load_projectors(stem, meta.model["fingerprint"]) if os.path.isfile(stem + ".safetensors") else None
    path = os.path.join(export_dir, "model.onnx")
    model = onnx.load(path, load_external_data=False)
    rng = np.random.default_rng(0)
    sink = meta.sink.get("token_id")
    ids = torch.tensor([([sink] if sink is not None else []) + rng.integers(3, cfg.vocab_size, tokens).tolist()])
    T = ids.shape[1] - 1                                  # prefill T tokens, then decode the last one
    mask, pos = torch.ones(1, T + 1, dtype=torch.int64), torch.arange(T + 1)[None]
    with torch.no_grad():
        with stream.loaded(*stream.input_names()):
            shell = decoder_shell(stream.hf, cfg, [], head=False).eval()
            x = shell.embed(ids, pos)                                          # (1, T+1, D)
        shell.embeddings = shell.pos_embed = None
        # a quantized cache: the uncompressed model's run too, for what the compression itself changes
        original = x if meta.layout.quantized else None
        results = []
        names = list(meta.layout.names())
        for i in range(cfg.num_layers):
            with stream.loaded(stream.layer_prefix(i)):
                block = build_block(stream.hf, cfg, i, proj).eval()
            shell.blocks = torch.nn.ModuleList([block])     # the step of this block (pre-RoPE angles, sink slots)
            session = _session(layer_graph(model, i, export_dir))
            pasts = [n[2] for n in names if n[0] == i]      # key, value, float windows
            kinds = ["hidden"] + list(meta.layout.kinds(i))   # the order of run_block's outputs, flattened
            empty = shell.empty_past(1)                     # (1, heads, 0, size) each, in the cache's dtype
            step = shell.step(mask[:, :T], pos[:, :T], T, x.dtype)
            hidden, presents = shell.run_block(block, i, x[:, :T], step, empty)   # (1, T, D), the presents
            prefill = [hidden, *presents]
            feed = {hidden_name(i): x[:, :T].numpy(), C.ATTENTION_MASK: mask[:, :T].numpy(),
                    C.POSITION_IDS: pos[:, :T].numpy(), **{n: t.numpy() for n, t in zip(pasts, empty)}}
            taken = {n.name for n in session.get_inputs()}      # GPT-2's layers take no position_ids
            out_names = [o.name for o in session.get_outputs()]
            got = session.run(out_names, {k: v for k, v in feed.items() if k in taken})
            order = lambda outs: [outs[kinds.index(kind_of(n))] for n in out_names]  # noqa: E731
            pre = _relative(got, order(prefill))
            step = shell.step(mask, pos[:, T:], 1, x.dtype)
            hidden, presents = shell.run_block(block, i, x[:, T:], step, presents)
            decode = [hidden, *presents]
            feed.update({hidden_name(i): x[:, T:].numpy(), C.ATTENTION_MASK: mask.numpy(),
                         C.POSITION_IDS: pos[:, T:].numpy(), **{n: t.numpy() for n, t in zip(pasts, prefill[1:])}})
            dec = _relative(session.run(out_names, {k: v for k, v in feed.items() if k in taken}), order(decode))
            results.append(LayerResult(i, pre, dec))
            if progress:
                verdict = "ok" if results[-1].passed else "FAIL"
                print(f"  layer {i:3d}: prefill {pre:.1e}, decode {dec:.1e} -> {verdict}", flush=True)
            x = torch.cat([prefill[0], decode[0]], dim=1)                      # (1, T+1, D) into the next block
            del block, session
            if original is not None:
                with stream.loaded(stream.layer_prefix(i)):
                    exact = build_block(stream.hf, cfg, i).eval()
                shell.blocks = torch.nn.ModuleList([exact])
                original = shell.run_block(exact, i, original, shell.step(mask, pos, T + 1, x.dtype),
                                           shell.empty_past(1))[0]
                del exact
        with stream.loaded(*stream.outside_layers()):
            head = decoder_shell(stream.hf, cfg, [], head=True).eval()
        reference = head.head(x).numpy()                                       # (1, T+1, V)
        uncompressed = head.head(original).numpy() if original is not None else None
    session, _ = open_session(path, "cpu")
    feed = {C.INPUT_IDS: ids.numpy(), C.ATTENTION_MASK: mask.numpy(), C.POSITION_IDS: pos.numpy()}
    for i, kind, name, _ in names:
        shape = meta.layout.shape(i, kind)
        feed[name] = np.zeros((1, shape.kv_heads, 0, shape.head_size), NUMPY_DTYPES[meta.layout.dtype_of(shape)])
    logits = session.run([C.LOGITS], feed)[0]
    return results, EndToEnd(float(np.abs(logits - reference).max() / np.abs(reference).max()),
                             bool((logits.argmax(-1) == reference.argmax(-1)).all()), mean_kl(reference, logits),
                             mean_kl(uncompressed, reference) if uncompressed is not None else None)


@dataclass
class EndToEnd:
    """The whole model.onnx against the reference run layer by layer, on the prompt (validate/tolerances.py):
    logits within LOGIT_RTOL and greedy tokens equal; a quantized cache (whose codes may flip on rounding, and
    then take another, equally valid path) by KL, within QUANTIZED_KL_FRACTION of what the compression costs."""
    logits: float               # max |ORT - reference| / max |reference|
    greedy: bool                # greedy tokens equal at every position
    kl: float                   # mean KL(reference || ORT), nats per position
    kl_cost: float | None       # quantized: mean KL(uncompressed model || reference); else None

    @property
    def passed(self) -> bool:
        if self.kl_cost is not None:
            return quantized_kl_ok(self.kl, self.kl_cost)
        return self.logits <= LOGIT_RTOL and self.greedy

    def describe(self) -> str:
        said = f"logits {self.logits:.1e} of the largest, greedy tokens {'equal' if self.greedy else 'DIFFER'}"
        if self.kl_cost is not None:
            said += (f", KL {self.kl:.2e} against the quantization's own {self.kl_cost:.2e} "
                     f"(at most {QUANTIZED_KL_FRACTION:g} of it)")
        return said


def kind_of(output_name: str) -> str:
    return "hidden" if output_name.startswith("hidden.") else output_name.rsplit(".", 1)[-1]


def _session(model: onnx.ModelProto):
    """An onnxruntime CPU session of an in-memory graph, with the options (and our kernels) of every session."""
    import onnxruntime as ort
    return ort.InferenceSession(model.SerializeToString(), session_options(), providers=["CPUExecutionProvider"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m validate.layers", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--export", required=True, help="an export written layer by layer (STREAM=1, or a big model)")
    p.add_argument("--model", default=None, help="the model's safetensors directory (default: export.json's source)")
    p.add_argument("--tokens", type=int, default=32, help="prompt tokens after the sink")
    a = p.parse_args(argv)
    try:
        results, end_to_end = check_layers(a.export, a.model, a.tokens)
    except (UserError, ExportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    worst = max(results, key=lambda r: max(r.prefill, r.decode))
    ok = all(r.passed for r in results) and end_to_end.passed
    print(f"layer parity: {sum(r.passed for r in results)}/{len(results)} layers within {LOGIT_RTOL:g} "
          f"(worst: layer {worst.layer}, prefill {worst.prefill:.1e}, decode {worst.decode:.1e}); end to end: "
          f"{end_to_end.describe()} -> {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
