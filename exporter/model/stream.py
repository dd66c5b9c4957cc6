"""A checkpoint opened without its weights: the HF model's skeleton on the meta device, each tensor read from the
memory-mapped safetensors files only while the part that holds it runs.

    stream = LayerStream(model_dir)              # config and the skeleton: no weight is read
    with stream.loaded(stream.layer_prefix(i)):  # layer i's tensors, then back to meta
        block = build_block(stream.hf, stream.cfg, i)

So a pass over the model layer by layer (calib/capture.capture_streamed) holds one layer's weights, not the model's: the path to
models bigger than this machine (issue #19). safetensors only (a local HF directory); the same fold code builds
the blocks, so a streamed block is the whole-model block.

Entry point: `LayerStream(path)`.
"""
from __future__ import annotations

import json
import math
import os
from contextlib import contextmanager

import torch

from graphs.memory import return_freed_memory

from ..errors import UserError
from .config import from_hf
from .load import check_supported
from .weights import hf_layers


class LayerStream:
    def __init__(self, path: str):
        from transformers import AutoConfig, AutoModelForCausalLM
        self.files = _tensor_files(path)                   # tensor name -> safetensors file
        config = AutoConfig.from_pretrained(path)
        check_supported(config)
        with torch.device("meta"):
            self.hf = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        self.hf.eval()
        rot = getattr(getattr(self.hf, "model", None), "rotary_emb", None)
        if rot is not None:                                # RoPE buffers are computed, not stored: on the CPU
            self.hf.model.rotary_emb = type(rot)(config=config)
        self.cfg = from_hf(config)
        self._names = {id(m): n for n, m in self.hf.named_modules()}

    def layer_prefix(self, i: int) -> str:
        """The tensor-name prefix of decoder layer i ('model.layers.3.')."""
        return self._names[id(hf_layers(self.hf)[i])] + "."

    def input_names(self) -> tuple[str, ...]:
        """The tensors of the decoder's input (token embeddings; GPT-2's positions too): `loaded` takes them as
        prefixes."""
        names = {id(p): n for n, p in self.hf.named_parameters()}
        modules = [self.hf.get_input_embeddings()] + ([self.hf.transformer.wpe] if self.cfg.family == "gpt2" else [])
        return tuple(names[id(m.weight)] for m in modules)

    def head_names(self) -> tuple[str, ...]:
        """The tensors of the head: the final norm's and the output embeddings (the input ones when tied)."""
        from .fold import hf_final_norm
        names = {id(p): n for n, p in self.hf.named_parameters()}
        return tuple(names[id(p)] for p in [*hf_final_norm(self.hf, self.cfg).parameters(), self.output_embedding()])

    def output_embedding(self) -> torch.Tensor:
        """The LM head's (V, D) matrix; a tied head's is the input embeddings' (loading replaces that tensor, so
        the head module's own reference would not see it)."""
        tied = self.cfg.tie_embeddings
        return (self.hf.get_input_embeddings() if tied else self.hf.get_output_embeddings()).weight

    def attention_weights(self, i: int) -> dict:
        """model/weights.attention_weights of layer i (float64 copies, so they outlive the layer's load)."""
        from .weights import attention_weights
        with self.loaded(self.layer_prefix(i)):
            return attention_weights(self.hf, self.cfg, i)

    def outside_layers(self) -> tuple[str, ...]:
        """The tensors that belong to no decoder layer: embeddings, final norm, LM head."""
        layers = self.layer_prefix(0)[:-len("0.")]                     # 'model.layers.'
        return tuple(n for n in self.files if not n.startswith(layers))

    @contextmanager
    def loaded(self, *prefixes: str):
        """Within the block, the skeleton's tensors named by these prefixes hold their values (read from the
        files); after it they are meta again, so their memory is given back."""
        from safetensors import safe_open
        names = [n for n in self.files if n.startswith(prefixes)]
        by_file: dict[str, list[str]] = {}
        for n in names:
            by_file.setdefault(self.files[n], []).append(n)
        state = {}
        for file, keys in by_file.items():
            with safe_open(file, framework="pt") as f:
                state.update({k: f.get_tensor(k).float() for k in keys})
        self.hf.load_state_dict(state, strict=False, assign=True)
        missing = [n for n, p in self.hf.named_parameters() if n.startswith(prefixes) and p.is_meta]
        if missing:
            raise UserError(f"the checkpoint holds no tensor {missing[0]} (its names differ from the model's): "
                            "load it with the whole-model path")
        try:
            yield self.hf
        finally:
            for n in names:
                module_name, _, attr = n.rpartition(".")
                module = self.hf.get_submodule(module_name)
                old = getattr(module, attr)
                setattr(module, attr, torch.nn.Parameter(torch.empty_like(old, device="meta"), requires_grad=False)
                        if isinstance(old, torch.nn.Parameter) else torch.empty_like(old, device="meta"))
            return_freed_memory()     # the last layer's passes left freed blocks in the heap: back to the system


def checkpoint_bytes(path: str) -> int:
    """The float32 bytes of a local safetensors checkpoint's tensors, from the files' headers (no tensor is read);
    0 for a directory without safetensors."""
    try:
        files = set(_tensor_files(path).values())
    except UserError:
        return 0
    total = 0
    for file in files:
        with open(file, "rb") as f:
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        total += sum(4 * math.prod(t["shape"]) for k, t in header.items() if k != "__metadata__")
    return total


def _tensor_files(path: str) -> dict[str, str]:
    """tensor name -> the safetensors file holding it (one file, or the shards of model.safetensors.index.json)."""
    if not os.path.isdir(path):
        raise UserError(f"layer streaming reads a local HF directory with safetensors files; {path} is not one")
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            return {k: os.path.join(path, v) for k, v in json.load(f)["weight_map"].items()}
    single = os.path.join(path, "model.safetensors")
    if not os.path.isfile(single):
        raise UserError(f"{path} has no model.safetensors (or its index): layer streaming reads safetensors only")
    from safetensors import safe_open
    with safe_open(single, framework="pt") as f:
        return {k: single for k in f.keys()}
