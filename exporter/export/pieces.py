"""model.onnx of a model bigger than memory: traced piece by piece, stitched, weights streamed to external data.

A whole-model trace holds every weight at once, twice (the module and the protobuf), and one protobuf cannot pass
2 GB. The decoder's forward is embed -> step and run_block per layer -> head (model/decoder.py), so it is traced
as N + 2 small graphs, each with the contract's names at its edges:

    embed     input_ids, position_ids                                   -> hidden.0
    layer i   hidden.i, attention_mask, position_ids, past i            -> hidden.i+1, present i
    head      hidden.N, logits_to_keep                                  -> logits

Each layer piece computes its own mask and RoPE angles from attention_mask and position_ids (a few small nodes;
equal constants are stored once, so onnxruntime's common-subexpression elimination can merge the copies). A
piece's names get a prefix of their own ('layer3/'), its weights go to model.onnx.data as soon as it is traced,
and the graph is the pieces' nodes in order. One layer's weights are in memory at a time (model/stream.py).

Entry point: `write_onnx_by_pieces(stream, layout, path, props)`.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import warnings

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from tqdm.auto import tqdm

from graphs import contract as C
from graphs.checks import check_contract, check_model
from graphs.passes import clamp_ir_version, make_input_optional, set_metadata_props, strip_doc_strings

from ..model.decoder import lm_head
from ..model.fold import build_block, decoder_shell, final_norm
from .onnx_file import OPSET, _io_names, example_cache

INLINE_BYTES = 1024          # smaller tensors stay in the protobuf (as onnx.save does by default)
ALIGN = 4096                 # tensors start at page boundaries in the data file (memory-mappable)


def hidden_name(i: int) -> str:
    return f"hidden.{i}"            # the residual stream between pieces: (batch, sequence, D)


class _EmbedPiece(torch.nn.Module):
    def __init__(self, shell):
        super().__init__()
        self.shell = shell

    def forward(self, input_ids, position_ids):
        return self.shell.embed(input_ids, position_ids)                    # (B, T, D)


class _LayerPiece(torch.nn.Module):
    """Block i alone; the shell (masks, RoPE) is not a submodule, so none of its tensors become this piece's."""

    def __init__(self, shell, block, i: int):
        super().__init__()
        self.block, self.i = block, i
        object.__setattr__(self, "shell", shell)

    def forward(self, hidden, attention_mask, position_ids, *past):
        """past: the layer's cache tensors (key, value, float windows) -> hidden, the presents in that order."""
        step = self.shell.step(attention_mask, position_ids, hidden.shape[1], hidden.dtype)
        hidden, presents = self.shell.run_block(self.block, self.i, hidden, step, past)
        return (hidden, *presents)


class _HeadPiece(torch.nn.Module):
    """The decoder's head (final norm, LM head) with only its own weights: the (V, D) output embedding taken as
    it is, transposed by a view (no copy of the largest matrix; whole-model shells hold both tables)."""

    def __init__(self, norm, output_embedding):
        super().__init__()
        self.norm = norm
        self.weight_t = torch.nn.Parameter(output_embedding.T, requires_grad=False)    # (D, V)

    def forward(self, hidden, logits_to_keep):
        return lm_head(hidden, logits_to_keep, self.norm, lambda h: h @ self.weight_t)   # (B, n, V)


def trace(module, args, inputs: list[str], outputs: list[str], axes: dict) -> onnx.ModelProto:
    """One piece through the tracer the whole-model export uses (onnx_file.py). Through a file, not a buffer:
    a buffer's bytes would be a second and third copy of the piece's weights."""
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        path = os.path.join(tmp, "piece.onnx")
        torch.onnx.export(module, args, path, dynamo=False, opset_version=OPSET, input_names=inputs,
                          output_names=outputs, dynamic_axes=axes, do_constant_folding=True)
        return onnx.load(path)


class ExternalData:
    """Appends tensors to one file beside model.onnx and points them at it; equal tensors are stored once."""

    def __init__(self, path: str):
        self.location = os.path.basename(path)
        self.file = open(path, "wb")
        self.names: dict[tuple, str] = {}          # (type, dims, sha256) -> the name it is stored under

    def add(self, tensor: onnx.TensorProto) -> tuple[str, bool]:
        """(the name to use for this tensor, whether it is new: else an equal one is stored already)."""
        data = tensor.raw_data or numpy_helper.to_array(tensor).tobytes()
        key = (tensor.data_type, tuple(tensor.dims), hashlib.sha256(data).hexdigest())
        if key in self.names:
            return self.names[key], False
        self.names[key] = tensor.name
        if len(data) >= INLINE_BYTES:
            self.file.seek(-self.file.tell() % ALIGN, os.SEEK_CUR)
            offset = self.file.tell()
            self.file.write(data)
            name = tensor.name
            tensor.Clear()
            tensor.name, tensor.data_type, tensor.data_location = name, key[0], onnx.TensorProto.EXTERNAL
            tensor.dims.extend(key[1])
            for k, v in (("location", self.location), ("offset", str(offset)), ("length", str(len(data)))):
                tensor.external_data.add(key=k, value=v)
        return tensor.name, True

    def close(self) -> None:
        self.file.close()


def add_piece(graph: onnx.GraphProto, piece: onnx.ModelProto, prefix: str, data: ExternalData) -> None:
    """Append a piece's nodes and initializers to graph: its inner names prefixed, its edges (graph inputs and
    outputs) as they are, equal initializers shared."""
    edges = {v.name for v in list(piece.graph.input) + list(piece.graph.output)}
    rename = {}
    used = {name for node in piece.graph.node for name in node.input}
    for t in piece.graph.initializer:
        if t.name not in used:                    # what the tracer keeps of modules the piece never calls
            continue
        old = t.name
        t.name = prefix + old
        name, new = data.add(t)
        rename[old] = name
        if new:
            graph.initializer.append(t)
    for node in piece.graph.node:
        node.name = prefix + node.name
        for names in (node.input, node.output):
            for j, n in enumerate(names):
                if n and n not in edges:
                    names[j] = rename.get(n, prefix + n)
        graph.node.append(node)


def _axes(names: list[str]) -> dict:
    axes = {}
    for n in names:
        if n in (C.INPUT_IDS, C.POSITION_IDS, C.LOGITS) or n.startswith("hidden."):
            axes[n] = {0: "batch", 1: "sequence"}
        elif n == C.ATTENTION_MASK:
            axes[n] = {0: "batch", 1: "total_sequence"}
        elif n.startswith("past_key_values."):
            axes[n] = {0: "batch", 2: "past_sequence"}
        elif n.startswith("present."):
            axes[n] = {0: "batch", 2: "total_sequence"}
    return axes


def write_onnx_by_pieces(stream, layout: C.CacheLayout, path: str, props: dict[str, str], proj=None,
                         batch: int = 2, new: int = 3, past: int = 2) -> None:
    """Trace the embedding, each layer and the head of the checkpoint `stream` (model/stream.LayerStream) one at a
    time and write model.onnx with its weights in model.onnx.data; then check it like the whole-model export.
    proj: projectors to fold into each block as it is built (None: K=full)."""
    hf, cfg = stream.hf, stream.cfg
    inputs, outputs, _ = _io_names(layout)
    names = list(layout.names())                           # (layer, kind, past name, present name)
    graph = helper.make_graph([], "decoder", [], [])
    data = ExternalData(path + ".data")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (batch, new), generator=g)
    mask = torch.ones(batch, past + new, dtype=torch.int64)
    pos = torch.arange(past, past + new)[None].expand(batch, new).contiguous()
    hidden = torch.randn(batch, new, cfg.hidden_size, generator=g)
    declared: dict[str, onnx.ValueInfoProto] = {}             # the pieces' edges, for the graph's inputs/outputs
    ir_version = None

    def add(piece: onnx.ModelProto, prefix: str) -> None:
        nonlocal ir_version
        for v in list(piece.graph.input) + list(piece.graph.output):    # copies: a reference would keep the
            declared[v.name] = onnx.ValueInfoProto.FromString(v.SerializeToString())    # whole piece alive
        add_piece(graph, piece, prefix, data)
        ir_version = ir_version or piece.ir_version

    try:
        with stream.loaded(*stream.input_names()):
            shell = decoder_shell(hf, cfg, [], head=False).eval()
            add(trace(_EmbedPiece(shell), (ids, pos), [C.INPUT_IDS, C.POSITION_IDS], [hidden_name(0)],
                      _axes([C.INPUT_IDS, C.POSITION_IDS, hidden_name(0)])), "embed/")
        shell.embeddings = shell.pos_embed = None           # the layers' pieces need its masks and RoPE only
        for i in tqdm(range(cfg.num_layers), desc="exporting, layer by layer", unit="layer"):
            with stream.loaded(stream.layer_prefix(i)):
                block = build_block(hf, cfg, i, proj).eval()
            shell.blocks = torch.nn.ModuleList([block])    # the step this layer needs (positions, sink slots)
            layer = [n for n in names if n[0] == i]        # key, value, float windows
            cache = [example_cache(layout, layout.shape(i, kind), g, batch, past) for _, kind, _, _ in layer]
            piece_in = [hidden_name(i), C.ATTENTION_MASK, C.POSITION_IDS] + [n[2] for n in layer]
            piece_out = [hidden_name(i + 1)] + [n[3] for n in layer]
            add(trace(_LayerPiece(shell, block, i), (hidden, mask, pos, *cache), piece_in, piece_out,
                      _axes(piece_in + piece_out)), f"layer{i}/")
            del block
        del shell
        with stream.loaded(*stream.head_names()):
            head = _HeadPiece(final_norm(hf, cfg), stream.output_embedding().detach()).eval()
            last = hidden_name(cfg.num_layers)
            add(trace(head, (hidden, torch.tensor(1)), [last, C.LOGITS_TO_KEEP], [C.LOGITS],
                      _axes([last, C.LOGITS])), "head/")
        del head
    finally:
        data.close()
    graph.input.extend(declared[n] for n in inputs)
    graph.output.extend(declared[n] for n in outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="pytorch", producer_version=torch.__version__)
    model.ir_version = ir_version
    strip_doc_strings(model)
    make_input_optional(model, C.LOGITS_TO_KEEP, np.array(0, dtype=np.int64))
    clamp_ir_version(model)
    set_metadata_props(model, props)
    onnx.save_model(model, path)
    check_model(path)
    check_contract(onnx.load(path, load_external_data=False), layout)
