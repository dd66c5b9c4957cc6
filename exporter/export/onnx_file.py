"""model.onnx from the compact decoder: trace, clean, check.

Exporter: the TorchScript tracer (torch.onnx.export(dynamo=False)); docs/design.md says why. Our decoder has no
data-dependent control flow, so tracing captures it exactly, quickly, and with reproducible bytes. Passes
(graphs/passes.py) then strip doc strings, make logits_to_keep optional, convert to float16 when asked, clamp
the IR version and set sorted metadata; the result is checked by onnx and against the cache contract.

Entry points: `layout_of(decoder, dtype)` (the cache layout export.json records), `write_onnx(...)`.
"""
from __future__ import annotations

import os
import warnings

import numpy
import onnx
import torch
from tqdm.auto import tqdm

from graphs import contract as C
from graphs.kernels import CODES_ATTENTION, use_codes_attention
from graphs.checks import check_contract, check_model
from graphs.passes import (clamp_ir_version, make_input_optional, place_group_query_scales, set_metadata_props,
                           strip_doc_strings, to_float16)

OPSET = 17
TWO_GB = 2 * 1024 ** 3


def layout_of(decoder, dtype: str = "float32") -> C.CacheLayout:
    """The cache layout the decoder produces: the metadata's single description of the cache."""
    def shape(rank, quant, a):
        window = a.window if a.window_bounded else None                # a window whose cache it bounds
        if quant is not None:
            return C.CacheShape(1, quant.nbytes, "uint8", window)      # packed codes (codec/quantizer.py)
        if a.cache_scales is not None:
            return C.CacheShape(a.G, a.d, "int8", window)              # the fused op's codes (codec/cache_quant.py)
        return C.CacheShape(1, rank, None, window) if rank else C.CacheShape(a.G, a.d, None, window)
    def float_window(rank, kind, a):                                   # exact latents beside the codes
        return C.CacheShape(1, rank, C.WINDOW_DTYPE, a.float_window) if C.WINDOW_KINDS[kind] in a.cache_kinds() \
            else None
    attns = [b.attn for b in decoder.blocks]
    keys = tuple(shape(a.key_rank, a.key_quant, a) for a in attns)
    values = tuple(shape(a.value_rank, a.value_quant, a) for a in attns)
    key_windows = tuple(float_window(a.key_rank, "key", a) for a in attns)
    value_windows = tuple(float_window(a.value_rank, "value", a) for a in attns)
    if not any(key_windows + value_windows):
        key_windows = value_windows = ()
    return C.CacheLayout(keys, values, dtype, key_windows, value_windows)


def _example_inputs(decoder, layout: C.CacheLayout, batch=2, new=3, past=2):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, decoder.cfg.vocab_size, (batch, new), generator=g)
    mask = torch.ones(batch, past + new, dtype=torch.int64)
    pos = torch.arange(past, past + new)[None].expand(batch, new).contiguous()
    caches = [example_cache(layout, layout.shape(i, kind), g, batch, past) for i, kind, _, _ in layout.names()]
    return (ids, mask, pos, *caches, torch.tensor(1))   # the last one is logits_to_keep


def example_cache(layout: C.CacheLayout, s: C.CacheShape, g: torch.Generator, batch: int, past: int):
    """A random past of one cache tensor, in its dtype: packed codes, int8 codes or floats (a float16 window)."""
    size = (batch, s.kv_heads, past, s.head_size)
    if layout.dtype_of(s) == "uint8":
        return torch.randint(0, 256, size, generator=g, dtype=torch.uint8)
    if layout.dtype_of(s) == "int8":
        return torch.randint(-128, 128, size, generator=g, dtype=torch.int8)
    if s.dtype == C.WINDOW_DTYPE:
        return torch.randn(*size, generator=g).to(torch.float16)
    return torch.randn(*size, generator=g)


class _Traced(torch.nn.Module):
    """The decoder with logits_to_keep as its last positional input: the tracer cannot pass a keyword
    after the decoder's *past, and the graph inputs follow the positional order of the contract."""

    def __init__(self, decoder):
        super().__init__()
        self.decoder = decoder

    def forward(self, input_ids, attention_mask, position_ids, *past_and_keep):
        *past, logits_to_keep = past_and_keep
        return self.decoder(input_ids, attention_mask, position_ids, *past, logits_to_keep=logits_to_keep)


def _io_names(layout: C.CacheLayout):
    inputs = [C.INPUT_IDS, C.ATTENTION_MASK, C.POSITION_IDS] + [p for _, _, p, _ in layout.names()] + \
        [C.LOGITS_TO_KEEP]
    outputs = [C.LOGITS] + [q for _, _, _, q in layout.names()]
    axes = {C.INPUT_IDS: {0: "batch", 1: "sequence"}, C.ATTENTION_MASK: {0: "batch", 1: "total_sequence"},
            C.POSITION_IDS: {0: "batch", 1: "sequence"}, C.LOGITS: {0: "batch", 1: "sequence"}}  # n when logits_to_keep > 0
    for _, _, p, q in layout.names():
        axes[p] = {0: "batch", 2: "past_sequence"}
        axes[q] = {0: "batch", 2: "total_sequence"}
    return inputs, outputs, axes


def write_onnx(decoder, layout: C.CacheLayout, path: str, props: dict[str, str], kernels: list = ()) -> None:
    """Trace, clean and save model.onnx (external data beside it when over 2 GB), then check it.
    A float16 layout converts the traced float32 graph (graphs/passes.to_float16; logits stay float32);
    kernels naming CodesAttention swaps the int8 GroupQueryAttention nodes for ours (graphs/kernels)."""
    steps = tqdm(total=4, desc="exporting", unit="step")
    inputs, outputs, axes = _io_names(layout)
    with torch.no_grad(), warnings.catch_warnings():
        # chosen knowingly (see docs/design.md); the tracer's notes on constants are expected for this graph
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(_Traced(decoder), _example_inputs(decoder, layout), path, dynamo=False, opset_version=OPSET,
                          input_names=inputs, output_names=outputs, dynamic_axes=axes, do_constant_folding=True,
                          custom_opsets={"com.microsoft": 1} if getattr(decoder, "fused", False) else None)
    steps.update()
    model = onnx.load(path)
    strip_doc_strings(model)
    place_group_query_scales(model)
    if CODES_ATTENTION in kernels:
        use_codes_attention(model)
    make_input_optional(model, C.LOGITS_TO_KEEP, numpy.array(0, dtype=numpy.int64))
    if layout.dtype == "float16":
        model = to_float16(model, keep_float32_io=(C.LOGITS,))
    clamp_ir_version(model)
    set_metadata_props(model, props)
    steps.update()
    big = model.ByteSize() > TWO_GB
    for f in os.listdir(os.path.dirname(path)):      # the tracer may have written external tensors already
        if f != os.path.basename(path) and not f.endswith(".json"):
            os.remove(os.path.join(os.path.dirname(path), f))
    onnx.save_model(model, path, save_as_external_data=big, all_tensors_to_one_file=True,
                    location=os.path.basename(path) + ".data")
    steps.update()
    check_model(path)
    check_contract(onnx.load(path, load_external_data=False), layout)
    steps.update()
    steps.close()
