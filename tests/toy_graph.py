"""A tiny export that obeys graphs.contract exactly, and the same math in numpy without a cache.

The toy decoder is two attention layers over token + position embeddings:

    layer 0: one compressed-style head, key [b, 1, s, 9], value [b, 1, s, 6]
    layer 1: uncompressed GQA-style,    key [b, 2, s, 4], value [b, 2, s, 4]

Each layer projects the hidden state to q, k, v; the new k, v are appended to the past along the
sequence axis (the present outputs); attention is causal and masked by attention_mask; the layer's
output is added back to the hidden state. Logits are the final hidden state times an unembedding.
Any mistake in cache handling, padding, masking or position ids changes the greedy tokens.

Only the tests use this file (it imports onnx; the runtime never does).
"""
from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

from graphs import contract as C
from graphs.metadata import MODEL_FILE, TOKENIZER_FILE, ExportMetadata

SPECIAL = ["<s>", "<pad>", "</s>", "<unk>"]
WORDS = ("the a cat dog sat on mat red blue big small ran jumped over under tree house "
         "sun moon day night and then happy sad fast slow bird fish sky").split()
VOCAB = SPECIAL + WORDS
SINK_ID, PAD_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
HIDDEN = 16
MAX_POSITIONS = 128
# (kv_heads, key head_size, value head_size) per layer; queries have the key's heads and size.
LAYERS = ((1, 9, 6), (2, 4, 4))
LAYOUT = C.CacheLayout(keys=tuple(C.CacheShape(h, dk) for h, dk, _ in LAYERS),
                       values=tuple(C.CacheShape(h, dv) for h, _, dv in LAYERS))
CHAT = {"prefix": "sky day ", "suffix": " night"}
MASKED = -1e9


def toy_weights(seed: int = 0) -> dict[str, np.ndarray]:
    """Every parameter of the toy decoder, float32, drawn from a fixed seed."""
    rng = np.random.default_rng(seed)

    def w(*shape, scale=1.0):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    weights = {"embed": w(len(VOCAB), HIDDEN), "pos": w(MAX_POSITIONS, HIDDEN, scale=0.5),
               "unembed": w(HIDDEN, len(VOCAB), scale=HIDDEN ** -0.5),
               "bias": np.zeros(len(VOCAB), np.float32)}
    weights["bias"][[SINK_ID, PAD_ID, UNK_ID]] = -10.0  # a trained model rarely emits these
    for i, (heads, dk, dv) in enumerate(LAYERS):
        weights[f"wq{i}"] = w(HIDDEN, heads * dk, scale=HIDDEN ** -0.5)
        weights[f"wk{i}"] = w(HIDDEN, heads * dk, scale=HIDDEN ** -0.5)
        weights[f"wv{i}"] = w(HIDDEN, heads * dv, scale=HIDDEN ** -0.5)
        weights[f"wo{i}"] = w(heads * dv, HIDDEN, scale=(heads * dv) ** -0.5)
    return weights


# ----------------------------------------------------------------------------------------------
# numpy reference: the whole sequence at once, no cache


def _heads(x: np.ndarray, heads: int) -> np.ndarray:
    """(T, heads*d) -> (heads, T, d)."""
    return x.reshape(x.shape[0], heads, -1).transpose(1, 0, 2)


def reference_logits(weights: dict, ids: list[int]) -> np.ndarray:
    """Logits (T, V) of one unpadded sequence at positions 0..T-1, computed without a cache."""
    t = len(ids)
    h = weights["embed"][ids] + weights["pos"][:t]                      # (T, D)
    causal = np.tril(np.ones((t, t), dtype=bool))                        # (T, T)
    for i, (heads, dk, _) in enumerate(LAYERS):
        q = _heads(h @ weights[f"wq{i}"], heads)                         # (H, T, dk)
        k = _heads(h @ weights[f"wk{i}"], heads)                         # (H, T, dk)
        v = _heads(h @ weights[f"wv{i}"], heads)                         # (H, T, dv)
        scores = np.where(causal, q @ k.transpose(0, 2, 1) / np.sqrt(dk), MASKED)  # (H, T, T)
        p = np.exp(scores - scores.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        out = (p @ v).transpose(1, 0, 2).reshape(t, -1)                  # (T, H*dv)
        h = h + out @ weights[f"wo{i}"]                                  # (T, D)
    return h @ weights["unembed"] + weights["bias"]                      # (T, V)


def reference_greedy(weights: dict, ids: list[int], new_tokens: int) -> list[int]:
    """Greedy continuation of `ids` (which already start with the sink), recomputing everything each step."""
    ids = list(ids)
    out = []
    for _ in range(new_tokens):
        token = int(np.argmax(reference_logits(weights, ids)[-1]))
        out.append(token)
        ids.append(token)
    return out


# ----------------------------------------------------------------------------------------------
# the ONNX graph


class _GraphBuilder:
    """Collects nodes and initializers; `op` returns the name of the node's single output."""

    def __init__(self):
        self.nodes, self.initializers, self._count = [], [], 0

    def const(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, op_type: str, *inputs: str, **attrs) -> str:
        self._count += 1
        out = f"{op_type.lower()}_{self._count}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out


def _attention_mask(g: _GraphBuilder) -> str:
    """Boolean (B, 1, T, S): key j is visible to new token t iff attention_mask[b, j] and j <= past + t."""
    total = g.op("Squeeze", g.op("Shape", C.ATTENTION_MASK, start=1, end=2), "axis0")      # S
    new = g.op("Squeeze", g.op("Shape", C.INPUT_IDS, start=1, end=2), "axis0")            # T
    past = g.op("Sub", total, new)
    cols = g.op("Unsqueeze", g.op("Range", "zero", total, "one"), "axis0")               # (1, S)
    rows = g.op("Unsqueeze", g.op("Range", past, total, "one"), "axis1")                 # (T, 1)
    causal = g.op("LessOrEqual", cols, rows)                                             # (T, S)
    valid = g.op("Unsqueeze", g.op("Cast", C.ATTENTION_MASK, to=TensorProto.BOOL), "axes12")  # (B, 1, 1, S)
    return g.op("And", causal, valid)


def _layer(g: _GraphBuilder, i: int, h: str, allowed: str, cache_type: int) -> str:
    """One attention layer: reads past_key_values.i.*, writes present.i.*, returns the new hidden state."""
    heads, dk, _ = LAYERS[i]

    def split(x):  # (B, T, H*d) -> (B, H, T, d)
        return g.op("Transpose", g.op("Reshape", x, f"split{i}"), perm=[0, 2, 1, 3])

    q = split(g.op("MatMul", h, f"wq{i}"))
    presents = []
    for kind in ("key", "value"):
        new = split(g.op("MatMul", h, f"w{kind[0]}{i}"))
        if cache_type != TensorProto.FLOAT:
            new = g.op("Cast", new, to=cache_type)
        g.nodes.append(helper.make_node("Concat", [C.past_name(i, kind), new], [C.present_name(i, kind)], axis=2))
        present = C.present_name(i, kind)
        presents.append(present if cache_type == TensorProto.FLOAT else g.op("Cast", present, to=TensorProto.FLOAT))
    k, v = presents
    scores = g.op("Mul", g.op("MatMul", q, g.op("Transpose", k, perm=[0, 1, 3, 2])),
                  g.const(f"scale{i}", np.float32(1 / np.sqrt(dk))))                  # (B, H, T, S)
    scores = g.op("Where", allowed, scores, "masked")
    out = g.op("MatMul", g.op("Softmax", scores, axis=-1), v)                          # (B, H, T, dv)
    out = g.op("Reshape", g.op("Transpose", out, perm=[0, 2, 1, 3]), "merge")          # (B, T, H*dv)
    return g.op("Add", h, g.op("MatMul", out, f"wo{i}"))


def toy_model(weights: dict, dtype: str = "float32") -> onnx.ModelProto:
    """The ONNX decoder of the contract; the cache tensors are `dtype`, the arithmetic float32."""
    cache_type = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16}[dtype]
    g = _GraphBuilder()
    for name, array in weights.items():
        g.const(name, array)
    g.const("zero", np.int64(0))
    g.const("one", np.int64(1))
    g.const("axis0", np.array([0], np.int64))
    g.const("axis1", np.array([1], np.int64))
    g.const("axes12", np.array([1, 2], np.int64))
    g.const("masked", np.float32(MASKED))
    g.const("merge", np.array([0, 0, -1], np.int64))
    for i, (heads, _, _) in enumerate(LAYERS):
        g.const(f"split{i}", np.array([0, 0, heads, -1], np.int64))

    h = g.op("Add", g.op("Gather", "embed", C.INPUT_IDS), g.op("Gather", "pos", C.POSITION_IDS))  # (B, T, D)
    allowed = _attention_mask(g)
    for i in range(len(LAYERS)):
        h = _layer(g, i, h, allowed, cache_type)
    g.nodes.append(helper.make_node("Add", [g.op("MatMul", h, "unembed"), "bias"], [C.LOGITS]))

    inputs = [helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", shape])
              for name, shape in ((C.INPUT_IDS, "seq"), (C.ATTENTION_MASK, "total"), (C.POSITION_IDS, "seq"))]
    outputs = [helper.make_tensor_value_info(C.LOGITS, TensorProto.FLOAT, ["batch", "seq", len(VOCAB)])]
    for layer, kind, past, present in LAYOUT.names():
        s = LAYOUT.shape(layer, kind)
        inputs.append(helper.make_tensor_value_info(past, cache_type, ["batch", s.kv_heads, "past", s.head_size]))
        outputs.append(helper.make_tensor_value_info(present, cache_type,
                                                     ["batch", s.kv_heads, "total", s.head_size]))
    graph = helper.make_graph(g.nodes, "toy_decoder", inputs, outputs, g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def toy_tokenizer() -> Tokenizer:
    """A whitespace WordLevel tokenizer over VOCAB; the sink, pad, eos and unk tokens are special."""
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens([AddedToken(t, special=True) for t in SPECIAL])
    return tok


def toy_metadata(dtype: str = "float32", chat: bool = True) -> ExportMetadata:
    layout = C.CacheLayout(LAYOUT.keys, LAYOUT.values, dtype)
    return ExportMetadata(
        model={"source": "toy", "architecture": "ToyDecoder", "hidden": HIDDEN, "vocab": len(VOCAB)},
        layout=layout, key_mode="latent",
        ranks={"key": [9, None], "value": [6, None]},
        sink={"token_id": SINK_ID, "token": "<s>", "handling": "prepended by the runtime"},
        eos_token_ids=[EOS_ID], pad_token_id=PAD_ID, opset=17,
        chat=dict(CHAT) if chat else None, exporter="tests/toy_graph.py")


def write_toy_export(directory: str, dtype: str = "float32", chat: bool = True, seed: int = 0) -> dict:
    """Write model.onnx, export.json and tokenizer.json into `directory`; returns the weights used."""
    os.makedirs(directory, exist_ok=True)
    weights = toy_weights(seed)
    onnx.save(toy_model(weights, dtype), os.path.join(directory, MODEL_FILE))
    toy_metadata(dtype, chat).save(directory)
    toy_tokenizer().save(os.path.join(directory, TOKENIZER_FILE))
    return weights


def token_ids(text: str) -> list[int]:
    """The toy tokenizer's ids of `text` (no special tokens added)."""
    return [VOCAB.index(w) for w in text.split()]
